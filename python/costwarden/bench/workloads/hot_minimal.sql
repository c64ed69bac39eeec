-- The minimal design's hot limit (../minimal_design.sql): every client reserves on the
-- same org's two accounts (org 0).
select bench_minimal.reserve(0, 4200);
