-- Baseline for the hot budget: a one-row UPDATE every client runs.
update bench_hot set n = n + 1 where id = 1;
