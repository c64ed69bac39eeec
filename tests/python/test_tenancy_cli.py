"""CLI of §1: orgs, workspaces, users, API keys, models."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

import costwarden
from costwarden.cli import main


def run(dsn: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["--dsn", dsn, *args])


def test_tenancy_commands(dsn: str, client: costwarden.Client) -> None:
    assert run(dsn, "models", "set", "openai/gpt-4o", "--platform-servable").exit_code == 0
    r = run(dsn, "orgs", "set", "acme", "--timezone", "Europe/Berlin", "--credit-rate", "0.0125")
    assert r.exit_code == 0, r.output
    r = run(dsn, "workspaces", "set", "acme", "support", "--model", "openai/gpt-4o")
    assert r.exit_code == 0 and "billing platform_managed (by model)" in r.output
    r = run(dsn, "workspaces", "set", "acme", "support", "--billing-override", "disabled")
    assert "billing disabled (by override)" in r.output
    assert (
        run(dsn, "users", "set", "acme", "alice", "--group", "eng", "--group", "ops").exit_code == 0
    )
    r = run(dsn, "apikeys", "set", "acme", "k1", "--workspace", "support", "--user", "alice")
    assert r.exit_code == 0, r.output
    client.set_budget("acme", "key", "k1", "day", 1000)  # the key is a pool now
    assert client.budget_status("acme", "key", "k1")[0].limit_value == 1000
    r = run(dsn, "orgs", "set", "acme", "--timezone", "Mars/Olympus")
    assert r.exit_code != 0 and "InvalidArgument [CW004]" in r.output and "timezone" in r.output
    r = run(dsn, "workspaces", "set", "nope", "w")
    assert r.exit_code != 0 and "NotFound [CW002]" in r.output
