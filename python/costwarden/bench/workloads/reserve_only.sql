-- One reservation on a random org of :orgs (latency workload).
\set org random(1, :orgs)
select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'org' || :org, p_workspace_id => 'ws', p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}');
