-- The minimal design's pair (../minimal_design.sql): reserve then commit, two
-- transactions, on a random org of :orgs; the same amounts as saga_pair.sql's.
\set org random(1, :orgs)
select bench_minimal.reserve(:org, 4200) as reservation_id \gset
select bench_minimal.commit((:reservation_id)::uuid, 3000);
