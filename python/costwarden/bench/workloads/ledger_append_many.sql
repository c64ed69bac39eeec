-- Ledger bench: a raw chain append on a random org of :orgs (org-1 .. org-N).
\set org random(1, :orgs)
select costwarden._ledger_append(p_org_id => 'org-' || :org, p_entry_type => 'charge', p_amount_micros => 1);
