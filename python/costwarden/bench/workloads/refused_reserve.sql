-- Every client reserves against the workspace of org refuse1, whose daily limit fits no
-- call: a loop retrying a refused call.
select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'refuse1', p_workspace_id => 'ws', p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}');
