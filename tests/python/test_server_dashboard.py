"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright's
Python package; no browser download): a seeded org's page, its bars checked in the DOM
against fn_spend_summary, the budget form submitted in USD, the tenant view with its
near-cap warnings. Screenshots go to a temporary directory, or into docs/ with
COSTWARDEN_SCREENSHOTS=docs (how docs/dashboard-*.png were made)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import costwarden
from cwtest import Seeded
from http_helpers import REPO, ServeProcess, login_dsn, serve_process, token

__all__ = ["login_dsn", "serve_process"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="the Debian package chromium is not installed"
)

USAGE = {"input_tokens": 400_000, "output_tokens": 100_000}  # $2.00 at gpt-4o prices


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return REPO / "docs" if os.environ.get("COSTWARDEN_SCREENSHOTS") == "docs" else tmp_path


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def seed_spend(client: costwarden.Client) -> None:
    """A month of an org: limits at several levels, spend, a live hold, a denial."""
    client.set_budget("acme", "org", None, "month", 10_000_000, window="calendar")
    client.set_budget("acme", "workspace", "ws-platform", "month", 8_000_000, window="calendar")
    client.set_budget("acme", "key", "key-1", "month", 5_000_000, window="calendar")
    for _ in range(2):
        r = client.reserve(
            "acme", "ws-platform", "openai/gpt-4o", USAGE, user_id="alice", key_id="key-1"
        )
        client.commit(r.reservation_id, USAGE)
    client.reserve("acme", "ws-platform", "openai/gpt-4o", {"input_tokens": 100_000}, user_id="bob")
    client.upsert_workspace("acme", "ws-research", model="openai/gpt-4o")  # no limit of its own
    r = client.reserve(
        "acme", "ws-research", "openai/gpt-4o", {"input_tokens": 360_000}, user_id="bob"
    )
    client.commit(r.reservation_id, {"input_tokens": 360_000})
    with pytest.raises(costwarden.BudgetExceeded):  # $4 spent: $2 more breaks the key's $5 cap
        client.reserve(
            "acme", "ws-platform", "openai/gpt-4o", USAGE, user_id="alice", key_id="key-1"
        )
    # set afterwards: bob's $0.25 held + $0.90 spent are over it
    client.set_budget("acme", "user", "bob", "month", 1_000_000, window="calendar")


def sign_in(browser: Any, url: str, jwt: str) -> Any:
    page = browser.new_page(viewport={"width": 1180, "height": 900})
    page.goto(f"{url}/")
    assert page.locator("input[name=token]").count() == 1  # no token: the sign-in form
    page.fill("input[name=token]", jwt)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def test_org_dashboard_in_chromium(
    browser: Any,
    serve_process: ServeProcess,
    client: costwarden.Client,
    seeded: Seeded,
    shots: Path,
) -> None:
    seed_spend(client)
    page = sign_in(browser, serve_process.url, token("costwarden_admin", "acme"))

    rows = page.locator("#limits tr.bar-row")
    seen = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        attrs = {
            k: row.get_attribute(f"data-{k}")
            for k in ("scope-kind", "scope-id", "spent", "held", "limit", "state", "metric")
        }
        seen[(attrs["scope-kind"], attrs["scope-id"] or None)] = attrs
        # the SVG's bar widths are the figures drawn to scale
        spent_w = float(row.locator("rect.spent").get_attribute("width") or 0)
        assert spent_w == min(300, round(300 * int(attrs["spent"] or 0) / int(attrs["limit"] or 1)))
    assert set(seen) == {
        ("org", None),
        ("workspace", "ws-platform"),
        ("key", "key-1"),
        ("user", "bob"),
    }
    for (kind, scope_id), attrs in seen.items():
        [s] = client.spend_summary("acme", kind, scope_id)
        assert (int(attrs["spent"]), int(attrs["held"]), int(attrs["limit"])) == (
            s.spent_micros,
            s.held_micros,
            s.limit_micros,
        ), kind
        used = (s.spent_micros + s.held_micros) / s.limit_micros
        assert attrs["state"] == ("red" if used >= 1 else "amber" if used >= 0.8 else "green")
    assert seen[("key", "key-1")]["state"] == "amber"  # $4 of $5
    assert seen[("user", "bob")]["state"] == "red"  # $1.15 of $1
    assert seen[("org", None)]["state"] == "green"  # $5.15 of $10
    fills = page.eval_on_selector_all(
        "#limits rect.spent", "els => els.map(e => getComputedStyle(e).fill)"
    )
    assert set(fills) <= {"rgb(46, 157, 91)", "rgb(224, 161, 0)", "rgb(210, 63, 49)"}

    # spend per workspace, limit or not
    ws = {
        r.get_attribute("data-workspace"): int(r.get_attribute("data-spent") or 0)
        for r in page.locator("#workspaces tr.ws-row").all()
    }
    assert ws == {s.scope_id: s.spent_micros for s in client.spend_summary("acme", "workspace")}
    assert ws["ws-research"] == 900_000  # no limit on ws-research
    assert "budget_exceeded" in page.locator("#denials").inner_text()
    assert page.locator("#alerts .warn").count() >= 1
    page.screenshot(path=str(shots / "dashboard-org.png"), full_page=True)

    # the budget form: USD in, micros stored and shown
    page.select_option("select[name=scope_kind]", "workspace")
    page.fill("input[name=scope_id]", "ws-research")
    page.select_option("#budget-form select[name=period]", "month")
    page.select_option("#budget-form select[name=window]", "calendar")
    page.fill("#limit_usd", "12.50")
    page.click("#budget-form button[type=submit]")
    page.wait_for_load_state()
    assert "12,500,000 micros" in page.locator("#message").inner_text()
    limits = {(b.scope_kind, b.scope_id): b.limit_value for b in client.budget_list("acme")}
    assert limits[("workspace", "ws-research")] == 12_500_000
    new = page.locator('#limits tr.bar-row[data-scope-id="ws-research"]')
    assert new.get_attribute("data-limit") == "12500000"
    assert new.get_attribute("data-spent") == "900000"
    # a bad amount is refused with a message, nothing stored
    page.fill("#limit_usd", "1.0000001")
    page.click("#budget-form button[type=submit]")
    page.wait_for_load_state()
    assert "six decimals" in page.locator("#error").inner_text()
    assert {(b.scope_kind, b.scope_id): b.limit_value for b in client.budget_list("acme")} == limits


def test_tenant_view_in_chromium(
    browser: Any,
    serve_process: ServeProcess,
    client: costwarden.Client,
    seeded: Seeded,
    shots: Path,
) -> None:
    seed_spend(client)
    page = sign_in(browser, serve_process.url, token("costwarden_tenant", "acme", "alice"))
    text = page.locator("main").inner_text()
    assert "ws-research" not in text and "bob" not in text  # only its own scopes
    [card] = page.locator("#allocations tr.allocation").all()
    [a] = [x for x in client.spend_summary("acme", "key", "key-1")]
    assert card.get_attribute("data-key") == "key-1"
    assert int(card.get_attribute("data-spent") or 0) == a.spent_micros == 4_000_000
    assert int(card.get_attribute("data-limit") or 0) == a.limit_micros == 5_000_000
    warning = page.locator(".near-cap")
    assert warning.count() == 1 and "used 80% of its month cap" in warning.inner_text()
    assert "budget_exceeded" in page.locator("#denials").inner_text()
    page.screenshot(path=str(shots / "dashboard-tenant.png"), full_page=True)
    # the budget form is not there, and posting it is refused by the database
    assert page.locator("#budget-form").count() == 0
