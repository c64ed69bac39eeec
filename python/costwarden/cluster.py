"""Scale-out on PL/Proxy (SPEC §15, docs/scale-out.md).

A cluster is N = 2^k partitions (costwarden databases, any number of servers) and one
proxy database. ``CLUSTER.toml``::

    [cluster]
    name = "costwarden"                  # PL/Proxy cluster (a SQL/MED server) name
    partitions = ["host=a dbname=cw0 user=postgres", "host=b dbname=cw1 user=postgres"]
    router_user = "costwarden_router"    # optional: the login the proxy connects with

The partition DSNs are the operator's (they migrate, split and report status); the
proxy connects to each partition as ``router_user`` (password from
``$COSTWARDEN_ROUTER_PASSWORD``, kept in PL/Proxy's user mapping; sent as COPY data,
never statement text: :func:`set_router_password`).

Everything the proxy database runs is generated here from the catalogue of a migrated
partition: for every RPC (``costwarden.fn_*``) of ``ROUTES``,

* on each partition, ``costwarden_px.fn_x(p_px jsonb, <arguments>)``: enters the
  caller's identity carried in ``p_px`` and calls ``costwarden.fn_x``;
* in the proxy database, ``costwarden_remote.fn_x(p_px, <arguments>)`` in language
  plproxy, routed as ``ROUTES`` says, and ``costwarden.fn_x(<the same arguments,
  defaults and result>)``, which builds ``p_px`` and merges what several partitions
  return.

An RPC with no entry in ``ROUTES`` is refused at install (and by a test): every new
RPC needs a routing decision.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import migrate as migrations
from ._text import safe_dsn
from .errors import CostwardenError

__all__ = [
    "ROUTES",
    "SEQUENCE_STRIDE",
    "ClusterConfig",
    "ClusterError",
    "PartitionStatus",
    "Route",
    "Rpc",
    "SplitReport",
    "catalogue",
    "install",
    "load_config",
    "partition_of",
    "split",
    "status",
]

Conn = psycopg.Connection[tuple[Any, ...]]
Say = Callable[[str], None]

#: Identity sequences of partition k hand out ids congruent to k modulo this, so ids
#: (anomalies, pools, audit rows, ...) are unique in the whole cluster: an id-keyed RPC
#: can ask every partition, and a split copies rows without renumbering them. It is
#: also the largest partition count.
SEQUENCE_STRIDE = 4096
#: Sequences of catalogue-wide tables: every partition applies the same writes in the
#: same order, so their ids are equal everywhere and are not strided.
CATALOGUE_SEQUENCES = frozenset(
    {
        "_pricing_snapshots_snapshot_id_seq",
        "_byok_keks_kek_id_seq",
        "_circuit_events_event_id_seq",
    }
)
#: Sequences that no column owns, and the column that holds the numbers they hand out
#: (a split restarts a sequence above the largest one present).
SEQUENCE_COLUMNS = {"_byok_resolve_attempt_seq": ("_byok_resolve_log", "attempt")}
DEFAULT_ROUTER = "costwarden_router"


class ClusterError(CostwardenError):
    """A cluster file, a partition or the proxy layer is not as it must be."""


# -- the cluster file --------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    partitions: tuple[str, ...]
    router_user: str = DEFAULT_ROUTER

    def router_conninfo(self, index: int) -> str:
        """How the proxy reaches partition ``index``: its DSN as the router login,
        without a password (that lives in the user mapping)."""
        info = conninfo_to_dict(self.partitions[index])
        info.pop("password", None)
        info["user"] = self.router_user
        return make_conninfo("", **{k: v for k, v in info.items() if v is not None})


def _check_power_of_two(n: int, what: str) -> None:
    if n < 1 or n & (n - 1) or n > SEQUENCE_STRIDE:
        raise ClusterError(f"{what}: {n} partitions; give a power of two up to {SEQUENCE_STRIDE}")


def load_config(path: Path) -> ClusterConfig:
    """Read and check CLUSTER.toml."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClusterError(f"{path}: {exc}") from exc
    section = data.get("cluster")
    if not isinstance(section, dict):
        raise ClusterError(f"{path}: no [cluster] section")
    name = section.get("name", "costwarden")
    parts = section.get("partitions")
    router = section.get("router_user", DEFAULT_ROUTER)
    if not isinstance(name, str) or not name.isidentifier():
        raise ClusterError(f"{path}: cluster.name must be an identifier")
    if not isinstance(router, str) or not router.isidentifier():
        raise ClusterError(f"{path}: cluster.router_user must be an identifier")
    if not isinstance(parts, list) or not all(isinstance(p, str) and p for p in parts):
        raise ClusterError(f"{path}: cluster.partitions must be a list of DSNs")
    _check_power_of_two(len(parts), str(path))
    return ClusterConfig(name, tuple(parts), router)


def partition_of(org_hash: int, partitions: int) -> int:
    """PL/Proxy's choice: the low bits of the hash (SPEC §10: hashtext(org_id))."""
    return org_hash & (partitions - 1)


# -- the routing table -------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where an RPC runs, and how the answers of several partitions become one.

    ``run``: ``org`` (hashtext(p_org_id)), ``reservation`` (the reservation id's first 32
    bits), ``resolve`` (the reservation's, else the org's), ``receipt`` (the org in a
    refusal receipt), ``actor`` (the caller's org: claims, actor settings or login
    binding), ``org_or_all`` (the org's partition, every partition when p_org_id is
    null), ``batch_orgs`` / ``batch_reservations`` (a batch RPC: the one partition of
    every element's org / reservation; CW004 when the elements span partitions),
    ``all``, ``any`` (one partition: catalogue reads, equal everywhere).

    ``merge`` (several partitions): ``same`` (the answers must be equal), ``severity``
    (circuit states: the most open one), ``sum``, ``bool_or``, ``gather`` (rows
    concatenated, then ``order`` / ``limit``), ``found`` (an id that exists on one
    partition: CW002 when none has it), or a SELECT over ``r`` (the gathered rows).

    ``serial``: a catalogue-wide write, serialised in the proxy so that every partition
    applies the same writes in the same order.
    """

    run: str
    merge: str | None = None
    order: str | None = None
    limit: str | None = None
    serial: bool = False
    why: str = ""


_ORG = Route("org", why="keyed by p_org_id")
_RES = Route("reservation", why="keyed by the reservation id (first 32 bits = hashtext(org_id))")
_ANY = Route("any", why="catalogue read: equal on every partition")
_CAT = Route("all", "same", serial=True, why="catalogue-wide write: every partition, same order")
_JOB = Route("all", "sum", why="per-node job: every partition, counts added")


def _gather(
    order: str | None = None, limit: str | None = None, *, run: str = "org_or_all"
) -> Route:
    return Route(run, "gather", order, limit, why="listing: gathered from the partitions")


_KEK_STATUS = """
select r.kek_id, bool_and(r.current), min(r.created_at), min(r.created_by), min(r.retired_at),
       sum(r.live_keys)::bigint
from r group by r.kek_id order by r.kek_id"""
_KEK_ROTATE = """
select min(r.kek_id), sum(r.rewrapped)::integer, sum(r.remaining)::bigint from r"""

_METRICS = """
select r.metric, r.labels,
       case when r.metric = 'costwarden_circuit_state' then max(r.value) else sum(r.value) end
from r group by r.metric, r.labels order by r.metric, r.labels::text"""

#: Every RPC and its routing decision. docs/scale-out.md prints this table.
ROUTES: dict[str, Route] = {
    # §1 tenancy and catalogue
    "fn_org_upsert": _ORG,
    "fn_workspace_upsert": _ORG,
    "fn_workspace_seed_model": _ORG,
    "fn_user_upsert": _ORG,
    "fn_key_upsert": _ORG,
    "fn_model_upsert": _CAT,
    "fn_pricing_set": _CAT,
    "fn_pricing_list": _ANY,
    "fn_pricing_history": _ANY,
    # §2 budgets, §11 spend visibility
    "fn_budget_set": _ORG,
    "fn_budget_status": _ORG,
    "fn_budget_list": _ORG,
    "fn_spend_summary": _ORG,
    "fn_maintenance": _JOB,
    # §3 the saga
    "fn_cost_quote": _ORG,
    "fn_cost_reserve": _ORG,
    "fn_cost_meter_tick": _RES,
    "fn_cost_commit": _RES,
    "fn_cost_release": _RES,
    "fn_cost_expire_reservations": _JOB,
    "fn_cost_reserve_many": Route("batch_orgs", why="the partition of every element's org"),
    "fn_cost_commit_many": Route(
        "batch_reservations", why="the partition of every element's reservation"
    ),
    "fn_get_my_cost_reservations": Route("actor", why="the caller's own org"),
    "fn_reservations_list": _gather("created_at desc, reservation_id", "p_limit"),
    # §4 the ledger
    "fn_ledger_verify": _gather("org_id"),
    "fn_ledger_digest": _gather("org_id"),
    "fn_ledger_export": _gather("org_id, seq", "p_limit"),
    "fn_ledger_identity": _gather(run="all"),
    "fn_ledger_adjust": _ORG,
    # §5 BYOK and billing mode
    "fn_workspace_billing_mode": _ORG,
    "fn_workspace_readiness": _ORG,
    "fn_byok_key_put": _ORG,
    "fn_byok_key_revoke": _ORG,
    "fn_byok_key_list": _gather("org_id, workspace_id, provider, created_at desc"),
    "fn_byok_key_resolve_v2": Route(
        "resolve", why="the reservation's partition (legacy: the org's)"
    ),
    # the unrecorded attempts (no time: at is null) after the recorded ones
    "fn_byok_resolve_audit": _gather("at desc nulls last, attempt desc", "p_limit"),
    "fn_byok_resolve_refusal_record": Route("receipt", why="the org named in the receipt"),
    "fn_byok_kek_status": Route("all", _KEK_STATUS, why="KEK generations, live keys added"),
    "fn_byok_kek_rotate": Route("all", _KEK_ROTATE, serial=True, why="every partition re-wraps"),
    # §6 guardrails
    "fn_setting_set": _CAT,
    "fn_setting_get": _ANY,
    "fn_settings_list": _ANY,
    "fn_provider_report": Route("all", "severity", serial=True, why="circuits on every partition"),
    "fn_circuit_reset": Route("all", "severity", serial=True, why="circuits on every partition"),
    "fn_circuit_status": _ANY,
    "fn_circuit_history": _ANY,
    "fn_spend_report_cumulative": _ORG,
    "fn_spend_source_set": _ORG,
    "fn_spend_sources_list": _gather("org_id, workspace_id, source"),
    "fn_spend_report_resolve": Route("all", "found", why="report ids are unique in the cluster"),
    "fn_spend_reports_quarantined": _gather("reported_at, report_id"),
    "fn_detect_spend_anomalies": _JOB,
    "fn_anomaly_ack": Route("all", "found", why="anomaly ids are unique in the cluster"),
    "fn_anomalies_list": _gather("detected_at desc, anomaly_id desc", "p_limit"),
    "fn_shadow_report": _ORG,
    "fn_audit_list": _gather("at desc, audit_id desc", "p_limit"),
    "fn_alert_get": Route("all", "found", why="alert ids are unique in the cluster"),
    # money correctness under faults (18_reconcile.sql)
    "fn_reconcile": _gather("org_id, pool_id, measure, period, window_kind, metric"),
    "fn_reconcile_repair": _ORG,
    "fn_replay_reservation": _RES,
    "fn_replay_usage": _ORG,
    # §13 the HTTP service
    "fn_reservation_get": _RES,
    "fn_my_allocations": Route("actor", why="the caller's own org"),
    "fn_schema_state": Route(
        "all",
        "select distinct r.kind, r.version, r.name, r.checksum from r order by 1 desc, 2, 3",
        why="every partition's schema: one row where they agree",
    ),
    "fn_metrics": Route("all", _METRICS, why="samples of every partition, one series each"),
    # §12 identity
    "fn_tenant_login_bind": Route("org", why="the org's partition; other bindings removed"),
    "fn_tenant_login_unbind": Route("all", "bool_or", why="the binding may live anywhere"),
}


# -- the catalogue -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One ``costwarden.fn_*`` as the partition's catalogue declares it."""

    name: str
    arguments: str  # pg_get_function_arguments: names, types, defaults
    identity: str  # pg_get_function_identity_arguments
    result: str  # pg_get_function_result
    in_names: tuple[str, ...]
    in_types: tuple[str, ...]
    returns_set: bool
    returns_void: bool
    result_type: str  # format_type(prorettype): the scalar type, or 'record'
    grants: tuple[str, ...] = field(default=())  # costwarden roles with EXECUTE
    #: the result columns ("name type"), for a function returning a table
    columns: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        if self.returns_set:
            return "table"
        return "void" if self.returns_void else "scalar"

    @property
    def needs_kek(self) -> bool:
        return self.name.startswith("fn_byok_")


CATALOGUE = """
select p.proname, pg_get_function_arguments(p.oid), pg_get_function_identity_arguments(p.oid),
       pg_get_function_result(p.oid), p.proargnames, p.proargmodes,
       array(select format_type(t, null) from unnest(p.proargtypes::oid[]) as t),
       p.proretset, p.prorettype = 'void'::regtype, format_type(p.prorettype, null),
       array(select r.rolname from pg_roles as r
             where r.rolname in ('costwarden_admin', 'costwarden_service', 'costwarden_tenant')
               and has_function_privilege(r.oid, p.oid, 'EXECUTE')
               and exists (select from aclexplode(p.proacl) as a where a.grantee = r.oid)
             order by r.rolname),
       array(select format('%I %s', a.n, format_type(a.t, null))
             from unnest(p.proargnames, p.proallargtypes::oid[], p.proargmodes) as a(n, t, m)
             where a.m in ('o', 't', 'b'))
from pg_proc as p
where p.pronamespace = 'costwarden'::regnamespace and p.proname like 'fn\\_%' and p.prokind = 'f'
order by p.proname, 3
"""


def catalogue(dsn: str) -> list[Rpc]:
    """The RPCs of a migrated partition."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(CATALOGUE).fetchall()
    out: list[Rpc] = []
    for name, args, ident, result, names, modes, types, retset, void, rettype, grants, cols in rows:
        modes = modes or ["i"] * len(types)
        in_names = tuple(
            n for n, m in zip(names or [], modes, strict=False) if m in ("i", "b", "v")
        )
        out.append(
            Rpc(
                name,
                args,
                ident,
                result,
                in_names,
                tuple(types),
                bool(retset),
                bool(void),
                rettype,
                tuple(grants),
                tuple(cols or ()),
            )
        )
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise ClusterError("an RPC is overloaded: PL/Proxy routes by name, give each one name")
    return out


def catalogue_sha256(rpcs: Sequence[Rpc]) -> str:
    text = "\n".join(f"{r.name}({r.arguments}) {r.result} {','.join(r.grants)}" for r in rpcs)
    return hashlib.sha256(text.encode()).hexdigest()


def unrouted(rpcs: Sequence[Rpc]) -> list[str]:
    """RPCs of the catalogue that ROUTES has no decision for."""
    return [r.name for r in rpcs if r.name not in ROUTES]


# -- generation --------------------------------------------------------------------------


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _in_decl(rpc: Rpc) -> str:
    return ", ".join(
        ["p_px jsonb", *(f"{n} {t}" for n, t in zip(rpc.in_names, rpc.in_types, strict=True))]
    )


def _in_pass(rpc: Rpc) -> str:
    return ", ".join(["p_px", *rpc.in_names])


def _named_call(rpc: Rpc) -> str:
    return f"costwarden.{rpc.name}(" + ", ".join(f"{n} => {n}" for n in rpc.in_names) + ")"


def _wrapper_returns(rpc: Rpc, route: Route) -> str:
    if route.merge == "found":
        kind = "jsonb" if rpc.kind == "table" else "text"
        return f"table(found boolean, result {kind}, err text)"
    if rpc.kind == "void":
        return "integer"
    return rpc.result


def partition_sql(rpcs: Sequence[Rpc]) -> str:
    """The wrappers of every RPC, for schema costwarden_px of a partition."""
    parts: list[str] = []
    for rpc in rpcs:
        route = ROUTES[rpc.name]
        call = _named_call(rpc)
        if route.merge == "found" and rpc.kind == "table":
            body = f"""
begin
    perform costwarden_px._enter(p_px);
    return query select true, to_jsonb(x), null::text from {call} as x;
    if not found then
        return query select true, null::jsonb, null::text;
    end if;
exception when sqlstate 'CW002' then
    return query select false, null::jsonb, sqlerrm;
end"""
        elif route.merge == "found":
            value = "null::text" if rpc.kind == "void" else f"{call}::text"
            pre = f"perform {call};\n        " if rpc.kind == "void" else ""
            body = f"""
begin
    perform costwarden_px._enter(p_px);
    {pre}return query select true, {value}, null::text;
exception when sqlstate 'CW002' then
    return query select false, null::text, sqlerrm;
end"""
        elif rpc.kind == "table":
            body = f"""
begin
    perform costwarden_px._enter(p_px);
    return query select * from {call};
end"""
        elif rpc.kind == "void":
            body = f"""
begin
    perform costwarden_px._enter(p_px);
    perform {call};
    return 1;
end"""
        elif rpc.name == "fn_pricing_set":  # the snapshot id the proxy chose (proxy.sql)
            body = f"""
begin
    perform costwarden_px._pricing_pin(p_px, p_model, p_effective_from);
    perform costwarden_px._enter(p_px);
    return {call};
end"""
        else:
            body = f"""
begin
    perform costwarden_px._enter(p_px);
    return {call};
end"""
        parts.append(
            f"create or replace function costwarden_px.{rpc.name}({_in_decl(rpc)})\n"
            f"returns {_wrapper_returns(rpc, route)}\nlanguage plpgsql\nvolatile\n"
            f"set search_path = pg_catalog, pg_temp\nas $wrapper${body}\n$wrapper$;\n"
            f"revoke all on function costwarden_px.{rpc.name}({_in_decl(rpc)}) from public;\n"
            f"grant execute on function costwarden_px.{rpc.name}({_in_decl(rpc)}) "
            "to costwarden_proxy;\n"
        )
    return "\n".join(parts)


_RUN_ON = {
    "org": "costwarden_remote.org_hash(p_org_id)",
    "reservation": "costwarden_remote.reservation_hash(p_reservation_id)",
    "resolve": "costwarden_remote.resolve_hash(p_reservation_id, p_org_id)",
    "receipt": "costwarden_remote.receipt_hash(p_receipt)",
    "actor": "costwarden_remote.actor_hash(p_px)",
    "org_or_all": "costwarden_remote.org_hash_or_all(p_org_id)",
    "batch_orgs": "costwarden_remote.batch_hash(p_requests, 'org_id')",
    "batch_reservations": "costwarden_remote.batch_hash(p_commits, 'reservation_id')",
    "all": "all",
    "any": "any",
}


def _multi(route: Route) -> bool:
    return route.run in ("all", "org_or_all")


def _remote_returns(rpc: Rpc, route: Route) -> str:
    returns = _wrapper_returns(rpc, route)
    if _multi(route) and not returns.startswith("TABLE") and not returns.startswith("table"):
        return f"setof {returns}"
    return returns


def _remote_select(rpc: Rpc, route: Route) -> str:
    returns = _wrapper_returns(rpc, route)
    if returns.lower().startswith("table"):
        return f"select * from costwarden_px.{rpc.name}({_in_pass(rpc)})"
    return f"select costwarden_px.{rpc.name}({_in_pass(rpc)})"


_SEVERITY = (
    "case max(case r when 'open' then 3 when 'half_open' then 2 when 'closed' then 1 else 0 end)"
    " when 3 then 'open' when 2 then 'half_open' when 1 then 'closed' end"
)


#: A partition's error reaches the caller as it would on a single node: same SQLSTATE,
#: message, detail and hint, without PL/Proxy's prefixes ("fn(n): [db] REMOTE ERROR: "
#: before the message, "Remote detail: " and "Remote hint: " before the others; a
#: refused BYOK resolve's hint starts with its receipt, which the clients look for).
#: A partition that cannot be reached is SQLSTATE 08006 (the clients' on_unavailable
#: policy applies) with a message naming the partition. (A partition's WARNING or
#: NOTICE keeps PL/Proxy's "fn(n): [db] REMOTE WARNING: " prefix: PL/Proxy raises it
#: itself while the call runs, and PL/pgSQL can neither catch nor reword a notice.)
_REMOTE_ERROR_HANDLER = (
    "exception when others then",
    "    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,",
    "        v_detail = pg_exception_detail, v_hint = pg_exception_hint;",
    "    if v_message ~ '^\\S+\\(\\d+\\): \\[[^]]*\\] REMOTE \\S+: ' then",
    "        v_message := regexp_replace(v_message,",
    "            '^\\S+\\(\\d+\\): \\[[^]]*\\] REMOTE \\S+: ', '');",
    "        v_detail := regexp_replace(v_detail, '^Remote detail: ', '');",
    "        v_hint := regexp_replace(v_hint, '^Remote hint: ', '');",
    "    end if;",
    "    if v_message ~ '^PL/Proxy function \\S+: \\[[^]]*\\] (PQ\\w+|connect|query timeout)'",
    "    then",
    "        v_state := '08006';",
    "        v_message := costwarden_remote.unreachable_message(v_message);",
    "    end if;",
    "    if v_detail = '' then v_detail := null; end if;",
    "    if v_hint = '' then v_hint := null; end if;",
    "    if v_hint is null and v_detail is null then",
    "        raise exception using errcode = v_state, message = v_message;",
    "    elsif v_hint is null then",
    "        raise exception using errcode = v_state, message = v_message, detail = v_detail;",
    "    elsif v_detail is null then",
    "        raise exception using errcode = v_state, message = v_message, hint = v_hint;",
    "    end if;",
    "    raise exception using errcode = v_state, message = v_message, detail = v_detail,",
    "        hint = v_hint;",
)


def _outer_body(rpc: Rpc, route: Route) -> str:
    remote = f"costwarden_remote.{rpc.name}(v_px, " + ", ".join(rpc.in_names) + ")"
    remote = remote.replace("(v_px, )", "(v_px)")
    lines = [
        "declare",
        f"    v_px jsonb := costwarden_remote.ctx({'true' if rpc.needs_kek else 'false'});",
    ]
    if route.merge in ("same", "severity", "found"):
        lines.append("    v_values text[];")
        lines.append("    v_found integer;")
        lines.append("    v_err text;")
        lines.append("    v_result text;")
        lines.append("    v_rows jsonb;")
    lines.append("begin")
    if route.run == "actor":
        lines.append(
            "    v_px := v_px || jsonb_build_object('route_org', "
            "costwarden_remote.actor_org(v_px));"
        )
    if route.serial:
        lines.append("    perform from costwarden_remote.catalogue_lock for update;")
    if rpc.name == "fn_pricing_set":
        # a write that failed half-way is completed, with equal ids (proxy.sql)
        lines[1:1] = ["    v_pin bigint;"]
        lines.append(
            "    select x.effective_from, x.snapshot_id into p_effective_from, v_pin "
            "from costwarden_remote.pricing_pin(p_model, p_prices, p_effective_from) as x;"
        )
        lines.append("    v_px := v_px || jsonb_build_object('pricing_snapshot_id', v_pin);")
    merge = route.merge
    if not _multi(route) or merge is None:
        if rpc.kind == "table":
            lines.append(f"    return query select * from {remote};")
        elif rpc.kind == "void":
            lines.append(f"    perform {remote};")
        else:
            lines.append(f"    return {remote};")
    elif merge == "gather":
        order = f" order by {route.order}" if route.order else ""
        limit = f" limit {route.limit}" if route.limit else ""
        lines.append(f"    return query select * from {remote} as r{order}{limit};")
    elif merge == "sum":
        lines.append(
            f"    return (select case when bool_or(r < 0) then -1 else coalesce(sum(r), 0) end "
            f"from {remote} as r)::{rpc.result_type};"
        )
    elif merge == "bool_or" and rpc.name == "fn_tenant_login_unbind":
        # the partitions first, then the proxy's copy of the bindings (proxy.sql)
        lines[1:1] = ["    v_unbound boolean;"]
        lines.append(f"    v_unbound := coalesce((select bool_or(r) from {remote} as r), false);")
        lines.append(
            "    delete from costwarden_remote.login_bindings as b where b.login = p_login;"
        )
        lines.append("    return v_unbound;")
    elif merge == "bool_or":
        lines.append(f"    return coalesce((select bool_or(r) from {remote} as r), false);")
    elif merge in ("same", "severity"):
        if rpc.kind == "void":
            lines.append(f"    perform count(*) from {remote} as r;")
        elif merge == "severity":
            lines.append(f"    return (select {_SEVERITY} from {remote} as r);")
        else:
            lines.append(
                f"    select array_agg(distinct r::text) into v_values from {remote} as r;"
            )
            lines.append("    if cardinality(v_values) > 1 then")
            lines.append(
                "        raise exception using errcode = 'CW003', message = format("
                f"'{rpc.name}: the partitions answered differently (%s): run it again', "
                "array_to_string(v_values, ', '));"
            )
            lines.append("    end if;")
            lines.append(f"    return v_values[1]::{rpc.result_type};")
    elif merge == "found" and rpc.kind == "table":
        lines.append(
            "    select count(*) filter (where r.found), max(r.err), "
            "jsonb_agg(r.result) filter (where r.found and r.result is not null)"
        )
        lines.append(f"    into v_found, v_err, v_rows from {remote} as r;")
        lines.append("    if v_found = 0 then")
        lines.append("        raise exception using errcode = 'CW002', message = v_err;")
        lines.append("    end if;")
        lines.append(
            "    return query select x.* from jsonb_to_recordset(coalesce(v_rows, '[]')) "
            f"as x({', '.join(rpc.columns)});"
        )
    elif merge == "found":
        lines.append(
            "    select count(*) filter (where r.found), max(r.result) filter (where r.found), "
            "max(r.err)"
        )
        lines.append(f"    into v_found, v_result, v_err from {remote} as r;")
        lines.append("    if v_found = 0 then")
        lines.append("        raise exception using errcode = 'CW002', message = v_err;")
        lines.append("    end if;")
        if rpc.kind != "void":
            lines.append(f"    return v_result::{rpc.result_type};")
    else:  # a custom SELECT over r
        lines.append(f"    return query with r as (select * from {remote}) {merge.strip()};")
    if rpc.name == "fn_tenant_login_bind":
        lines.append(
            "    perform count(*) from costwarden_remote._login_unbind_elsewhere("
            "v_px, p_login, p_org_id);"
        )
        lines.append(
            "    insert into costwarden_remote.login_bindings as b (login, org_id, user_id) "
            "values (p_login, p_org_id, p_user_id)"
        )
        lines.append(
            "    on conflict (login) do update set org_id = excluded.org_id, "
            "user_id = excluded.user_id, bound_at = now();"
        )
    lines.extend(_REMOTE_ERROR_HANDLER)
    lines.append("end")
    lines[1:1] = [
        "    v_state text;",
        "    v_message text;",
        "    v_detail text;",
        "    v_hint text;",
    ]
    return "\n".join(lines)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _describe(route: Route) -> str:
    merge = route.merge if route.merge and "\n" not in route.merge else "custom"
    how = f"{route.run}/{merge}" if route.merge else route.run
    return f"costwarden proxy: {how} -- {route.why}"


def proxy_sql(config: ClusterConfig, rpcs: Sequence[Rpc]) -> str:
    """The generated part of the proxy database: PL/Proxy functions and the RPCs."""
    cluster = config.name
    parts: list[str] = [
        f"""
create or replace function costwarden_remote.login_binding_lookup(p_login text)
returns table(org_id text, user_id text)
language plproxy
as $px$
    cluster '{cluster}';
    run on all;
    select * from costwarden_px._login_binding(p_login);
$px$;

create or replace function costwarden_remote.login_bindings_gather()
returns table(login text, org_id text, user_id text, bound_at timestamptz)
language plproxy
as $px$
    cluster '{cluster}';
    run on all;
    select * from costwarden_px._login_bindings();
$px$;

create or replace function costwarden_remote._login_unbind_elsewhere(
    p_px jsonb, p_login text, p_keep_org text)
returns setof boolean
language plproxy
as $px$
    cluster '{cluster}';
    run on all;
    select * from costwarden_px._login_unbind_elsewhere(p_px, p_login, p_keep_org);
$px$;

create or replace function costwarden_remote.pricing_state(p_model text)
returns table(next_id bigint, snapshots jsonb)
language plproxy
as $px$
    cluster '{cluster}';
    run on all;
    select * from costwarden_px._pricing_state(p_model);
$px$;

create or replace function costwarden_remote.catalogue_digest()
returns table(part text, digest text)
language plproxy
as $px$
    cluster '{cluster}';
    run on all;
    select * from costwarden_px.catalogue_digest();
$px$;
"""
    ]
    for rpc in rpcs:
        route = ROUTES[rpc.name]
        parts.append(
            f"create or replace function costwarden_remote.{rpc.name}({_in_decl(rpc)})\n"
            f"returns {_remote_returns(rpc, route)}\nlanguage plproxy\nas $px$\n"
            f"    cluster '{cluster}';\n    run on {_RUN_ON[route.run]};\n"
            f"    {_remote_select(rpc, route)};\n$px$;\n"
        )
        outer = f"costwarden.{rpc.name}({rpc.identity})"
        grants = ", ".join(rpc.grants)
        parts.append(
            f"create or replace function costwarden.{rpc.name}({rpc.arguments})\n"
            f"returns {rpc.result}\nlanguage plpgsql\nvolatile\nsecurity definer\n"
            f"set search_path = pg_catalog, pg_temp\nas $rpc$\n#variable_conflict use_column\n"
            f"{_outer_body(rpc, route)}\n$rpc$;\n"
            f"comment on function {outer} is {_literal(_describe(route))};\n"
            f"revoke all on function {outer} from public;\n"
            + (f"grant execute on function {outer} to {grants};\n" if grants else "")
        )
    return "\n".join(parts)


# -- installing --------------------------------------------------------------------------


def _sql_file(name: str) -> str:
    return (migrations.default_sql_dir() / "proxy" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Sequence:
    name: str
    table: str  # the table and column that hold its numbers
    column: str
    increment: int
    last_value: int  # the sequence's own last_value, handed out or (not called) next
    is_called: bool

    def largest(self, conn: Conn) -> int:
        """The largest number the sequence has handed out, or that its table holds."""
        row = conn.execute(
            sql.SQL("select max({}) from costwarden.{}").format(
                sql.Identifier(self.column), sql.Identifier(self.table)
            )
        ).fetchone()
        present = int(row[0]) if row and row[0] is not None else 0
        return max(present, self.last_value if self.is_called else self.last_value - 1)


#: Every sequence of schema costwarden with the table and column that owns it.
_SEQUENCES = """
select s.sequencename, t.relname, a.attname, s.increment_by
from pg_sequences as s
left join pg_depend as d
    on d.classid = 'pg_class'::regclass and d.refclassid = 'pg_class'::regclass
   and d.objid = format('%I.%I', s.schemaname, s.sequencename)::regclass
   and d.deptype in ('a', 'i')
left join pg_class as t on t.oid = d.refobjid
left join pg_attribute as a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
where s.schemaname = 'costwarden'
order by s.sequencename
"""


def _sequences(conn: Conn) -> list[_Sequence]:
    out: list[_Sequence] = []
    for name, table, column, increment in conn.execute(_SEQUENCES).fetchall():
        if table is None:
            if name not in SEQUENCE_COLUMNS:
                raise ClusterError(
                    f"sequence costwarden.{name} belongs to no column: own it by the column "
                    "of its numbers, or name that column in costwarden.cluster.SEQUENCE_COLUMNS"
                )
            table, column = SEQUENCE_COLUMNS[name]
        row = conn.execute(
            sql.SQL("select last_value, is_called from costwarden.{}").format(sql.Identifier(name))
        ).fetchone()
        assert row is not None
        out.append(
            _Sequence(str(name), str(table), str(column), int(increment), int(row[0]), row[1])
        )
    return out


def _stride_sequences(conn: Conn, index: int) -> None:
    """Make partition ``index``'s sequences hand out ids congruent to ``index``, above
    every id its tables hold (after a split: the rows copied from its source, which
    carry the source's residue), so that ids keep growing with time on each partition
    and listings ordered by id show the newest rows first. A sequence restarted here
    also starts there (its start value is the first id this partition hands out:
    fn_byok_resolve_audit counts unrecorded attempts from it). `migrate --proxy` runs it
    on every partition, so it also repairs a partition split before it was so."""
    for seq in _sequences(conn):
        largest = seq.largest(conn)
        if seq.name in CATALOGUE_SEQUENCES:
            # not strided; only never behind its rows (a partition split before the
            # split copied these sequences)
            if largest > (seq.last_value if seq.is_called else seq.last_value - 1):
                conn.execute("select setval(%s, %s)", (f"costwarden.{seq.name}", largest))
            continue
        if (
            seq.increment == SEQUENCE_STRIDE
            and seq.last_value % SEQUENCE_STRIDE == index
            and (seq.last_value >= largest if seq.is_called else seq.last_value > largest)
        ):
            continue
        nxt = largest + 1 + ((index - (largest + 1)) % SEQUENCE_STRIDE)
        if nxt < 1:
            nxt += SEQUENCE_STRIDE
        conn.execute(
            sql.SQL(
                "alter sequence costwarden.{} increment by {} start with {} restart with {}"
            ).format(
                sql.Identifier(seq.name),
                sql.Literal(SEQUENCE_STRIDE),
                sql.Literal(nxt),
                sql.Literal(nxt),
            )
        )


def _drop_stale(conn: Conn, schema: str, keep: set[str]) -> None:
    rows = conn.execute(
        "select p.oid::regprocedure::text, p.proname from pg_proc as p "
        "where p.pronamespace = %s::regnamespace and p.proname like 'fn\\_%%'",
        (schema,),
    ).fetchall()
    for signature, name in rows:
        if name not in keep:
            conn.execute(f"drop function {signature}".encode())


def install_partition(dsn: str, index: int, config: ClusterConfig, rpcs: Sequence[Rpc]) -> None:
    """The partition side: costwarden_px, the router login, strided sequences."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("set local client_min_messages = warning")
        conn.execute(_sql_file("partition.sql").replace("{{ROUTER}}", config.router_user).encode())
        conn.execute(partition_sql(rpcs).encode())
        _drop_stale(conn, "costwarden_px", {r.name for r in rpcs})
        _stride_sequences(conn, index)


def _server_options(config: ClusterConfig) -> dict[str, str]:
    options = {f"p{i}": config.router_conninfo(i) for i in range(len(config.partitions))}
    options["connection_lifetime"] = "1800"
    return options


def configure_server(conn: Conn, config: ClusterConfig) -> None:
    """Create or switch PL/Proxy's cluster configuration (a SQL/MED server)."""
    name = sql.Identifier(config.name)
    row = conn.execute(
        "select srvoptions from pg_foreign_server where srvname = %s", (config.name,)
    ).fetchone()
    wanted = _server_options(config)
    if row is None:
        opts = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in wanted.items()
        )
        conn.execute(
            sql.SQL("create server {} foreign data wrapper plproxy options ({})").format(name, opts)
        )
    else:
        current = dict(o.split("=", 1) for o in (row[0] or []))
        actions: list[sql.Composable] = []
        for key, value in wanted.items():
            if key not in current:
                actions.append(sql.SQL("add {} {}").format(sql.Identifier(key), sql.Literal(value)))
            elif current[key] != value:
                actions.append(sql.SQL("set {} {}").format(sql.Identifier(key), sql.Literal(value)))
        for key in current:
            if key not in wanted:
                actions.append(sql.SQL("drop {}").format(sql.Identifier(key)))
        if actions:
            conn.execute(
                sql.SQL("alter server {} options ({})").format(name, sql.SQL(", ").join(actions))
            )
    conn.execute(sql.SQL("create user mapping if not exists for public server {}").format(name))
    password = os.environ.get("COSTWARDEN_ROUTER_PASSWORD")
    if password:
        set_router_password(conn, config.name, password)


#: The router password from the temporary table into the user mapping (``add`` or
#: ``set``). No statement text carries it: log_statement logs top-level statements only,
#: pg_stat_statements keeps only them (its default track = top), and an error of the
#: ALTER is raised again without the CONTEXT that would quote it.
_SET_ROUTER_PASSWORD = """
do $password$
declare
    v_server constant text := {server};
    v_state text;
    v_message text;
begin
    execute format(
        'alter user mapping for public server %I options (%s password %L)',
        v_server,
        case when exists (select from pg_catalog.pg_user_mappings as m,
                                      unnest(m.umoptions) as o
                          where m.srvname = v_server and m.umuser = 0
                            and o like 'password=%')
             then 'set' else 'add' end,
        (select convert_from(decode(s.line, 'base64'), 'UTF8')
         from pg_temp._costwarden_router_secret as s));
exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
    raise exception using errcode = v_state,
        message = format('the router password of server %s: %s', v_server, v_message);
end
$password$
"""


def set_router_password(conn: Conn, server: str, password: str) -> None:
    """Keep ``password`` in the public user mapping of PL/Proxy's ``server``. It travels
    as COPY data (base64: a line COPY can never reject, and so never quote in an error)
    into a temporary table, from which a DO block applies it: it is never statement
    text, so ``log_statement`` and pg_stat_statements never see it (as the audit link's
    password, costwarden.audit_link)."""
    encoded = base64.b64encode(password.encode("utf-8", "surrogatepass")).decode("ascii")
    with conn.transaction():
        conn.execute("create temporary table _costwarden_router_secret (line text) on commit drop")
        with conn.cursor().copy("copy pg_temp._costwarden_router_secret (line) from stdin") as copy:
            copy.write_row((encoded,))
        del encoded
        conn.execute(sql.SQL(_SET_ROUTER_PASSWORD).format(server=sql.Literal(server)))
        conn.execute("drop table pg_temp._costwarden_router_secret")


#: Everything in the proxy database is owned by costwarden_owner, as on a partition
#: (SPEC §12): the RPCs (SECURITY DEFINER) and the PL/Proxy functions they call run as
#: it, so it may use the cluster's foreign server.
PROXY_OWNERSHIP = """
do $own$
declare
    v record;
begin
    alter schema costwarden owner to costwarden_owner;
    alter schema costwarden_remote owner to costwarden_owner;
    for v in
        select format('alter %s %s owner to costwarden_owner',
                      case p.prokind when 'p' then 'procedure' else 'function' end,
                      p.oid::regprocedure) as stmt
        from pg_catalog.pg_proc as p
        where p.pronamespace in ('costwarden'::regnamespace, 'costwarden_remote'::regnamespace)
        union all
        select format('alter %s %s owner to costwarden_owner',
                      case c.relkind when 'v' then 'view' else 'table' end, c.oid::regclass)
        from pg_catalog.pg_class as c
        where c.relnamespace in ('costwarden'::regnamespace, 'costwarden_remote'::regnamespace)
          and c.relkind in ('r', 'v')
    loop
        execute v.stmt;
    end loop;
end
$own$;
grant usage on foreign server {{CLUSTER}} to costwarden_owner;
"""


#: The proxy's copy of the login bindings, gathered again from every partition (a login
#: bound on two partitions -- a bind that failed half-way -- keeps its latest binding).
GATHER_LOGIN_BINDINGS = """
delete from costwarden_remote.login_bindings;
insert into costwarden_remote.login_bindings (login, org_id, user_id, bound_at)
select distinct on (b.login) b.login, b.org_id, b.user_id, b.bound_at
from costwarden_remote.login_bindings_gather() as b
order by b.login, b.bound_at desc
"""


#: The views of a partition's schema that take input through INSTEAD OF triggers (the
#: write-only KEK / secret channels of SPEC §5), with their trigger functions, triggers
#: and grants: the proxy has the same, so a client stages its KEK the same way.
INPUT_CHANNELS = """
select pg_get_functiondef(f.oid),
       format('create or replace view %s as %s', c.oid::regclass, pg_get_viewdef(c.oid)),
       regexp_replace(pg_get_triggerdef(t.oid), '^CREATE TRIGGER', 'create or replace trigger'),
       coalesce((select string_agg(format('grant %s on %s to %I', a.privilege_type,
                                          c.oid::regclass, r.rolname), '; ')
                 from aclexplode(c.relacl) as a join pg_roles as r on r.oid = a.grantee
                 where r.rolname in ('costwarden_admin', 'costwarden_service',
                                     'costwarden_tenant')), '')
from pg_class as c
join pg_trigger as t on t.tgrelid = c.oid and not t.tgisinternal
join pg_proc as f on f.oid = t.tgfoid
where c.relnamespace = 'costwarden'::regnamespace and c.relkind = 'v'
order by c.relname
"""


def install_proxy(proxy_dsn: str, config: ClusterConfig, rpcs: Sequence[Rpc]) -> None:
    """The proxy database: helpers, cluster configuration, generated RPCs (one transaction)."""
    with psycopg.connect(config.partitions[0], autocommit=True) as part:
        channels = part.execute(INPUT_CHANNELS).fetchall()
    with psycopg.connect(proxy_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("set local client_min_messages = warning")
        conn.execute(_sql_file("proxy.sql").replace("{{CLUSTER}}", config.name).encode())
        configure_server(conn, config)
        for function, view, trigger, grants in channels:
            conn.execute(str(function).encode())
            conn.execute(str(view).encode())
            conn.execute(str(trigger).encode())
            if grants:
                conn.execute(str(grants).encode())
        conn.execute(proxy_sql(config, rpcs).encode())
        keep = {r.name for r in rpcs}
        _drop_stale(conn, "costwarden", keep)
        _drop_stale(conn, "costwarden_remote", keep)
        conn.execute(
            "insert into costwarden_remote.proxy_meta "
            "(cluster_name, partitions, rpcs, catalogue_sha256) values (%s, %s, %s, %s) "
            "on conflict (singleton) do update set cluster_name = excluded.cluster_name, "
            "partitions = excluded.partitions, rpcs = excluded.rpcs, "
            "catalogue_sha256 = excluded.catalogue_sha256, installed_at = now()",
            (config.name, len(config.partitions), len(rpcs), catalogue_sha256(rpcs)),
        )
        conn.execute(
            "revoke all on all functions in schema costwarden_remote from public; "
            "revoke all on all tables in schema costwarden_remote from public"
        )
        conn.execute(PROXY_OWNERSHIP.replace("{{CLUSTER}}", config.name).encode())
        conn.execute(GATHER_LOGIN_BINDINGS)


def install(
    proxy_dsn: str,
    config: ClusterConfig,
    *,
    schedule: bool = True,
    progress: Say | None = None,
    migrate_partitions: bool = True,
) -> list[Rpc]:
    """`costwarden --dsn PROXY migrate --proxy CLUSTER.toml`: migrate every partition
    (pg_cron jobs on each), install the partition side, then the proxy. Returns the RPCs."""
    say = progress or (lambda _m: None)
    if migrate_partitions:
        for i, dsn in enumerate(config.partitions):
            applied = migrations.migrate(dsn, schedule=schedule)
            say(f"partition {i}: {len(applied)} migration(s) applied")
    rpcs = catalogue(config.partitions[0])
    missing = unrouted(rpcs)
    if missing:
        raise ClusterError(
            "no routing decision for " + ", ".join(missing) + " (costwarden.cluster.ROUTES)"
        )
    expected = catalogue_sha256(rpcs)
    for i, dsn in enumerate(config.partitions[1:], start=1):
        if catalogue_sha256(catalogue(dsn)) != expected:
            raise ClusterError(f"partition {i} has other RPCs than partition 0: migrate it")
    for i, dsn in enumerate(config.partitions):
        install_partition(dsn, i, config, rpcs)
    install_proxy(proxy_dsn, config, rpcs)
    say(f"proxy: {len(rpcs)} RPCs over {len(config.partitions)} partitions ({config.name})")
    return rpcs


# -- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionStatus:
    index: int
    dsn: str  # without password
    reachable: bool
    error: str | None
    version: int | None
    up_to_date: bool
    jobs: tuple[tuple[str, str, str], ...]
    cron_available: bool
    orgs: int | None
    catalogue: str | None  # digest of the catalogue-wide state


def proxy_config(proxy_dsn: str) -> tuple[str, int]:
    """(cluster name, partitions) the proxy database was installed with."""
    with psycopg.connect(proxy_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select cluster_name, costwarden_remote.partition_count() "
            "from costwarden_remote.proxy_meta"
        ).fetchone()
    if row is None:
        raise ClusterError("this database has no costwarden proxy layer")
    return str(row[0]), int(row[1])


def status(config: ClusterConfig) -> list[PartitionStatus]:
    """Each partition's schema version, pg_cron jobs, org count and catalogue digest."""
    out: list[PartitionStatus] = []
    for i, dsn in enumerate(config.partitions):
        try:
            st = migrations.status(dsn)
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                orgs = conn.execute("select count(*) from costwarden._orgs").fetchone()
                dig = conn.execute(
                    "select string_agg(part || ':' || digest, ' ' order by part) "
                    "from costwarden_px.catalogue_digest()"
                ).fetchone()
            out.append(
                PartitionStatus(
                    i,
                    safe_dsn(dsn),
                    True,
                    None,
                    st.version,
                    st.up_to_date,
                    st.cron.jobs,
                    st.cron.available,
                    int(orgs[0]) if orgs else None,
                    hashlib.sha256(str(dig[0]).encode()).hexdigest()[:16] if dig else None,
                )
            )
        except psycopg.Error as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            out.append(
                PartitionStatus(
                    i, safe_dsn(dsn), False, message, None, False, (), False, None, None
                )
            )
    return out


# -- growing: N -> 2N --------------------------------------------------------------------


@dataclass(frozen=True)
class SplitReport:
    partitions_before: int
    partitions_after: int
    moved: dict[str, tuple[int, int]]  # org -> (from, to)
    rows: int  # rows copied


#: Catalogue-wide tables a new partition copies from its source before any org moves.
CATALOGUE_TABLES = (
    "_models",
    "_pricing_snapshots",
    "_settings",
    "_circuits",
    "_circuit_events",
    "_byok_keks",
    "_byok_receipt_key",
)


def _columns(conn: Conn, table: str) -> list[str]:
    rows = conn.execute(
        "select a.attname from pg_attribute as a where a.attrelid = %s::regclass "
        "and a.attnum > 0 and not a.attisdropped and a.attgenerated = '' order by a.attnum",
        (f"costwarden.{table}",),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _org_tables(conn: Conn) -> tuple[list[str], list[str]]:
    """(tables with an org_id column, tables keyed by pool_id without one)."""
    rows = conn.execute(
        """
        select c.relname,
               exists (select from pg_attribute a where a.attrelid = c.oid
                       and a.attname = 'org_id' and not a.attisdropped),
               exists (select from pg_attribute a where a.attrelid = c.oid
                       and a.attname = 'pool_id' and not a.attisdropped)
        from pg_class as c
        where c.relnamespace = 'costwarden'::regnamespace and c.relkind = 'r'
        order by c.relname
        """
    ).fetchall()
    by_org = [str(n) for n, has_org, _ in rows if has_org]
    by_pool = [str(n) for n, has_org, has_pool in rows if has_pool and not has_org]
    # parents first: orgs, then everything else (foreign keys are off while copying anyway)
    by_org.sort(key=lambda n: (n != "_orgs", n))
    return by_org, by_pool


def _copy(src: Conn, dst: Conn, table: str, where: str, params: Sequence[Any]) -> int:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in _columns(src, table))
    rel = sql.SQL("costwarden.{}").format(sql.Identifier(table))
    query = sql.SQL("copy (select {} from {} where {}) to stdout (format binary)").format(
        cols, rel, sql.SQL(where)
    )
    with src.cursor() as sc, dst.cursor() as dc:
        with (
            sc.copy(query, params) as out,
            dc.copy(sql.SQL("copy {} ({}) from stdin (format binary)").format(rel, cols)) as inp,
        ):
            for block in out:
                inp.write(block)
        rows = max(dc.rowcount, 0)
    return rows


def _copy_catalogue(src: Conn, dst: Conn) -> None:
    """The catalogue-wide rows of ``src`` into ``dst``, and the sequences of their tables
    as they are on ``src`` (and past every copied id): the catalogue-wide writes that
    follow hand out the same ids on both."""
    dst.execute("set local session_replication_role = replica")
    for table in CATALOGUE_TABLES:
        dst.execute(sql.SQL("delete from costwarden.{}").format(sql.Identifier(table)))
        _copy(src, dst, table, "true", ())
    for seq in _sequences(src):
        if seq.table in CATALOGUE_TABLES:
            largest = seq.largest(src)  # the copied rows included
            if largest > 0:
                dst.execute("select setval(%s, %s)", (f"costwarden.{seq.name}", largest))
    dst.execute("set local session_replication_role = origin")


@contextmanager
def _connect_all(dsns: Sequence[str]) -> Iterator[list[Conn]]:
    with ExitStack() as stack:
        yield [stack.enter_context(psycopg.connect(d)) for d in dsns]


def split(
    proxy_dsn: str,
    config: ClusterConfig,
    new_partitions: Sequence[str],
    *,
    progress: Say | None = None,
    lock_timeout: str = "10s",
) -> tuple[ClusterConfig, SplitReport]:
    """Grow from N to 2N partitions (docs/scale-out.md, "Splitting").

    ``new_partitions`` are the DSNs of partitions N..2N-1 (databases that exist; they
    are migrated here). Partition k's orgs whose hash has bit N set move to k + N.
    Returns the new configuration (write it to CLUSTER.toml) and what moved.
    """
    say = progress or (lambda _m: None)
    n = len(config.partitions)
    if len(new_partitions) != n:
        raise ClusterError(
            f"a split of {n} partitions needs {n} new ones, not {len(new_partitions)}"
        )
    _check_power_of_two(2 * n, "split")
    current = proxy_config(proxy_dsn)
    if current != (config.name, n):
        raise ClusterError(
            f"the proxy routes over {current[1]} partitions of {current[0]!r}, "
            f"the cluster file says {n} of {config.name!r}"
        )
    grown = ClusterConfig(config.name, (*config.partitions, *new_partitions), config.router_user)
    rpcs = catalogue(config.partitions[0])
    for j, dsn in enumerate(new_partitions, start=n):
        migrations.migrate(dsn, schedule=True)
        install_partition(dsn, j, grown, rpcs)
    moved: dict[str, tuple[int, int]] = {}
    copied = 0
    with _connect_all(config.partitions) as olds, _connect_all(new_partitions) as news:
        # 1. every new partition starts with its source's catalogue
        for k in range(n):
            with news[k].transaction(), olds[k].transaction():
                olds[k].execute("set local transaction isolation level repeatable read")
                _copy_catalogue(olds[k], news[k])
        # 2. lock the moving orgs on every old partition (held until step 5)
        digests: list[dict[str, tuple[int, str]]] = []
        for k, old in enumerate(olds):
            old.execute(sql.SQL("set lock_timeout = {}").format(sql.Literal(lock_timeout)))
            orgs = [
                str(r[0])
                for r in old.execute(
                    "select org_id from costwarden._orgs "
                    "where (hashtext(org_id) & %s) = %s order by org_id for update",
                    (2 * n - 1, k + n),
                ).fetchall()
            ]
            by_org, by_pool = _org_tables(old)
            for table in by_org:
                if table == "_orgs":
                    continue
                old.execute(
                    sql.SQL("select from costwarden.{} where org_id = any(%s) for update").format(
                        sql.Identifier(table)
                    ),
                    (orgs,),
                )
            for table in by_pool:
                old.execute(
                    sql.SQL(
                        "select from costwarden.{} where pool_id in (select pool_id from "
                        "costwarden._pools where org_id = any(%s)) for update"
                    ).format(sql.Identifier(table)),
                    (orgs,),
                )
            digest = {
                str(o): (int(s), str(h))
                for o, s, h, _ in old.execute(
                    "select d.* from unnest(%s::text[]) as o, "
                    "lateral costwarden.fn_ledger_digest(o) as d",
                    (orgs,),
                ).fetchall()
            }
            digests.append(digest)
            # 3. copy their rows, with their chains, and verify them on the new partition
            new = news[k]
            new.execute("set local session_replication_role = replica")
            for table in by_org:
                copied += _copy(old, new, table, "org_id = any(%s)", (orgs,))
            for table in by_pool:
                copied += _copy(
                    old,
                    new,
                    table,
                    "pool_id in (select pool_id from costwarden._pools where org_id = any(%s))",
                    (orgs,),
                )
            new.execute("set local session_replication_role = origin")
            for org in orgs:
                ok = new.execute(
                    "select ok, detail from costwarden.fn_ledger_verify(%s)", (org,)
                ).fetchone()
                got = new.execute(
                    "select seq, entry_hash from costwarden.fn_ledger_digest(%s)", (org,)
                ).fetchone()
                if (
                    ok is None
                    or not ok[0]
                    or got is None
                    or (int(got[0]), str(got[1])) != digest[org]
                ):
                    raise ClusterError(
                        f"org {org!r}: its chain does not verify on partition {k + n} "
                        f"against the digest taken on partition {k}: nothing moved"
                    )
                moved[org] = (k, k + n)
            _stride_sequences(new, k + n)
            new.commit()
            say(f"partition {k}: {len(orgs)} org(s) copied to partition {k + n} and verified")
        # 4. switch the cluster configuration: the moving orgs now route to k + N
        with psycopg.connect(proxy_dsn, autocommit=True) as proxy, proxy.transaction():
            configure_server(proxy, grown)
            proxy.execute("update costwarden_remote.proxy_meta set partitions = %s", (2 * n,))
        say(f"proxy: {2 * n} partitions")
        # 5. remove the moved orgs from their old partitions, then release the locks
        for k, old in enumerate(olds):
            for org, (src, dst) in moved.items():
                if src != k:
                    continue
                seq, last_hash = digests[k][org]
                old.execute(
                    "select costwarden_px.org_evict(%s, %s, %s, %s, %s, %s)",
                    (org, k, 2 * n, dst, seq, last_hash),
                )
            old.commit()
    return grown, SplitReport(n, 2 * n, moved, copied)


def write_config(path: Path, config: ClusterConfig) -> None:
    """Write CLUSTER.toml for ``config``."""

    def q(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "[cluster]",
        f"name = {q(config.name)}",
        f"router_user = {q(config.router_user)}",
        "partitions = [",
        *(f"    {q(p)}," for p in config.partitions),
        "]",
        "",
    ]
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def routing_table_markdown() -> str:
    """ROUTES as the Markdown table of docs/scale-out.md (a test keeps them equal)."""
    lines = ["| RPC | runs on | merge | serialised | why |", "|---|---|---|---|---|"]
    for name, r in sorted(ROUTES.items()):
        merge = r.merge if r.merge and "\n" not in r.merge else ("custom" if r.merge else "")
        lines.append(f"| `{name}` | {r.run} | {merge} | {'yes' if r.serial else ''} | {r.why} |")
    return "\n".join(lines)
