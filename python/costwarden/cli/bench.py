"""`costwarden bench` (the saga's figures) and `costwarden bench ledger` (the ledger's).

The harness (costwarden.bench) is imported only when a bench runs."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import click

from ._common import Context, echo_json, json_option, pass_ctx

#: The dedicated embedded server of the benches when no --dsn is given.
BENCH_DATA_DIR = Path(".costwarden/bench-pg/pgdata")


def _progress(line: str) -> None:
    """A bench's progress line: on stderr, so that stdout holds the report alone."""
    click.echo(line, err=True)


def _server(ctx: Context) -> tuple[str, Path | None]:
    """(admin DSN, PostgreSQL bin directory or None) of the server to bench on."""
    if ctx.has_dsn():
        return ctx.dsn(), None
    from ..embedded import EmbeddedCluster

    cluster = EmbeddedCluster(BENCH_DATA_DIR.resolve())
    return cluster.start(), cluster.bindir


@click.group(invoke_without_command=True)
@click.option("--seconds", type=click.IntRange(1), default=5, help="Duration of each pgbench run.")
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=3,
    help="Rounds of baseline then workloads per figure (the median ratio is reported).",
)
@click.option("--orgs", type=click.IntRange(1), default=1000)
@click.option(
    "--ledger-rows", type=click.IntRange(0), default=10_000_000, help="Ledger size for figure 4."
)
@click.option(
    "--batch", type=click.IntRange(1, 1000), default=16, help="Calls per batch RPC (batch figure)."
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path(".costwarden/bench-results.json")
)
@json_option
@click.pass_context
def bench(
    click_ctx: click.Context,
    seconds: int,
    rounds: int,
    orgs: int,
    ledger_rows: int,
    batch: int,
    out: Path,
    as_json: bool,
) -> None:
    """pgbench workloads, each beside a baseline measured in the same run.

    Without --dsn a dedicated embedded server is used (.costwarden/bench-pg).
    `costwarden bench ledger` measures the ledger instead."""
    if click_ctx.invoked_subcommand is not None:
        return
    from ..bench.saga import report, run_bench, save

    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    dsn, bindir = _server(ctx)
    echo = _progress if as_json else click.echo
    figures = run_bench(
        dsn,
        bindir=bindir,
        seconds=seconds,
        rounds=rounds,
        orgs=orgs,
        ledger_rows=ledger_rows,
        batch=batch,
        echo=echo,
    )
    if _has_server_extra():  # the saga through `costwarden serve`, beside SQL (bench/http.py)
        from ..bench.http import run_http_bench

        figures += run_http_bench(dsn, seconds=min(seconds * rounds, 10), echo=echo)
    meta = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "seconds": seconds,
        "rounds": rounds,
        "orgs": orgs,
        "ledger_rows": ledger_rows,
        "batch": batch,
        "load_average": _load_average(),
    }
    save(figures, out, meta)
    if as_json:
        echo_json({"meta": meta, "figures": figures})
        return
    click.echo("")
    click.echo(report(figures))
    click.echo(f"\nsaved {out}")


def _load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (the figures' noise)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


@bench.command("soak")
@click.option("--minutes", type=click.FloatRange(0.1), default=10.0, help="Length of the run.")
@click.option("--clients", type=click.IntRange(1), default=8, help="pgbench clients.")
@click.option("--orgs", type=click.IntRange(1), default=1000)
@click.option("--interval", type=click.FloatRange(1), default=10.0, help="Seconds between samples.")
@json_option
@pass_ctx
def bench_soak(
    ctx: Context, minutes: float, clients: int, orgs: int, interval: float, as_json: bool
) -> None:
    """Memory under a long saga run: each backend's VmRSS and RssAnon, sampled from
    /proc while pgbench runs reserve + commit pairs (the server must be local)."""
    from ..bench.soak import report, run_soak

    dsn, bindir = _server(ctx)
    load_before = _load_average()
    memory, tps = run_soak(
        dsn,
        bindir=bindir,
        minutes=minutes,
        clients=clients,
        orgs=orgs,
        interval=interval,
        echo=_progress,
    )
    result = {
        "minutes": minutes,
        "clients": clients,
        "pairs_per_s": tps,
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "backends": memory,
    }
    if as_json:
        echo_json(result)
        return
    click.echo(report(memory))
    growth = sorted(m.last_anon_kb - m.first_anon_kb for m in memory)
    if growth:
        median = growth[len(growth) // 2]
        click.echo(
            f"{tps:,.1f} pairs/s; RssAnon growth per backend: median {median:+,} kB,"
            f" max {growth[-1]:+,} kB over {minutes:g} min"
        )


def _has_server_extra() -> bool:
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("fastapi", "uvicorn", "httpx", "aiohttp", "jwt"))


@bench.command("http")
@click.option("--seconds", type=click.IntRange(1), default=10, help="Duration of each side.")
@click.option("--clients", type=click.IntRange(1), default=8, help="Concurrent clients.")
@click.option("--orgs", type=click.IntRange(1), default=100)
@json_option
@pass_ctx
def bench_http(ctx: Context, seconds: int, clients: int, orgs: int, as_json: bool) -> None:
    """The saga through `costwarden serve` (HTTP, keep-alive) beside the same saga
    through SQL in the same run: pairs/s at --clients, ms added per pair at 1 client."""
    from ..bench.http import run_http_bench
    from ..bench.saga import report

    dsn, _bindir = _server(ctx)
    figures = run_http_bench(
        dsn,
        seconds=seconds,
        clients=clients,
        orgs=orgs,
        echo=_progress,
    )
    if as_json:
        echo_json({"figures": figures})
    else:
        click.echo(report(figures))


@bench.command("ledger")
@click.option("--entries", type=click.IntRange(1), default=1_000_000, help="Chain length (3).")
@click.option("--commits", type=click.IntRange(1), default=2000, help="Commits timed (1).")
@click.option("--clients", type=click.IntRange(1), default=8, help="pgbench clients (2).")
@click.option("--seconds", type=click.IntRange(1), default=10, help="pgbench seconds (2).")
@click.option("--orgs", type=click.IntRange(1), default=1000, help="Orgs appends spread over.")
@click.option("--keep", is_flag=True, help="Keep the scratch database costwarden_ledger_bench.")
@json_option
@pass_ctx
def bench_ledger(
    ctx: Context,
    entries: int,
    commits: int,
    clients: int,
    seconds: int,
    orgs: int,
    keep: bool,
    as_json: bool,
) -> None:
    """The ledger's costs: commit latency with and without the chain, append
    throughput, verification speed (Markdown tables, as in docs/ledger.md).

    Runs in a scratch database; the server's role must be allowed to CREATE DATABASE."""
    from ..bench.ledger import markdown, run_ledger_bench

    dsn, bindir = _server(ctx)
    result = run_ledger_bench(
        dsn,
        bindir=bindir,
        entries=entries,
        commits=commits,
        clients=clients,
        seconds=seconds,
        orgs=orgs,
        keep=keep,
        echo=_progress,
    )
    if as_json:
        echo_json(result)
    else:
        click.echo(markdown(result))


@bench.command("proxy")
@click.option("--seconds", type=click.IntRange(1), default=10, help="Duration of each run.")
@click.option("--orgs", type=click.IntRange(1), default=200)
@json_option
def bench_proxy(seconds: int, orgs: int, as_json: bool) -> None:
    """The PL/Proxy hop: latency per saga pair at 1 client and pairs/s at 8 clients,
    through a proxy over two local servers beside one node direct (docs/scale-out.md).

    On a 2-core machine this measures the proxy's overhead, not a speed-up."""
    from ..bench.proxy import markdown, run_proxy_bench

    figures = run_proxy_bench(seconds=seconds, orgs=orgs, echo=_progress)
    if as_json:
        echo_json(figures)
    else:
        click.echo(markdown(figures))


@bench.command("spend")
@click.option("--workspaces", type=click.IntRange(1), default=1000)
@click.option("--small", type=click.IntRange(1), default=10_000, help="Ledger entries, small.")
@click.option("--large", type=click.IntRange(1), default=10_000_000, help="Ledger entries, large.")
@click.option("--calls", type=click.IntRange(1), default=10_000, help="Reservations in the window.")
@click.option("--repeat", type=click.IntRange(1), default=50, help="Timed calls per query.")
@click.option("--keep", is_flag=True, help="Keep the scratch databases.")
@json_option
@pass_ctx
def bench_spend(
    ctx: Context,
    workspaces: int,
    small: int,
    large: int,
    calls: int,
    repeat: int,
    keep: bool,
    as_json: bool,
) -> None:
    """fn_spend_summary with 1,000 workspaces: the same answer time with a small and a
    large ledger (median ms and the ratio). Scratch databases; needs CREATE DATABASE."""
    from ..bench.spend import run_spend_bench

    dsn, _bindir = _server(ctx)
    result = run_spend_bench(
        dsn,
        workspaces=workspaces,
        small=small,
        large=large,
        calls=calls,
        repeat=repeat,
        keep=keep,
        echo=_progress,
    )
    if as_json:
        echo_json(result)
    else:
        click.echo(result.markdown())


@bench.command("adapters")
@click.option("--calls", type=click.IntRange(1), default=1000, help="Timed calls per side.")
@click.option("--warmup", type=click.IntRange(0), default=100, help="Untimed calls first.")
@click.option("--keep", is_flag=True, help="Keep the scratch database.")
@json_option
@pass_ctx
def bench_adapters(ctx: Context, calls: int, warmup: int, keep: bool, as_json: bool) -> None:
    """The OpenAI adapter's overhead per non-streaming call (reserve + commit + mapping)
    beside the bare SDK call, same run, 1 client, against a local fake OpenAI API
    (docs/integrations.md). Needs the openai extra; a scratch database."""
    from ..bench.adapters import run_adapters_bench

    dsn, _bindir = _server(ctx)
    figures = run_adapters_bench(dsn, calls=calls, warmup=warmup, keep=keep, echo=_progress)
    if as_json:
        echo_json(
            {
                "bare": figures.bare,
                "guarded": figures.guarded,
                "added_median_ms": figures.added_median_ms,
                "added_p90_ms": figures.added_p90_ms,
                "added_per_iteration": figures.added,
                "adapter_beyond_pair": figures.own,
                "adapter_alone_ms": figures.adapter_alone_ms,
                "parts": figures.parts,
                "load_before": figures.load_before,
                "load_after": figures.load_after,
                "server": figures.server,
                "sdk": figures.sdk,
            }
        )
    else:
        click.echo(figures.markdown())
