-- One saga pair in org many, whose 256 users each have a weekly limit beside the org's
-- and the workspace's: a random user per pair (8 clients), as a busy org of many users
-- calls.
\set u random(1, 256)
select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'many', p_workspace_id => 'ws', p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}', p_user_id => 'u' || :u) \gset
select entry_seq from costwarden.fn_cost_commit(p_reservation_id => (:reservation_id)::uuid, p_usage => '{"input_tokens": 400, "output_tokens": 120}');
