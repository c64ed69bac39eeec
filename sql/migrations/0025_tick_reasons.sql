-- 0025: the would-be refusals of a reservation's meter ticks, apart from its own.
--
-- A reserve's reasons are part of its answer, and a repeat of its idempotency key
-- returns that answer unchanged (SPEC §3). A meter tick whose extension a shadow limit
-- (or billing_enforce = false) would have refused keeps that failure for the shadow
-- report; kept in `reasons`, it changed what a repeat of the reserve returned. The
-- ticks' reasons now have their own column: null until a tick records one, read with
-- the reserve's by the shadow report and the reservation listings.
alter table costwarden._reservations add column tick_reasons jsonb;

comment on column costwarden._reservations.tick_reasons is
'Would-be refusals of the meter ticks'' extensions (enforced: false), for the shadow report; '
'null until a tick records one. The reserve''s own answer is in reasons.';
