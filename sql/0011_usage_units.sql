-- 0011: the three usage units of SPEC version 2 §0, for the provider adapters
-- (SPEC §14): cache writes, and audio tokens in and out. All three are integer
-- token units: they count toward a usage's token count and token quotas.
--
-- Units are data: costwarden._usage_price validates and prices a usage against
-- this table, and the ledger's canonical usage encoding (_canon_usage) handles
-- any unit name in its general path, so no function changes.

insert into costwarden._usage_units (unit, integer_only, is_token, description) values
('cache_write_tokens', true, true, 'prompt tokens written to a provider cache (billed at their own price)'),
('audio_input_tokens', true, true, 'audio tokens in (realtime / audio models)'),
('audio_output_tokens', true, true, 'audio tokens out');
