-- Ledger bench: every client appends to the same org's chain (one head).
select costwarden._ledger_append(p_org_id => 'org-1', p_entry_type => 'charge', p_amount_micros => 1);
