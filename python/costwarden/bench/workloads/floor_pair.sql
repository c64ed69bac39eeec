-- The floor of any reserve + commit design: two durable one-row UPDATEs in two
-- transactions (a hold, then its release with the spend) on a random row of :orgs.
-- No pricing, limits, ledger or idempotency: what two commits alone cost here.
\set org random(1, :orgs)
update bench_floor set held = held + 1 where id = :org;
update bench_floor set held = held - 1, spent = spent + 1 where id = :org;
