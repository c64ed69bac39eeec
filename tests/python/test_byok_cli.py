"""`costwarden keys put|revoke|list|keks|rotate-kek|audit` (SPEC §7, docs/byok.md)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

import costwarden
from costwarden.cli import main
from cwtest import Seeded

KEK = "cli-test-kek-0123456789abcdefghijklmnop"
NEW_KEK = "cli-test-new-kek-zyxwvutsrqponmlkjihg"
SECRET = "sk-ant-api03-CLISECRET-0123456789abcdef-9f2a"
USAGE = {"input_tokens": 10}


def keys(dsn: str, *args: str, input: str | None = None, **env: str) -> Any:
    result = CliRunner().invoke(main, ["--dsn", dsn, "keys", *args], input=input, env=env)
    return result


def test_put_list_revoke(dsn: str, seeded: Seeded) -> None:
    org, ws = seeded.org, seeded.ws_vendor
    put = keys(dsn, "put", org, ws, "anthropic", "--stdin", input=SECRET + "\n", COSTWARDEN_KEK=KEK)
    assert put.exit_code == 0, put.output
    assert put.output.strip() == f"stored anthropic key sk-…9f2a for {org}/{ws}"
    # from an environment variable named on the command line (never the value itself)
    again = keys(
        dsn,
        "put",
        org,
        ws,
        "anthropic",
        "--secret-env",
        "PROVIDER_KEY",
        COSTWARDEN_KEK=KEK,
        PROVIDER_KEY=SECRET.replace("9f2a", "1b2c"),
    )
    assert again.exit_code == 0 and "sk-…1b2c" in again.output
    # from a hidden prompt, the KEK too
    prompted = keys(dsn, "put", org, ws, "anthropic", input=f"{SECRET}\n{KEK}\n", COSTWARDEN_KEK="")
    assert prompted.exit_code == 0, prompted.output
    assert SECRET not in prompted.output and KEK not in prompted.output
    listing = keys(dsn, "list", "--org", org, "--all")
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert lines[0].split() == [
        "org",
        "workspace",
        "provider",
        "fingerprint",
        "status",
        "kek",
        "created",
        "revoked",
    ]
    assert len(lines) == 5 and "live" in lines[2] and "revoked (replaced)" in lines[3]
    revoke = keys(dsn, "revoke", org, ws, "anthropic")
    assert revoke.exit_code == 0 and "revoked" in revoke.output
    # the byok workspace now refuses every reserve: said on stderr, the revoke done
    assert f"warning: workspace {org}/{ws} bills byok (model) but has no anthropic key" in (
        revoke.output
    )
    again = keys(dsn, "revoke", org, ws, "anthropic")
    assert "no live anthropic key" in again.output and "warning" not in again.output
    assert "live" not in keys(dsn, "list").output.splitlines()[-1]


def test_put_refusals_are_reported(dsn: str, seeded: Seeded) -> None:
    guard = keys(
        dsn,
        "put",
        seeded.org,
        seeded.ws_platform,
        "openai",
        "--stdin",
        input=SECRET + "\n",
        COSTWARDEN_KEK=KEK,
    )
    assert guard.exit_code == 1
    assert "Forbidden [CW005]: key-write guard rule A" in guard.output
    short = keys(
        dsn,
        "put",
        seeded.org,
        seeded.ws_vendor,
        "anthropic",
        "--stdin",
        input=SECRET + "\n",
        COSTWARDEN_KEK="too-short",
    )
    assert short.exit_code == 1 and "at least 32 characters" in short.output
    missing = keys(
        dsn,
        "put",
        seeded.org,
        seeded.ws_vendor,
        "anthropic",
        "--secret-env",
        "NOPE",
        COSTWARDEN_KEK=KEK,
    )
    assert missing.exit_code == 2 and "NOPE is not set" in missing.output
    for result in (guard, short, missing):
        assert SECRET not in result.output


def test_no_secret_options_on_the_command_line() -> None:
    """A secret or a KEK on argv would be visible in ps and shell history."""
    result = CliRunner().invoke(main, ["keys", "put", "--help"])
    assert "--secret " not in result.output and "--kek" not in result.output
    result = CliRunner().invoke(main, ["keys", "rotate-kek", "--help"])
    assert "--new-kek-env" in result.output and "--new-kek " not in result.output


def test_rotate_kek_and_audit(dsn: str, seeded: Seeded) -> None:
    with costwarden.Client(dsn, kek=KEK) as c:
        c.put_key(seeded.org, seeded.ws_vendor, "anthropic", SECRET)
        r = c.reserve(seeded.org, seeded.ws_vendor, seeded.vendor_model, USAGE)
    rotate = keys(dsn, "rotate-kek", "--batch", "1", COSTWARDEN_KEK=KEK, COSTWARDEN_NEW_KEK=NEW_KEK)
    assert rotate.exit_code == 0, rotate.output
    assert "1 data key(s) re-wrapped, 0 to go" in rotate.output
    assert "every live key is under KEK generation 2" in rotate.output
    assert KEK not in rotate.output and NEW_KEK not in rotate.output
    keks = keys(dsn, "keks").output.splitlines()
    assert keks[2].split()[:2] == ["1", "retired"] and keks[3].split()[:2] == ["2", "current"]
    # the old KEK is refused now, the new one works
    with costwarden.Client(dsn, kek=KEK) as old, pytest.raises(costwarden.errors.Forbidden):
        old.resolve_key(r.reservation_id)
    with costwarden.Client(dsn, kek=NEW_KEK) as new:
        assert new.resolve_key(r.reservation_id).secret == SECRET
    # wrong KEKs: refused, nothing leaks
    wrong = keys(dsn, "rotate-kek", COSTWARDEN_KEK=KEK, COSTWARDEN_NEW_KEK=KEK + "-other")
    assert wrong.exit_code == 1 and "neither costwarden.kek nor costwarden.kek_new" in wrong.output
    # the new KEK from a prompt (with confirmation) is accepted as well
    third = "cli-test-third-kek-abcdefghijklmnopqrst"
    prompted = keys(
        dsn,
        "rotate-kek",
        input=f"{third}\n{third}\n",
        COSTWARDEN_KEK=NEW_KEK,
        COSTWARDEN_NEW_KEK="",
    )
    assert prompted.exit_code == 0, prompted.output
    assert third not in prompted.output
    audit = keys(dsn, "audit", "--limit", "5")
    assert audit.exit_code == 0
    rows = audit.output.splitlines()
    assert rows[0].split()[:4] == ["attempt", "at", "outcome", "reason"]
    outcomes = [line.split()[3] for line in rows[2:] if line.split()[0].isdigit()]
    assert outcomes == ["granted", "refused"]  # newest first: new KEK, then old refused
    assert SECRET not in audit.output
