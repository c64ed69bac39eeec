"""One client surface: Client is generated from AsyncClient (costwarden/aio.py by
tools/async_to_sync.py), so both expose the same public methods with the same
signatures, and every method runs a statement of costwarden/_sql.py."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

import costwarden
from costwarden import _sql, aio, spool
from costwarden import client as client_module

ROOT = Path(__file__).resolve().parents[2]

#: The async spelling of a name in an annotation -> its sync twin (kept here apart
#: from the generator's table on purpose: the test states the contract itself).
ASYNC_TO_SYNC = {
    "AsyncClient": "Client",
    "AsyncReservationHandle": "ReservationHandle",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncConnection": "Connection",
    "AsyncIterator": "Iterator",
}

PAIRS = [
    (costwarden.Client, costwarden.AsyncClient),
    (costwarden.ReservationHandle, client_module.AsyncReservationHandle),
]

#: Public AsyncClient methods that run no statement of their own, and why.
NO_STATEMENT = {
    "close": "closes the pool",
    "reservation": "composes reserve / meter / commit / release",
    "replay_spool": "runs the statements the spool's replay yields (costwarden.spool)",
}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        name: fn
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") or name in ("__init__", "__enter__", "__aenter__")
    }


def to_sync(annotation: Any) -> Any:
    if not isinstance(annotation, str):
        return annotation
    for old, new in ASYNC_TO_SYNC.items():
        annotation = re.sub(rf"\b{old}\b", new, annotation)
    return annotation


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "async_to_sync", ROOT / "tools" / "async_to_sync.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_sync_client_is_up_to_date() -> None:
    tool = load_tool()
    generated = tool.generate((ROOT / "python" / "costwarden" / "aio.py").read_text())
    committed = (ROOT / "python" / "costwarden" / "_client_sync.py").read_text()
    assert generated == committed, "run: .venv/bin/python tools/async_to_sync.py"
    assert "async " not in generated and "await " not in generated


def test_the_generator_refuses_what_it_cannot_translate() -> None:
    tool = load_tool()
    with pytest.raises(SystemExit, match=r"asyncio\.gather"):
        tool.generate("import asyncio\n\nasync def f():\n    await asyncio.gather()\n")


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_same_public_methods(sync_cls: type, async_cls: type) -> None:
    sync = set(public_methods(sync_cls)) - {"__enter__"}
    asyn = set(public_methods(async_cls)) - {"__aenter__"}
    assert sync == asyn
    assert len(sync) >= (40 if sync_cls is costwarden.Client else 5)


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_identical_signatures(sync_cls: type, async_cls: type) -> None:
    sync_methods, async_methods = public_methods(sync_cls), public_methods(async_cls)
    for name, sync_fn in sync_methods.items():
        if name == "__enter__":
            continue
        async_fn = async_methods[name]
        s, a = inspect.signature(sync_fn), inspect.signature(async_fn)
        assert [p.name for p in s.parameters.values()] == [p.name for p in a.parameters.values()], (
            name
        )
        for sp, ap in zip(s.parameters.values(), a.parameters.values(), strict=True):
            assert sp.kind == ap.kind, (name, sp.name)
            assert sp.default == ap.default, (name, sp.name)
            assert sp.annotation == to_sync(ap.annotation), (name, sp.name)
        assert s.return_annotation == to_sync(a.return_annotation), name
        assert inspect.getdoc(sync_fn) is not None or inspect.getdoc(async_fn) is None, name


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=lambda c: c.__name__)
def test_sync_returns_t_async_awaitable_t(sync_cls: type, async_cls: type) -> None:
    for name, async_fn in public_methods(async_cls).items():
        sync_fn = getattr(sync_cls, "__enter__" if name == "__aenter__" else name)
        wrapped = getattr(async_fn, "__wrapped__", None)
        if wrapped is not None:  # a context manager: ``with`` and ``async with``
            assert inspect.isasyncgenfunction(wrapped), name
            assert inspect.isgeneratorfunction(sync_fn.__wrapped__), name
        elif name == "__init__":
            continue
        else:
            assert inspect.iscoroutinefunction(async_fn), name
            assert not inspect.iscoroutinefunction(sync_fn), name
            assert not inspect.isgeneratorfunction(sync_fn), name


def statements_of(module: ModuleType, cls_name: str) -> dict[str, set[str]]:
    """method name -> the names of _sql (``q.<name>``) its body refers to."""
    tree = ast.parse(inspect.getsource(module))
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    found: dict[str, set[str]] = {}
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and not fn.name.startswith("_"):
            found[fn.name] = {
                n.attr
                for n in ast.walk(fn)
                if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id == "q"
            }
    return found


def test_every_method_maps_to_a_statement_in_sql() -> None:
    methods = statements_of(aio, "AsyncClient")
    assert set(methods) == set(public_methods(costwarden.AsyncClient)) - {"__init__", "__aenter__"}
    for name, used in methods.items():
        if name in NO_STATEMENT:
            continue
        statements = []
        for builder in used:
            target = getattr(_sql, builder)  # AttributeError: not in _sql.py
            if isinstance(target, str):  # a statement of its own (SET_CONTEXT, ...)
                statements.append(builder)
            elif inspect.signature(target).return_annotation.startswith("Call["):
                statements.append(builder)  # a Call: one statement with its parameters
        assert statements, f"AsyncClient.{name} runs no statement of costwarden._sql"
    # the spool's replay (replay_spool) runs statements of _sql.py as well
    spool_tree = ast.parse(inspect.getsource(spool))
    replayed = {
        n.attr
        for n in ast.walk(spool_tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "q"
    }
    assert {"replay_usage", "replay_reservation", "spend_report_cumulative"} <= replayed


def test_one_classifier_of_unavailable() -> None:
    """errors.is_unavailable is the only one: the spool and the clients use it."""
    from costwarden import errors

    assert spool.is_unavailable is errors.is_unavailable  # imported, not re-written
    for path in (ROOT / "python" / "costwarden").glob("*.py"):
        text = path.read_text()
        if path.name != "errors.py":
            assert "def is_unavailable" not in text, path.name
            assert '"57P01"' not in text, path.name


def test_prices_read_exactly_whoever_owns_the_connection(
    dsn: str, client: costwarden.Client, admin_conn: psycopg.Connection[Any]
) -> None:
    """JSON numbers load as exact Decimals through a client on its own pool (whose
    connections are configured once) and through one given a connection or pool of the
    caller's (set per cursor) — sync and async — and the caller's connection keeps its
    own loaders for its own queries."""
    price = Decimal("0.0000001234567890123456789")  # more digits than a float keeps
    client.upsert_model("exact/m")
    client.set_pricing("exact/m", {"input_tokens": price})

    def read(c: costwarden.Client) -> Any:
        return c.pricing("exact/m")[0].prices["input_tokens"]

    async def read_async(c: aio.AsyncClient) -> Any:
        return (await c.pricing("exact/m"))[0].prices["input_tokens"]

    async def both_async() -> list[Any]:
        async with aio.AsyncClient(dsn, on_unavailable="closed") as owned:
            a = await read_async(owned)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            b = await read_async(aio.AsyncClient(aconn, on_unavailable="closed"))
            cur = await aconn.execute("select '{\"x\": 0.1}'::jsonb")
            row = await cur.fetchone()
            assert row is not None and type(row[0]["x"]) is float
        return [a, b]

    given = costwarden.Client(admin_conn, on_unavailable="closed")
    found = [read(client), read(given), *asyncio.run(both_async())]
    assert all(type(v) is Decimal and v == price for v in found), found
    # the caller's connection: its own loaders, untouched by the client's calls on it
    row = admin_conn.execute("select '{\"x\": 0.1}'::jsonb").fetchone()
    assert row is not None and type(row[0]["x"]) is float


def _call_builders() -> dict[str, Callable[..., Any]]:
    """Every builder of costwarden._sql that takes an integer argument."""
    return {
        name: fn
        for name, fn in inspect.getmembers(_sql, inspect.isfunction)
        if fn.__module__ == _sql.__name__
        and str(inspect.signature(fn).return_annotation).startswith("Call[")
        and any(
            p.annotation in ("int", "int | None") for p in inspect.signature(fn).parameters.values()
        )
    }


def _placeholder(annotation: str) -> Any:
    if annotation == "bool":
        return False
    if "None" in annotation:
        return None
    return {"str": "x", "int": 1}[annotation]


def test_every_integer_argument_is_checked_before_it_is_sent(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """SPEC §0: no input surfaces as a bare PostgreSQL error. An integer no SQL bigint
    (or integer) parameter holds would be 22003 or 42883 from the server; every builder
    refuses it first with InvalidArgument naming the SQL argument, and what it lets
    through (up to its parameter's bound) the server takes: at worst a CW error."""
    builders = _call_builders()
    assert len(builders) >= 17, sorted(builders)
    low, high = -(2**63), 2**63 - 1  # a SQL bigint; an integer: -(2**31) .. 2**31 - 1
    values = [2**31, -(2**31) - 1, high, high + 1, low - 1]
    for name, builder in builders.items():
        params = inspect.signature(builder).parameters.values()
        defaults = {p.name: _placeholder(p.annotation) for p in params}
        for arg in (p.name for p in params if p.annotation in ("int", "int | None")):
            for value in [*values, True, 1.0]:
                try:
                    call = builder(**{**defaults, arg: value})
                except costwarden.InvalidArgument as exc:
                    assert re.match(r"p_[a-z_]+ must be ", exc.message), (name, arg, exc)
                    continue
                assert type(value) is int and low <= value <= high, (name, arg, value)
                try:
                    with admin_conn.transaction(force_rollback=True):
                        admin_conn.execute(call.sql, call.params)
                except psycopg.Error as exc:
                    assert (exc.sqlstate or "").startswith("CW"), (name, arg, value, exc)


def test_the_clients_refuse_an_integer_no_bigint_holds(
    dsn: str, client: costwarden.Client, admin_conn: psycopg.Connection[Any]
) -> None:
    client.upsert_org("o1")
    client.upsert_key("o1", "k2")
    with pytest.raises(costwarden.InvalidArgument, match=r"^p_limit must be between"):
        client.set_budget("o1", "key", "k2", "day", 2**63)
    with pytest.raises(costwarden.InvalidArgument, match=r"^p_anomaly_id must be between"):
        client.ack_anomaly(10**20)

    async def refused() -> None:
        async with aio.AsyncClient(dsn, on_unavailable="closed") as c:
            with pytest.raises(costwarden.InvalidArgument, match=r"^p_amount_micros must be"):
                await c.ledger_adjust("o1", "w", -(2**63) - 1, "refund")
            with pytest.raises(costwarden.InvalidArgument, match=r"^p_limit must be an integer"):
                await c.audit(limit=True)

    asyncio.run(refused())
    assert client.budget_list("o1") == []


def test_a_partitions_warning_reads_as_a_single_nodes() -> None:
    """PL/Proxy passes a partition's WARNING on with its own prefix; the clients' readiness
    warnings carry the text a single node sends."""
    from costwarden._client_core import local_message

    text = "workspace acme/w bills byok (model) but has no openai key"
    remote = f"costwarden_remote.fn_byok_key_revoke(5): [cw_p1] REMOTE WARNING: {text}"
    assert local_message(remote) == text
    assert local_message(text) == text
