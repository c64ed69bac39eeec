#!/usr/bin/env bash
# Idempotent setup that every Makefile target runs first:
#   1. the Debian packages for PostgreSQL 15, pg_cron, pgTAP, plpgsql_check, PL/Proxy,
#      pg_prove and PgBouncer (the pooler tests start one);
#   2. .venv with costwarden installed in editable mode, with its [dev] extras;
#   3. the TypeScript toolchain of tests/ts (openapi-typescript, tsc) when npm is there.
# chromium drives the dashboard's browser test (tests/python/test_server_dashboard.py).
# Quiet when there is nothing to do; a failing step prints its full output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(postgresql-15 postgresql-15-cron postgresql-15-pgtap postgresql-15-plpgsql-check
    postgresql-15-plproxy libtap-parser-sourcehandler-pgtap-perl pgbouncer chromium)
VENV=.venv
STAMP=$VENV/.stamp

say() { printf 'bootstrap: %s\n' "$*" >&2; }

# Run "$@" with its output kept aside; show it only if the command fails.
quietly() {
    local out
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        say "failed: $*"
        return 1
    fi
    rm -f "$out"
}

installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${PACKAGES[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
    # A bare Debian python3 cannot create virtual environments.
    if [[ ! -x $VENV/bin/python ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    fi
    command -v make >/dev/null 2>&1 || missing+=(make)
else
    say "not a Debian system: make sure PostgreSQL 15 with pg_cron, pgTAP, plpgsql_check and pg_prove are installed"
fi

if ((${#missing[@]})); then
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || { say "need root or sudo to install: ${missing[*]}"; exit 1; }
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    quietly "${sudo[@]}" apt-get update -q
    quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    # postgresql-common may have created and started a 'main' cluster on 5432. costwarden
    # runs its own clusters; stop that one so it does not hold memory.
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        "${sudo[@]}" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
    fi
fi

if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV"
    quietly python3 -m venv "$VENV"
    rm -f "$STAMP"
fi

if [[ ! -f $STAMP || pyproject.toml -nt $STAMP ]]; then
    say "installing costwarden[dev] into $VENV"
    quietly "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]'
    touch "$STAMP"
fi

# tests/ts: the OpenAPI -> TypeScript check (tests/python/test_server_typescript.py). Without
# npm, or offline, that test skips and says why; nothing else depends on it.
TS=tests/ts
if command -v npm >/dev/null 2>&1 \
    && [[ ! -f $TS/node_modules/.stamp || $TS/package.json -nt $TS/node_modules/.stamp ]]; then
    say "installing the TypeScript toolchain into $TS/node_modules"
    if quietly npm install --prefix "$TS" --no-audit --no-fund --silent; then
        touch "$TS/node_modules/.stamp"
    else
        say "npm install failed: the TypeScript test will skip"
    fi
fi
