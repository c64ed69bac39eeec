-- Batch saga: :batch reservations on random orgs of :orgs in one call, then their :batch commits in one call.
\set org random(1, :orgs)
select jsonb_agg(jsonb_build_object('reservation_id', r.reservation_id, 'usage', '{"input_tokens": 400, "output_tokens": 120}'::jsonb)) as commits from costwarden.fn_cost_reserve_many((select jsonb_agg(jsonb_build_object('org_id', 'org' || (1 + (:org + g * 61) % :orgs), 'workspace_id', 'ws', 'model', 'bench/model', 'usage', '{"input_tokens": 400, "output_tokens": 200}'::jsonb)) from generate_series(0, :batch - 1) as g)) as r \gset
select count(*) from costwarden.fn_cost_commit_many((:commits)::jsonb);
