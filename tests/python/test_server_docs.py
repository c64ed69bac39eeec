"""docs/http.md runs as written: its ```bash blocks, in order, in one bash, against
`costwarden serve` on a fresh database of the test server (standing in for the
embedded one: COSTWARDEN_DSN points at it). Each block's output is checked for what
the text around it says it shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from costwarden.bench.http import free_port
from http_helpers import REPO

DOC = (REPO / "docs" / "http.md").read_text(encoding="utf-8")


def blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC, re.S)


def test_every_route_is_in_the_doc() -> None:
    from costwarden.server import ServerConfig, create_app

    app = create_app(ServerConfig(dsn="host=/nonexistent", jwt_secret="x" * 32))
    paths = {p for p in app.openapi()["paths"]}
    for path in paths:
        shown = re.sub(r"\{[a-z_]+\}", "{", path)
        doc = re.sub(r"\{[a-z_|\\]+\}", "{", DOC).replace("[/{]", "/{")
        assert shown in doc or path.rsplit("/{", 1)[0] in DOC, path


def test_the_walkthrough_runs_as_written(dsn: str, tmp_path: Path) -> None:
    script = "set -euo pipefail\n" + "\necho '=== block'\n".join(blocks())
    env = {
        **os.environ,
        "COSTWARDEN_DSN": dsn,
        "PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for var in (
        "COSTWARDEN_JWKS",
        "COSTWARDEN_KEK",
        "COSTWARDEN_JWT_ISSUER",
        "COSTWARDEN_JWT_AUDIENCE",
    ):
        env.pop(var, None)
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f"the walkthrough hung:\n{out}\n{err}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, out + err
    parts = out.split("=== block\n")
    assert len(parts) == len(blocks())
    setup, budget, saga, denied, bad, budgets, limits, tenant, byok, end = parts
    assert json.loads(setup.splitlines()[-1])["ok"] is True
    assert json.loads(budget)[0]["limit_value"] == 5_000_000
    quote, held, tick, commit, got = (json.loads(x) for x in saga.splitlines())
    assert held["status"] == "held" and held["amount_micros"] == quote["amount_micros"]
    assert tick["action"] == "continue"
    assert commit["entry_seq"] == 1 and got["status"] == "committed"
    assert got["charged_micros"] == commit["charged_micros"]
    code, body, released = denied.splitlines()
    assert code == "402" and json.loads(body)["reasons"][0]["code"] == "budget_exceeded"
    assert json.loads(released)["released_micros"] > 0
    body, code = bad.splitlines()
    assert code == "422" and json.loads(body)["field"] == "limit"
    status, spend, all_limits = (json.loads(x) for x in budgets.splitlines())
    assert status[0]["spent"] == commit["charged_micros"]
    assert (
        spend[0]["scope_id"] == "support" and spend[0]["spent_micros"] == commit["charged_micros"]
    )
    assert {(x["scope_kind"], x["scope_id"]) for x in all_limits} == {
        ("workspace", "support"),
        ("key", "alice-key"),
    }
    alice, default, removed = (json.loads(x) for x in limits.splitlines())
    assert alice[0]["source"] == "user" and alice[0]["limit_value"] == 4_000_000
    assert default[0]["limit_value"] == 2_000_000 and removed[0]["source"] == "user_default"
    mine, allocations, own, forbidden = tenant.splitlines()
    assert [r["reservation_id"] for r in json.loads(mine)][-1] == held["reservation_id"]
    [card] = json.loads(allocations)
    assert card["key_id"] == "alice-key" and card["limit_micros"] == 20_000_000
    assert card["spent_micros"] == commit["charged_micros"]
    assert [x["source"] for x in json.loads(own)] == ["user_default"] and forbidden == "403"
    put, revoked, _audit, anomalies, circuits = byok.splitlines()
    assert json.loads(put)["sqlstate"] == "CW005" and "KEK" in json.loads(put)["message"]
    assert json.loads(revoked) == {"revoked": False} and json.loads(anomalies) == []
    assert isinstance(json.loads(circuits), list)
    assert "costwarden_reservations_held" in end and '"openapi":"3.1.0"' in end
