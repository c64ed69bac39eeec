-- Every client reserves against the same enforced workspace limit.
select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'hot', p_workspace_id => 'ws', p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}');
