#!/usr/bin/env bash
# plpgsql_check over every PL/pgSQL function of a freshly migrated costwarden (make lint).
#
#   scripts/plpgsql_check.sh
#
# A dedicated embedded cluster (.costwarden/lint-pg, fast mode), a fresh database
# costwarden_lint migrated with `costwarden migrate --no-schedule`, the plpgsql_check
# extension, then scripts/plpgsql_check.sql. Prints every finding; exits 1 if there is
# any (errors and warnings alike: docs/internals.md, "plpgsql_check").
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV_BIN=.venv/bin
DATA_DIR=$PWD/.costwarden/lint-pg/pgdata
DB=costwarden_lint

embedded() {
    local command=$1
    shift
    "$VENV_BIN/python" -m costwarden.embedded "$command" --data-dir "$DATA_DIR" "$@"
}

admin_dsn=$(embedded up --fast) || exit 1
trap 'embedded down >/dev/null 2>&1 || true' EXIT
bindir=$(embedded bindir) || exit 1
db_dsn=$(embedded dsn --dbname "$DB") || exit 1
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1)

"${psql[@]}" "$admin_dsn" -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" || exit 1
"$VENV_BIN/costwarden" --dsn "$db_dsn" migrate --no-schedule >/dev/null || exit 1
"${psql[@]}" "$db_dsn" -c "CREATE EXTENSION plpgsql_check" || exit 1

findings=$("${psql[@]}" "$db_dsn" -A -t -F ' | ' -f scripts/plpgsql_check.sql) || exit 1
checked=$("${psql[@]}" "$db_dsn" -A -t -c "SELECT count(*) FROM pg_proc p JOIN pg_language l
    ON l.oid = p.prolang WHERE l.lanname = 'plpgsql' AND p.pronamespace = 'costwarden'::regnamespace")
if [[ -n $findings ]]; then
    printf 'plpgsql_check: findings in %s PL/pgSQL functions:\n%s\n' "$checked" "$findings" >&2
    exit 1
fi
echo "plpgsql_check: $checked PL/pgSQL functions, no errors, no warnings"
