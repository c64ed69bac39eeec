-- plpgsql_check over every PL/pgSQL function of schema costwarden (make lint, and
-- tests/python/test_plpgsql_check.py). One row per finding: the function, the level
-- (error, warning, warning extra, performance), where and what. Trigger functions are
-- checked against a relation one of their triggers is on. Warnings that are accepted
-- are listed, with the reason, in docs/internals.md ("plpgsql_check").
select p.oid::regprocedure::text as function, c.level, c.lineno, c.sqlstate, c.message,
       c.detail, c.hint, c.statement
from pg_catalog.pg_proc as p
join pg_catalog.pg_language as l on l.oid = p.prolang and l.lanname = 'plpgsql'
cross join lateral plpgsql_check_function_tb(
    p.oid,
    relid => coalesce((select t.tgrelid from pg_catalog.pg_trigger as t
                       where t.tgfoid = p.oid order by t.tgrelid limit 1), 0),
    fatal_errors => false,
    other_warnings => true,
    performance_warnings => false,
    extra_warnings => true,
    security_warnings => true
) as c
where p.pronamespace = 'costwarden'::regnamespace
order by c.level, 1, c.lineno;
