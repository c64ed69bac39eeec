-- A saga pair whose call did not happen (reserve, then release), on the hot workspace of org hot:hot.
select reservation_id from costwarden.fn_cost_reserve(p_org_id => 'hot' || :hot, p_workspace_id => 'ws', p_model => 'bench/model', p_usage => '{"input_tokens": 400, "output_tokens": 200}') \gset
select released_micros from costwarden.fn_cost_release(p_reservation_id => (:reservation_id)::uuid);
