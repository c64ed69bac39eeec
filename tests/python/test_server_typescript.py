"""/openapi.json is complete enough to drive a TypeScript client: openapi-typescript (npm)
generates types from the live document, tsc --strict type-checks tests/ts/client.ts
against them (and refuses tests/ts/misuse.ts), and the compiled client reserves and
commits against a running `costwarden serve` under node.

The toolchain is tests/ts/package.json, installed by scripts/bootstrap.sh; when it is
missing the test installs it into a cache directory, and skips, saying why, only where
npm itself cannot install it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

import costwarden
from cwtest import Seeded
from http_helpers import REPO, ServeProcess, auth, login_dsn, serve_process, token

__all__ = ["login_dsn", "serve_process"]

TS = REPO / "tests" / "ts"


def toolchain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory whose node_modules/.bin has openapi-typescript and tsc."""
    if (TS / "node_modules" / ".bin" / "tsc").exists() and (
        TS / "node_modules" / ".bin" / "openapi-typescript"
    ).exists():
        return TS
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed: the OpenAPI -> TypeScript check cannot run")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "costwarden-ts"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(TS / "package.json", cache / "package.json")
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent"],
        cwd=cache,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(
            f"npm could not install openapi-typescript and typescript: {done.stderr[-500:]}"
        )
    return cache


def test_typescript_client_from_openapi(
    serve_process: ServeProcess,
    seeded: Seeded,
    client: costwarden.Client,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tools = toolchain(tmp_path_factory) / "node_modules" / ".bin"
    client.set_budget("acme", "workspace", "ws-platform", "day", 1_000_000)
    doc = httpx.get(f"{serve_process.url}/openapi.json", headers=auth())
    assert doc.status_code == 200 and doc.json()["openapi"] == "3.1.0"
    assert httpx.get(f"{serve_process.url}/openapi.json").status_code == 401
    (tmp_path / "openapi.json").write_text(doc.text)
    gen = subprocess.run(
        # request fields with a default are optional (not "non-nullable, required")
        [
            str(tools / "openapi-typescript"),
            "openapi.json",
            "-o",
            "api.ts",
            "--default-non-nullable",
            "false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    for name in ("client.ts", "misuse.ts", "tsconfig.json"):
        shutil.copy(TS / name, tmp_path / name)

    tsc = [str(tools / "tsc"), "-p", "tsconfig.json"]
    bad = subprocess.run(
        [*tsc, "--noEmit"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    # the project compiles both files: misuse.ts must fail, naming both mistakes
    assert bad.returncode != 0
    assert "misuse.ts" in bad.stdout and "client.ts" not in bad.stdout, bad.stdout
    assert "'string' is not assignable to type 'number'" in bad.stdout, bad.stdout
    assert "currency" in bad.stdout, bad.stdout
    (tmp_path / "misuse.ts").unlink()
    ok = subprocess.run(
        [*tsc, "--outDir", "build"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr

    run = subprocess.run(
        ["node", "build/client.js"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "COSTWARDEN_URL": serve_process.url,
            "COSTWARDEN_TOKEN": token("costwarden_service", "acme"),
        },
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["held_micros"] == 7500 and out["charged_micros"] == 4000
    assert out["released_micros"] == 3500 and out["entry_seq"] == 1
    assert out["denied_status"] == "denied" and out["denied_codes"] == ["budget_exceeded"]
    [row] = [
        r for r in client.reservations("acme") if str(r.reservation_id) == out["reservation_id"]
    ]
    assert row.status == "committed" and row.charged_micros == 4000
