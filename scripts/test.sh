#!/usr/bin/env bash
# Runs costwarden's two test suites and exits non-zero if either fails.
#
#   scripts/test.sh [all|sql|python]        (default: all)
#
# sql:    a dedicated embedded cluster (.costwarden/test-pg, fast mode), a fresh database
#         costwarden_pgtap migrated with `costwarden migrate --no-schedule`, pgTAP loaded,
#         then pg_prove over tests/sql/*.sql.
# python: pytest tests/python (it starts its own servers); extra arguments from $PYTEST_ARGS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

what=${1:-all}
case $what in
    all | sql | python) ;;
    *) echo "usage: $0 [all|sql|python]" >&2; exit 2 ;;
esac

VENV_BIN=.venv/bin
TEST_DATA_DIR=$PWD/.costwarden/test-pg/pgdata
TEST_DB=costwarden_pgtap

sql_status=skipped
python_status=skipped
rc=0

embedded() {
    local command=$1
    shift
    "$VENV_BIN/python" -m costwarden.embedded "$command" --data-dir "$TEST_DATA_DIR" "$@"
}

banner() { printf '\n== %s ==\n' "$*"; }

run_sql() {
    banner "pgTAP (tests/sql)"
    local files=()
    shopt -s nullglob
    files=(tests/sql/*.sql)
    shopt -u nullglob
    if ((${#files[@]} == 0)); then
        echo "no tests/sql/*.sql files: pgTAP skipped"
        return 0
    fi

    local admin_dsn db_dsn port bindir
    admin_dsn=$(embedded up --fast) || return 1
    trap 'embedded down >/dev/null 2>&1 || true' EXIT
    port=$(embedded port) || return 1
    bindir=$(embedded bindir) || return 1
    db_dsn=$(embedded dsn --dbname "$TEST_DB") || return 1

    "$bindir/psql" "$admin_dsn" -X -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $TEST_DB WITH (FORCE)" \
        -c "CREATE DATABASE $TEST_DB" || return 1
    "$VENV_BIN/costwarden" --dsn "$db_dsn" migrate --no-schedule || return 1
    "$bindir/psql" "$db_dsn" -X -q -v ON_ERROR_STOP=1 \
        -c 'SET client_min_messages = warning' \
        -c 'CREATE EXTENSION IF NOT EXISTS pgtap' || return 1

    local status=0
    pg_prove --psql-bin "$bindir/psql" --dbname "$TEST_DB" --host localhost --port "$port" \
        --username postgres "${files[@]}" || status=$?

    # pytest starts servers of its own: give the memory back first.
    embedded down || true
    trap - EXIT
    return "$status"
}

run_python() {
    banner "pytest (tests/python)"
    # shellcheck disable=SC2086 # PYTEST_ARGS is a list of arguments
    "$VENV_BIN/pytest" tests/python ${PYTEST_ARGS:-}
}

if [[ $what == all || $what == sql ]]; then
    if run_sql; then sql_status=passed; else sql_status=FAILED; rc=1; fi
fi
if [[ $what == all || $what == python ]]; then
    if run_python; then python_status=passed; else python_status=FAILED; rc=1; fi
fi

banner "summary"
printf 'pgTAP : %s\npytest: %s\n' "$sql_status" "$python_status"
exit "$rc"
