-- 0022: reservations and ledger entries name their org without a foreign key.
-- Each insert into either table ran the key's check: a query of `_orgs` and a
-- FOR KEY SHARE lock on the org's row (a WAL record, and a MultiXact when
-- many calls of one org insert at once): ~25-30 us of server CPU per reserve
-- and per commit (docs/performance.md, row 37). The reference still holds, by
-- construction: the one writer of `_reservations` (fn_cost_reserve) has read
-- the call's workspace, whose own key names the org; the one writer of
-- `_ledger` (_ledger_append) holds the org's chain head, whose own key names
-- it; and an org is never deleted (the `_orgs_no_delete` trigger,
-- sql/functions/03_tenancy.sql, CW001) nor renamed while a workspace or a
-- chain head refers to it (their keys stay). docs/internals.md, "Keys to the
-- org".
do $$
declare
    v_fk record;
begin
    for v_fk in
        select c.conrelid::regclass as rel, c.conname
        from pg_catalog.pg_constraint as c
        where c.contype = 'f' and c.confrelid = 'costwarden._orgs'::regclass
          and c.conrelid in ('costwarden._reservations'::regclass, 'costwarden._ledger'::regclass)
    loop
        execute format('alter table %s drop constraint %I', v_fk.rel, v_fk.conname);
    end loop;
end
$$;
