-- 0026: an upper bound for the interval settings.
--
-- A positive interval was all a setting needed, so fn_setting_set accepted a
-- default_ttl of "8 days" -- after which every reserve without p_ttl failed on the
-- reservation's 7-day bound, naming an argument its caller never gave -- and a
-- circuit_cooldown of "300000 years", after which an open circuit's end was no
-- longer a timestamp and every reserve and fn_circuit_status failed (22008). Each
-- interval setting now has a largest value, checked where the value is set.
alter table costwarden._setting_defs add column max_interval interval;

update costwarden._setting_defs set max_interval = interval '7 days'
where key in ('default_ttl', 'circuit_cooldown');

comment on column costwarden._setting_defs.max_interval is
'The largest value of an interval setting (fn_setting_set refuses a larger one); null for other types.';
