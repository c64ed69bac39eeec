-- 0021: the unique index of idempotency keys holds keyed reservations only.
-- A reservation made without a key (the usual call) added an (org_id, null)
-- entry to it on insert and again on its commit's update (which is not HOT:
-- docs/performance.md, row 13); nothing ever looks such an entry up, and
-- nulls never conflict (row 36: ~15-20 us of a reserve and of a commit). The partial index keeps the rule for every key
-- (unique per org) and serves the repeat's look-up (`_reserve_repeat`), whose
-- `idempotency_key = $2` implies the predicate. Building it reads the table
-- once, under a lock that blocks writes to `_reservations` meanwhile
-- (docs/operations.md, upgrades).
create unique index _reservations_org_idempotency_key
on costwarden._reservations (org_id, idempotency_key)
where idempotency_key is not null;

alter table costwarden._reservations drop constraint _reservations_org_id_idempotency_key_key;
