-- 0027: whose call a provider's error text came from.
--
-- Circuits are per provider and shared by every org, and so were the texts of the
-- failures reported to them (fn_provider_report's p_error): a provider's error can
-- quote a fragment of the key it was called with, and a caller confined to one org
-- (docs/operations.md#roles-and-the-actor) could read another org's through
-- fn_circuit_status, fn_circuit_history and the circuit alerts. Each text now keeps
-- the org of the caller that reported it (null: a caller with no actor), and a caller
-- confined to an org reads only its own org's texts.
alter table costwarden._circuits add column last_error_org text;
alter table costwarden._circuit_events add column error_org text;

comment on column costwarden._circuits.last_error_org is
'The actor org of the caller that reported last_error (null: no actor); only callers of that org, '
'or callers with no actor, read the text.';
comment on column costwarden._circuit_events.error_org is
'The actor org of the caller that reported error (null: no actor); as _circuits.last_error_org.';
