-- 0020: a reservation made without an idempotency key has no request
-- fingerprint. The fingerprint (md5 of the reserve's arguments) exists only to
-- tell a repeat of a keyed request from a different request under the same key
-- (CW007); a call without a key is never compared, so reserve no longer spends
-- the digest on it (docs/performance.md, row 27). Rows recorded before keep
-- theirs. Dropping NOT NULL changes the catalogue only: no table rewrite.
alter table costwarden._reservations alter column request_fingerprint drop not null;

comment on column costwarden._reservations.request_fingerprint is
'md5 of the reserve arguments of a call with an idempotency key (CW007 check); null without a key.';
