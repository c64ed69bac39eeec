"""`costwarden bench http` (and the last figures of `costwarden bench`): the saga
through `costwarden serve` beside the same saga through SQL, in the same run.

Both sides run reserve + commit pairs for the same orgs from one asyncio process: SQL
through :class:`costwarden.AsyncClient` (a pool of ``clients`` connections), HTTP
through aiohttp over keep-alive connections to a `costwarden serve` process started here
on 127.0.0.1, with the same number of concurrent clients. Goals (docs/performance.md):
HTTP pairs/s at least half of SQL's at 8 clients, and no more than 2 ms added per pair
at 1 client. The driver shares the machine with both servers: say so with the figures."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from ..aio import AsyncClient
from .common import Echo, recreate_database
from .saga import COMMIT_USAGE, USAGE, Figure, setup_costwarden

SECRET = "costwarden-bench-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive(
    clients: int, seconds: float, pair: Callable[[int, int], Awaitable[None]]
) -> tuple[int, float]:
    """Run ``pair(client, n)`` in ``clients`` concurrent loops for ``seconds``: (pairs, s)."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    async def loop(i: int) -> None:
        while time.perf_counter() < stop:
            await pair(i, counts[i])
            counts[i] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(clients)))
    return sum(counts), time.perf_counter() - t0


async def sql_pairs(dsn: str, clients: int, seconds: float, orgs: int) -> tuple[int, float]:
    async with AsyncClient(dsn, pool_size=clients, on_unavailable="closed") as c:

        async def pair(i: int, n: int) -> None:
            r = await c.reserve(f"org{1 + (i * 7919 + n) % orgs}", "ws", "bench/model", USAGE)
            await c.commit(r.reservation_id, COMMIT_USAGE)

        await _drive(clients, 1.0, pair)  # warm up
        return await _drive(clients, seconds, pair)


async def http_pairs(url: str, clients: int, seconds: float, orgs: int) -> tuple[int, float]:
    """The pairs through HTTP: aiohttp (its C HTTP parser) over ``clients`` keep-alive
    connections, so that the driver's own CPU, on the same cores, weighs less in the
    figure than a pure-Python client's would (docs/performance.md#http)."""
    import aiohttp
    import jwt

    now = int(time.time())
    bearer = jwt.encode(
        {"role": "costwarden_service", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256"
    )
    async with aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(limit=clients),
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as http:

        async def pair(i: int, n: int) -> None:
            org = f"org{1 + (i * 7919 + n) % orgs}"
            body = {"org_id": org, "workspace_id": "ws", "model": "bench/model", "usage": USAGE}
            async with http.post("/v1/reservations", json=body) as r:
                if r.status != 201:
                    raise RuntimeError(f"reserve: {r.status} {await r.text()}")
                rid = (await r.json())["reservation_id"]
            async with http.post(
                f"/v1/reservations/{rid}/commit", json={"usage": COMMIT_USAGE}
            ) as c:
                if c.status != 200:
                    raise RuntimeError(f"commit: {c.status} {await c.text()}")
                await c.read()

        await _drive(clients, 1.0, pair)  # warm up
        return await _drive(clients, seconds, pair)


class ServeProcess:
    """A real `costwarden serve` on 127.0.0.1 verifying HS256 tokens signed with
    ``secret`` (stopped by :meth:`stop`); used by the bench and by the HTTP tests."""

    def __init__(
        self, dsn: str, *, secret: str = SECRET, env: Mapping[str, str] | None = None
    ) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("costwarden")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "costwarden.cli"]
        full_env = {**os.environ, "COSTWARDEN_JWT_SECRET": secret, **(env or {})}
        full_env.pop("COSTWARDEN_JWKS", None)
        self.proc = subprocess.Popen(
            [*command, "--dsn", dsn, "serve", "--port", str(self.port), "--log-level", "warning"],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"costwarden serve exited: {out}")
            try:
                # 503: listening, with the database down or its schema behind
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code in (200, 503):
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("costwarden serve did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_http_bench(
    admin_dsn: str,
    *,
    seconds: int = 10,
    clients: int = 8,
    orgs: int = 100,
    echo: Echo = print,
) -> list[Figure]:
    echo(f"preparing costwarden_bench_http ({orgs} orgs) ...")
    dsn = recreate_database(admin_dsn, "cw_bench_http")
    setup_costwarden(dsn, orgs)
    figures: list[Figure] = []
    serve = ServeProcess(dsn)
    try:
        results: dict[tuple[str, int], float] = {}
        for n in (clients, 1):
            for side, run in (("sql", sql_pairs), ("http", None)):
                echo(f"saga through {side.upper()}, {n} client(s), {seconds} s ...")
                if run is not None:
                    pairs, elapsed = asyncio.run(run(dsn, n, seconds, orgs))
                else:
                    pairs, elapsed = asyncio.run(http_pairs(serve.url, n, seconds, orgs))
                results[(side, n)] = pairs / elapsed
                echo(f"  {pairs / elapsed:,.1f} pairs/s ({1000 * elapsed / pairs * n:.3f} ms/pair)")
    finally:
        serve.stop()
    http_rate, sql_rate = results[("http", clients)], results[("sql", clients)]
    figures.append(
        Figure(
            f"HTTP saga pairs/s, {clients} clients",
            http_rate,
            "pairs/s",
            f"SQL saga (AsyncClient), {clients} clients",
            sql_rate,
            http_rate / sql_rate,
            ">= 0.5",
            http_rate / sql_rate >= 0.5,
        )
    )
    http_ms, sql_ms = 1000 / results[("http", 1)], 1000 / results[("sql", 1)]
    added = http_ms - sql_ms
    figures.append(
        Figure(
            "HTTP ms added per pair, 1 client",
            added,
            "ms",
            "SQL saga ms/pair, 1 client",
            sql_ms,
            http_ms / sql_ms,
            "<= 2 ms added",
            added <= 2.0,
        )
    )
    for fig in figures:
        echo(
            f"  -> {fig.name}: {fig.value:,.3f} {fig.unit} | "
            f"{fig.baseline_name}: {fig.baseline:,.3f}"
        )
    return figures
