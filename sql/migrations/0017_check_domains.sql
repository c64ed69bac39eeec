-- 0017: the single-column CHECK constraints of the saga's hot tables become
-- domains (docs/internals.md, "Domains of the hot tables"; docs/performance.md).
--
-- PostgreSQL 15 rebuilds a table's CHECK expressions for every INSERT and
-- UPDATE statement (ExecRelCheck: the stored expressions are read back from
-- their text form and planned once per executor), and every statement of the
-- saga runs in an executor of its own. A domain's constraints are read once
-- per backend and kept in the type cache. Every rule stays; only where it
-- lives changes:
--
--   domain                         base    rule                                  columns
--   costwarden.nonneg_bigint       bigint  value >= 0                            _reservations.amount_micros, tokens,
--                                                                                charged_micros, metered_micros;
--                                                                                _pools.held_micros, held_tokens;
--                                                                                _ledger_heads.last_seq
--   costwarden.reservation_status  text    held | denied | committed |           _reservations.status
--                                          released | expired
--   costwarden.pool_kind           text    org | workspace | key | user          _pools.kind
--   costwarden.ledger_entry_type   text    charge | spend_report | adjustment    _ledger.entry_type
--   costwarden.ledger_seq          bigint  value >= 1                            _ledger.seq
--   costwarden.sha256_digest       bytea   octet_length(value) = 32              _ledger.prev_hash, entry_hash;
--                                                                                _ledger_heads.last_hash
--
-- ledger_amount_sign (entry_type = 'adjustment' or amount_micros >= 0) spans
-- two columns, which no domain can hold: costwarden._ledger_append, the only
-- writer of _ledger, refuses a negative amount on any other entry type (CW004)
-- and fn_ledger_verify reports a stored entry that breaks it.
--
-- Changing a column's type to a domain with a constraint rewrites the table
-- (and rebuilds its indexes) under an ACCESS EXCLUSIVE lock: one rewrite per
-- table here, each ALTER TABLE changing all its columns at once.
--
-- Functions that return these columns cast them to the base type: a
-- PL/pgSQL RETURN QUERY wants the exact declared type of each result column.

create domain costwarden.nonneg_bigint as bigint
constraint nonneg_bigint_check check (value >= 0);
comment on domain costwarden.nonneg_bigint is
'A count or amount that is never negative (holds, charges, token counts, a chain head''s seq).';

create domain costwarden.reservation_status as text
constraint reservation_status_check check (value in ('held', 'denied', 'committed', 'released', 'expired'));
comment on domain costwarden.reservation_status is
'held: live hold; denied: refused, nothing held; committed: charged; released: freed (metered usage, if any, '
'was charged); expired: swept after expires_at (metered usage charged as approximate, or released).';

create domain costwarden.pool_kind as text
constraint pool_kind_check check (value in ('org', 'workspace', 'key', 'user'));
comment on domain costwarden.pool_kind is
'The scope a spend pool counts: the org (scope_id ''''), a workspace, a key or a user.';

create domain costwarden.ledger_entry_type as text
constraint ledger_entry_type_check check (value in ('charge', 'spend_report', 'adjustment'));
comment on domain costwarden.ledger_entry_type is
'What a ledger entry books: a charge (commit, expiry), a spend report, or a signed adjustment.';

create domain costwarden.ledger_seq as bigint
constraint ledger_seq_check check (value >= 1);
comment on domain costwarden.ledger_seq is
'The place of an entry in its org''s chain: 1, 2, 3, ... without gaps.';

create domain costwarden.sha256_digest as bytea
constraint sha256_digest_check check (octet_length(value) = 32);
comment on domain costwarden.sha256_digest is
'A sha256 digest: exactly 32 bytes.';

alter table costwarden._reservations
    drop constraint reservations_status_check,
    drop constraint reservations_amounts_nonnegative,
    alter column status type costwarden.reservation_status,
    alter column amount_micros type costwarden.nonneg_bigint,
    alter column tokens type costwarden.nonneg_bigint,
    alter column charged_micros type costwarden.nonneg_bigint,
    alter column metered_micros type costwarden.nonneg_bigint;

alter table costwarden._pools
    drop constraint pools_kind_check,
    drop constraint pools_held_nonnegative,
    alter column kind type costwarden.pool_kind,
    alter column held_micros type costwarden.nonneg_bigint,
    alter column held_tokens type costwarden.nonneg_bigint;

alter table costwarden._ledger
    drop constraint ledger_entry_type_check,
    drop constraint ledger_seq_positive,
    drop constraint ledger_amount_sign,
    drop constraint ledger_hash_length,
    alter column entry_type type costwarden.ledger_entry_type,
    alter column seq type costwarden.ledger_seq,
    alter column prev_hash type costwarden.sha256_digest,
    alter column entry_hash type costwarden.sha256_digest;

alter table costwarden._ledger_heads
    drop constraint ledger_heads_seq_nonnegative,
    drop constraint ledger_heads_hash_length,
    alter column last_seq type costwarden.nonneg_bigint,
    alter column last_hash type costwarden.sha256_digest;
