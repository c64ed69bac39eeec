-- A saga pair whose commit runs over its hold (250 output tokens against 200 reserved),
-- on a random org of :orgs: a caller that reserves an estimate rather than a bound.
\set org random(1, :orgs)
select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'org' || :org, p_workspace_id => 'ws', p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}') \gset
select entry_seq from costwarden.fn_cost_commit(p_reservation_id => (:reservation_id)::uuid, p_usage => '{"input_tokens": 400, "output_tokens": 250}');
