"""Spend visibility (SPEC §11), outlier spend reports (SPEC §6), the seeds' remaining
rules (unpriced reserves recorded as denied, byok without a key reported, the per-org
user-limit switch), through the Python clients against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import costwarden
from costwarden import types as t
from cwtest import Seeded, table_snapshot

Conn = psycopg.Connection[Any]

PRICES = {
    "input_tokens": Decimal("0.000001"),
    "output_tokens": Decimal("0.00001"),
}  # 1 and 10 micros per token


def _spend(client: costwarden.Client, org: str, ws: str, usage: dict[str, int], **kw: Any) -> int:
    r = client.reserve(org, ws, "openai/gpt-4o", usage, **kw)
    return client.commit(r.reservation_id, usage).charged_micros


@pytest.fixture
def shop(client: costwarden.Client, seeded: Seeded) -> costwarden.Client:
    """acme with three workspaces that spend, no limit anywhere."""
    for ws in ("ws-a", "ws-b", "ws-c"):
        client.upsert_workspace("acme", ws, model="openai/gpt-4o")
    client.upsert_key("acme", "key-a", workspace_id="ws-a", user_id="alice")
    client.upsert_key("acme", "key-bob", workspace_id="ws-b", user_id="bob")
    _spend(client, "acme", "ws-a", {"input_tokens": 1000, "output_tokens": 10}, key_id="key-a")
    _spend(client, "acme", "ws-b", {"input_tokens": 4000}, key_id="key-bob")
    _spend(client, "acme", "ws-b", {"output_tokens": 100}, user_id="bob")
    return client


# -- fn_spend_summary / fn_budget_list through the clients ------------------------------


def test_summary_without_any_limit(shop: costwarden.Client) -> None:
    rows = shop.spend_summary("acme", "workspace")
    assert [(r.scope_id, r.spent_micros, r.calls, r.limit_micros) for r in rows] == [
        ("ws-b", 10000 + 1000, 2, None),
        ("ws-a", 2500 + 100, 1, None),
    ]
    row = rows[0]
    assert isinstance(row, t.SpendSummary)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.spent_micros = 0  # type: ignore[misc]
    (org,) = shop.spend_summary("acme")
    assert (org.scope_kind, org.scope_id, org.spent_micros, org.denied) == ("org", None, 13600, 0)
    assert org.window_end - org.window_start >= timedelta(days=28)
    assert org.remaining_micros is None


def test_summary_limits_and_budget_list(shop: costwarden.Client) -> None:
    shop.set_budget("acme", "workspace", "ws-b", "month", 50_000, window="calendar")
    shop.set_budget("acme", "user_default", None, "month", 1_000, window="calendar")
    (ws,) = shop.spend_summary("acme", "workspace", "ws-b")
    assert (ws.limit_micros, ws.remaining_micros) == (50_000, 39_000)
    (bob,) = shop.spend_summary("acme", "user", "bob")
    assert (bob.spent_micros, bob.limit_micros, bob.remaining_micros) == (11_000, 1_000, 0)
    limits = shop.budget_list("acme")
    assert [(b.scope_kind, b.scope_id, b.limit_value) for b in limits] == [
        ("workspace", "ws-b", 50_000),
        ("user_default", None, 1_000),
    ]
    assert all(isinstance(b, t.BudgetLimit) for b in limits)


def test_async_client_has_the_same_surface(dsn: str, shop: costwarden.Client) -> None:
    async def go() -> tuple[list[t.SpendSummary], list[t.BudgetLimit]]:
        async with costwarden.AsyncClient(dsn) as a:
            return await a.spend_summary("acme", "key", "key-bob"), await a.budget_list("acme")

    summary, limits = asyncio.run(go())
    assert [(r.scope_id, r.spent_micros) for r in summary] == [("key-bob", 10000)]
    assert limits == []


def test_bad_input_names_the_argument_and_writes_nothing(
    shop: costwarden.Client, admin_conn: Conn
) -> None:
    before = table_snapshot(admin_conn)
    cases: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (costwarden.InvalidArgument, "p_scope_kind", {"scope_kind": "group"}),
        (costwarden.InvalidArgument, "p_period", {"period": "year"}),
        (costwarden.InvalidArgument, "p_window", {"window": "sliding"}),
        (costwarden.InvalidArgument, "p_scope_id", {"scope_kind": "org", "scope_id": "x"}),
        (costwarden.NotFound, "p_scope_id", {"scope_kind": "user", "scope_id": "nobody"}),
    ]
    for exc, arg, kw in cases:
        with pytest.raises(exc, match=arg):
            shop.spend_summary("acme", **kw)
    with pytest.raises(costwarden.NotFound):
        shop.spend_summary("no-such-org")
    with pytest.raises(costwarden.InvalidArgument, match="p_scope_kind"):
        shop.budget_list("acme", "team")
    with pytest.raises(costwarden.InvalidArgument, match="p_report_id"):
        shop.resolve_spend_report(None, True)  # type: ignore[arg-type]
    with pytest.raises(costwarden.NotFound, match="p_report_id"):
        shop.resolve_spend_report(123456, True)
    assert table_snapshot(admin_conn) == before


# -- tenants: own user scope and own keys only --------------------------------------------


_roles = itertools.count()


@pytest.fixture
def tenant_dsn(dsn: str, admin_conn: Conn, shop: costwarden.Client) -> Iterator[str]:
    """A login role that is a member of costwarden_tenant, bound to acme's user bob
    (fn_tenant_login_bind: its actor); roles are cluster-wide."""
    name = f"cw_tenant_{os.getpid()}_{next(_roles)}"
    admin_conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
    admin_conn.execute(
        sql.SQL("create role {} login in role costwarden_tenant").format(sql.Identifier(name))
    )
    admin_conn.execute("select costwarden.fn_tenant_login_bind(%s, 'acme', 'bob')", (name,))
    info = conninfo_to_dict(dsn)
    info["user"] = name
    try:
        yield make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})
    finally:
        admin_conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def test_tenant_reads_only_its_own_scopes(shop: costwarden.Client, tenant_dsn: str) -> None:
    with costwarden.Client(tenant_dsn) as bob:  # the login's binding is its actor
        (own,) = bob.spend_summary("acme", "user", "bob")
        assert own.spent_micros == 11000
        (key,) = bob.spend_summary("acme", "key", "key-bob")
        assert key.spent_micros == 10000
        for kw in (
            {"scope_kind": "user", "scope_id": "alice"},
            {"scope_kind": "key", "scope_id": "key-a"},
            {"scope_kind": "org"},
            {"scope_kind": "workspace", "scope_id": "ws-b"},
            {"scope_kind": "workspace"},
            {"scope_kind": "user"},
            {"scope_kind": "key"},
        ):
            with pytest.raises(costwarden.Forbidden):
                bob.spend_summary("acme", **kw)
        with pytest.raises(costwarden.Forbidden):
            bob.spend_summary("globex", "user", "bob")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            bob.budget_list("acme")  # admins and the service role only


# -- the hypothesis test: spent equals a recomputation from the ledger ---------------------

_orgs = itertools.count()

WORKSPACES = ("w1", "w2", "w3")
USERS = ("u1", "u2")
KEYS = {"k1": ("w1", "u1"), "k2": ("w2", "u2"), "k3": ("w3", None)}

step = st.one_of(
    st.tuples(
        st.just("call"),
        st.sampled_from(WORKSPACES),
        st.sampled_from((None, *KEYS)),
        st.sampled_from((None, *USERS)),
        st.integers(0, 5000),
        st.integers(0, 500),
        st.sampled_from(("commit", "release", "hold")),
    ),
    st.tuples(st.just("report"), st.sampled_from(WORKSPACES), st.integers(0, 3_000_000)),
    st.tuples(st.just("limit"), st.sampled_from(WORKSPACES), st.integers(0, 20_000)),
)

#: the window rule (docs/budgets.md): every committed amount booked in a minute from the
#: window's start floored to its slot (the larger of the period's and that of its age)
#: on, up to its end (rolling: inclusive; calendar: exclusive) rounded up to its slot;
#: recomputed here from the ledger rows
SLOT = """
greatest(case when {t} >= now() - interval '2 hours' then interval '1 minute'
              when {t} >= now() - interval '26 hours' then interval '20 minutes'
              when {t} >= now() - interval '32 days' then interval '1 hour'
              else interval '12 hours' end,
         case %(period)s when 'hour' then interval '1 minute' when 'day' then interval '20 minutes'
                         else interval '1 hour' end)
"""
RECOMPUTE = f"""
with w as (
    select s.window_start, s.window_end,
           case when %(window)s = 'rolling' then s.window_end + interval '1 microsecond'
                else s.window_end end as end_at
    from costwarden.fn_spend_summary(%(org)s, p_period => %(period)s, p_window => %(window)s,
                                     p_at => now() + %(shift)s::interval) as s
), edges as (
    select date_bin({SLOT.format(t="w.window_start")}, w.window_start, '2000-01-01Z') as lo,
           date_bin({SLOT.format(t="w.end_at")}, w.end_at, '2000-01-01Z') as floor_hi,
           {SLOT.format(t="w.end_at")} as slot_hi, w.end_at
    from w
)
select l.workspace_id, l.user_id, l.key_id, sum(l.amount_micros), sum(l.tokens)
from costwarden._ledger as l, edges as e
where l.org_id = %(org)s
  and date_bin(interval '1 minute', l.created_at, '2000-01-01Z') >= e.lo
  and date_bin(interval '1 minute', l.created_at, '2000-01-01Z')
      < case when e.floor_hi < e.end_at then e.floor_hi + e.slot_hi else e.end_at end
group by 1, 2, 3
"""


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    history=st.lists(step, min_size=1, max_size=25),
    period=st.sampled_from(("hour", "day", "week", "month")),
    window=st.sampled_from(("rolling", "calendar")),
    shift_minutes=st.sampled_from((0, -90, 90, -60 * 24 * 40)),
)
def test_summary_spent_equals_the_ledger(
    client: costwarden.Client,
    admin_conn: Conn,
    history: list[tuple[Any, ...]],
    period: str,
    window: str,
    shift_minutes: int,
) -> None:
    org = f"h{next(_orgs)}"
    client.upsert_model("openai/gpt-4o", platform_servable=True)
    if not client.pricing_history("openai/gpt-4o"):
        client.set_pricing("openai/gpt-4o", PRICES, datetime(2024, 1, 1, tzinfo=UTC))
    client.set_setting("spend_report_max_delta_micros", 1_000_000)  # some reports are outliers
    client.upsert_org(org)
    for ws in WORKSPACES:
        client.upsert_workspace(org, ws, model="openai/gpt-4o")
    for user in USERS:
        client.upsert_user(org, user)
    for key, (ws, user) in KEYS.items():
        client.upsert_key(org, key, workspace_id=ws, user_id=user)
    counters: dict[str, int] = {}
    for s in history:
        if s[0] == "call":
            _, ws, key, user, n_in, n_out, end = s
            if key is not None:
                ws, user = KEYS[key][0], None
            usage = {"input_tokens": n_in, "output_tokens": n_out}
            r = client.reserve(
                org, ws, "openai/gpt-4o", usage, key_id=key, user_id=user, raise_on_denied=False
            )
            if r.status == "held" and end == "commit":
                client.commit(r.reservation_id, {"input_tokens": n_in // 2, "output_tokens": n_out})
            elif r.status == "held" and end == "release":
                client.release(r.reservation_id)
        elif s[0] == "report":
            _, ws, value = s
            client.report_spend(org, ws, "agent", value)
            counters[ws] = value
        else:
            _, ws, limit = s
            client.set_budget(org, "workspace", ws, period, limit, window=window)

    shift = f"{shift_minutes} minutes"
    params = {"org": org, "period": period, "window": window, "shift": shift}
    ledger = admin_conn.execute(RECOMPUTE, params).fetchall()
    at = admin_conn.execute("select now() + %s::interval", (shift,)).fetchone()[0]  # type: ignore[index]

    def expected(kind: str) -> dict[str | None, tuple[int, int]]:
        out: dict[str | None, tuple[int, int]] = {}
        for ws, user, key, micros, tokens in ledger:
            sid = {"org": None, "workspace": ws, "user": user, "key": key}[kind]
            if kind != "org" and sid is None:
                continue
            m, tk = out.get(sid, (0, 0))
            out[sid] = (m + int(micros), tk + int(tokens))
        return out

    reservations = admin_conn.execute(
        "select workspace_id, user_id, key_id, status, created_at from costwarden._reservations "
        "where org_id = %s",
        (org,),
    ).fetchall()
    for kind in ("org", "workspace", "user", "key"):
        rows = (
            client.spend_summary(org, kind, period=period, window=window, at=at)
            if kind != "org"
            else client.spend_summary(org, period=period, window=window, at=at)
        )
        got = {
            r.scope_id: (r.spent_micros, r.spent_tokens)
            for r in rows
            if r.spent_micros or r.spent_tokens
        }
        assert got == {k: v for k, v in expected(kind).items() if v != (0, 0)}, kind
        for r in rows:
            col = {"org": None, "workspace": 0, "user": 1, "key": 2}[kind]
            mine = [
                x
                for x in reservations
                if (col is None or x[col] == r.scope_id)
                and (x[4] > r.window_start if window == "rolling" else x[4] >= r.window_start)
                and (x[4] <= r.window_end if window == "rolling" else x[4] < r.window_end)
            ]
            assert (r.calls, r.denied) == (len(mine), sum(x[3] == "denied" for x in mine)), kind
        assert [r.spent_micros for r in rows] == sorted(
            (r.spent_micros for r in rows), reverse=True
        )


# -- outlier spend reports (§6) -----------------------------------------------------------


def test_outlier_report_is_quarantined_then_decided_once(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    client.set_setting("spend_report_max_delta_micros", 1_000)
    assert client.report_spend("acme", "ws-platform", "agent", 500) == 500
    assert client.report_spend("acme", "ws-platform", "agent", 1_000_500) == 0
    (q,) = client.quarantined_spend_reports("acme")
    assert isinstance(q, t.QuarantinedSpendReport)
    assert (q.workspace_id, q.source, q.delta_micros) == ("ws-platform", "agent", 1_000_000)
    (anomaly,) = client.anomalies("acme")
    assert (anomaly.kind, anomaly.spent_micros, anomaly.mean_micros) == (
        "spend_report_outlier",
        1_000_000,
        None,
    )
    # the baseline moved: the next report books its own delta only
    assert client.report_spend("acme", "ws-platform", "agent", 1_000_600) == 100
    (ws,) = client.spend_summary("acme", "workspace", "ws-platform")
    assert ws.spent_micros == 600
    assert client.resolve_spend_report(q.report_id, accept=True) == 1_000_000
    (ws,) = client.spend_summary("acme", "workspace", "ws-platform")
    assert ws.spent_micros == 1_000_600
    before = table_snapshot(admin_conn)
    with pytest.raises(costwarden.InvalidState):
        client.resolve_spend_report(q.report_id, accept=False)
    assert table_snapshot(admin_conn) == before
    assert client.quarantined_spend_reports("acme") == []
    (entry,) = [a for a in client.audit(org_id="acme") if a.action == "spend_report_resolve"]
    assert entry.after["booked_micros"] == 1_000_000
    client.set_setting("spend_report_max_delta_micros", None)
    assert client.get_setting("spend_report_max_delta_micros") is None
    assert client.report_spend("acme", "ws-platform", "agent", 10**12) == 10**12 - 1_000_600


def test_rejected_report_books_nothing(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_setting("spend_report_max_delta_micros", 10)
    assert client.report_spend("acme", "ws-platform", "bot", 11) == 0
    (q,) = client.quarantined_spend_reports("acme")
    assert client.resolve_spend_report(q.report_id, accept=False) == 0
    assert client.spend_summary("acme", "workspace") == []


# -- the seeds' remaining rules -------------------------------------------------------------


def test_unpriced_reserve_is_a_recorded_denial(
    client: costwarden.Client, seeded: Seeded, admin_conn: Conn
) -> None:
    client.upsert_workspace("acme", "ws-new", model=seeded.unpriced_model)
    with pytest.raises(costwarden.BudgetExceeded) as info:
        client.reserve("acme", "ws-new", seeded.unpriced_model, {"input_tokens": 10})
    (reason,) = info.value.reasons
    assert (reason.code, reason.enforced) == ("unpriced_model", True)
    (row,) = admin_conn.execute(
        "select status from costwarden._reservations where workspace_id = 'ws-new'"
    ).fetchall()
    assert row == ("denied",)
    with pytest.raises(costwarden.UnpricedModel):
        client.quote("acme", "ws-new", seeded.unpriced_model, {"input_tokens": 10})
    (ws,) = client.spend_summary("acme", "workspace", "ws-new")
    assert (ws.calls, ws.denied) == (1, 1)


def test_byok_without_a_key_warns_and_reserve_still_fails_closed(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    with pytest.warns(costwarden.ReadinessWarning, match="no anthropic key"):
        client.upsert_workspace("acme", "ws-byok", model=seeded.vendor_model)
    with pytest.warns(costwarden.ReadinessWarning, match="bills byok \\(override\\)"):
        client.upsert_workspace("acme", "ws-platform", billing_override="byok")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.upsert_workspace("acme", "ws-platform", billing_override="none")  # no warning
    problems = client.workspace_readiness("acme", "ws-byok")
    assert [(p.problem, isinstance(p, t.ReadinessProblem)) for p in problems] == [
        ("byok_credential_missing", True)
    ]
    assert client.workspace_readiness("acme", "ws-platform") == []
    r = client.reserve(
        "acme", "ws-byok", seeded.vendor_model, {"input_tokens": 1}, raise_on_denied=False
    )
    assert [x.code for x in r.reasons] == ["byok_credential_missing"]

    async def go() -> None:
        async with costwarden.AsyncClient(dsn) as a:
            await a.upsert_workspace("acme", "ws-byok2", model=seeded.vendor_model)

    with pytest.warns(costwarden.ReadinessWarning):
        asyncio.run(go())


def test_user_limits_switch(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_budget("acme", "group", "eng", "day", 0)
    client.set_budget("acme", "user", "bob", "day", 0)
    usage = {"input_tokens": 1}
    assert (
        client.reserve(
            "acme",
            "ws-platform",
            seeded.platform_model,
            usage,
            user_id="alice",
            raise_on_denied=False,
        ).status
        == "denied"
    )
    client.upsert_org("acme", {"user_limits_enabled": False})
    for user in ("alice", "bob"):
        assert (
            client.reserve("acme", "ws-platform", seeded.platform_model, usage, user_id=user).status
            == "held"
        )
    assert client.budget_status("acme", "user", "bob") == []
    assert len(client.budget_list("acme")) == 2  # configured, not deleted
    client.upsert_org("acme", {"user_limits_enabled": True})
    assert (
        client.reserve(
            "acme",
            "ws-platform",
            seeded.platform_model,
            usage,
            user_id="bob",
            raise_on_denied=False,
        ).status
        == "denied"
    )
    with pytest.raises(costwarden.InvalidArgument, match="user_limits_enabled"):
        client.upsert_org("acme", {"user_limits_enabled": 0})


# -- the CLI ----------------------------------------------------------------------------------


def _cli(dsn: str, *args: str) -> Any:
    from click.testing import CliRunner

    from costwarden.cli import main

    return CliRunner().invoke(main, ["--dsn", dsn, *args], catch_exceptions=False)


def test_cli_spend_table_and_json(dsn: str, shop: costwarden.Client) -> None:
    r = _cli(dsn, "spend", "acme")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].split()[:3] == ["workspace", "spent", "spent_micros"]
    assert lines[3].split()[:3] == ["ws-b", "$0.011000", "11000"]
    assert lines[4].split()[:3] == ["ws-a", "$0.002600", "2600"]
    r = _cli(
        dsn, "spend", "acme", "--by", "user", "--period", "day", "--window", "rolling", "--json"
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [(d["scope_id"], d["spent_micros"]) for d in data] == [("bob", 11000), ("alice", 2600)]
    r = _cli(dsn, "spend", "acme", "--by", "team")
    assert r.exit_code == 2


def test_cli_quarantine_accept_reject(dsn: str, client: costwarden.Client, seeded: Seeded) -> None:
    client.set_setting("spend_report_max_delta_micros", 100)
    assert client.report_spend("acme", "ws-platform", "a", 1000) == 0
    assert client.report_spend("acme", "ws-platform", "b", 2000) == 0
    r = _cli(dsn, "spend-report", "quarantined", "acme", "--json")
    assert r.exit_code == 0, r.output
    first, second = (d["report_id"] for d in json.loads(r.output))
    r = _cli(dsn, "spend-report", "accept", str(first))
    assert r.exit_code == 0 and "booked 1000 micros ($0.001000)" in r.output
    r = _cli(dsn, "spend-report", "reject", str(second), "--json")
    assert json.loads(r.output) == {"report_id": second, "accepted": False, "booked_micros": 0}
    r = _cli(dsn, "spend-report", "reject", str(second))
    assert r.exit_code == 1 and "CW003" in r.output


def test_cli_workspace_warning_and_user_limit_switch(
    dsn: str, client: costwarden.Client, seeded: Seeded
) -> None:
    r = _cli(dsn, "workspaces", "set", "acme", "ws-new", "--model", seeded.vendor_model)
    assert r.exit_code == 0
    assert "warning: workspace acme/ws-new bills byok (model) but has no anthropic key" in r.output
    client.set_budget("acme", "user_default", None, "day", 5)
    assert len(client.budget_status("acme", "user", "alice")) == 1
    r = _cli(dsn, "orgs", "set", "acme", "--user-limits", "off")
    assert r.exit_code == 0
    assert client.budget_status("acme", "user", "alice") == []
