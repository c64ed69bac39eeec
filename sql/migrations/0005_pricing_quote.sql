-- 0005: the usage units of SPEC §0 (pricing and the quote are in
-- sql/functions/05_pricing.sql).

-- The usage units of SPEC §0 and whether each must be an integer.
create table costwarden._usage_units (
    unit text primary key,
    integer_only boolean not null,
    is_token boolean not null,           -- counts toward the usage's token count
    description text not null
);

insert into costwarden._usage_units (unit, integer_only, is_token, description) values
('input_tokens', true, true, 'prompt tokens (not cached)'),
('cached_input_tokens', true, true, 'prompt tokens served from cache'),
('output_tokens', true, true, 'completion tokens'),
('reasoning_tokens', true, true, 'reasoning tokens billed separately'),
('images', true, false, 'generated or analysed images'),
('audio_seconds', false, false, 'audio / realtime connection seconds'),
('characters', true, false, 'TTS characters'),
('pages', true, false, 'OCR / document pages'),
('requests', true, false, 'flat per-request fee units');
