-- Every client reserves against the same hot workspace (org hot:hot): its enforced limits.
select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'hot' || :hot, p_workspace_id => 'ws', p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}');
