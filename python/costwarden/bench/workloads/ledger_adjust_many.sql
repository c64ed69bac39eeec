-- Ledger bench: an audited adjustment on a random org of :orgs.
\set org random(1, :orgs)
select * from costwarden.fn_ledger_adjust(p_org_id => 'org-' || :org, p_workspace_id => 'ws', p_amount_micros => 1, p_reason => 'bench');
