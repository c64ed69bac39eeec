"""`costwarden migrate --proxy`, `status --proxy` and `costwarden cluster split|check`:
scale-out on PL/Proxy (SPEC §15, docs/scale-out.md)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import cluster as cl
from ._common import EXIT_ERROR, Context, echo_json, json_option, pass_ctx, safe_dsn, table


def proxy_migrate(ctx: Context, path: Path, *, schedule: bool, as_json: bool) -> None:
    """Migrate every partition of CLUSTER.toml and install the proxy layer at --dsn."""
    config = cl.load_config(path)
    rpcs = cl.install(
        ctx.dsn(), config, schedule=schedule, progress=None if as_json else click.echo
    )
    if as_json:
        echo_json(
            {
                "proxy": safe_dsn(ctx.dsn()),
                "cluster": config.name,
                "partitions": len(config.partitions),
                "rpcs": [r.name for r in rpcs],
            }
        )


def proxy_status(ctx: Context, path: Path, *, as_json: bool) -> None:
    """Each partition's schema version and pg_cron jobs; exits 1 when one is down,
    not up to date, or its catalogue differs from partition 0's."""
    config = cl.load_config(path)
    name, routed = cl.proxy_config(ctx.dsn())
    parts = cl.status(config)
    digests = {p.catalogue for p in parts if p.reachable}
    healthy = (
        all(p.reachable and p.up_to_date for p in parts)
        and len(digests) == 1
        and routed == len(config.partitions)
    )
    if as_json:
        echo_json(
            {
                "proxy": safe_dsn(ctx.dsn()),
                "cluster": name,
                "routed_partitions": routed,
                "catalogue_identical": len(digests) == 1,
                "healthy": healthy,
                "partitions": [
                    {
                        "partition": p.index,
                        "database": p.dsn,
                        "reachable": p.reachable,
                        "error": p.error,
                        "version": p.version,
                        "up_to_date": p.up_to_date,
                        "orgs": p.orgs,
                        "catalogue": p.catalogue,
                        "cron_available": p.cron_available,
                        "jobs": [{"name": j, "schedule": s, "database": d} for j, s, d in p.jobs],
                    }
                    for p in parts
                ],
            }
        )
    else:
        click.echo(f"proxy: {safe_dsn(ctx.dsn())}")
        click.echo(f"cluster {name}: the proxy routes over {routed} partitions")
        rows = [
            [
                str(p.index),
                p.dsn,
                "up" if p.reachable else f"DOWN: {p.error}",
                "-" if p.version is None else str(p.version),
                "yes" if p.up_to_date else "no",
                "-" if p.orgs is None else str(p.orgs),
                ", ".join(j for j, _, _ in p.jobs)
                or ("none scheduled" if p.cron_available else "no pg_cron: run `worker`"),
            ]
            for p in parts
        ]
        click.echo(
            table(rows, ["partition", "database", "state", "schema", "up to date", "orgs", "jobs"])
        )
        click.echo(
            "catalogue: identical on every partition"
            if len(digests) == 1
            else "catalogue: DIFFERS between partitions (run the last catalogue write again)"
        )
    if not healthy:
        click.get_current_context().exit(EXIT_ERROR)


@click.group()
def cluster() -> None:
    """A PL/Proxy cluster: grow it, check it (docs/scale-out.md)."""


@cluster.command()
@click.argument("cluster_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--new-partition",
    "new_partitions",
    multiple=True,
    required=True,
    help="DSN of partition N, N+1, ... (as many as there are now; repeatable).",
)
@json_option
@pass_ctx
def split(ctx: Context, cluster_file: Path, new_partitions: tuple[str, ...], as_json: bool) -> None:
    """Grow from N to 2N partitions: each partition k gives the orgs whose hash has
    bit N set to partition k+N. --dsn is the proxy database; CLUSTER_FILE is
    rewritten with the new partitions."""
    config = cl.load_config(cluster_file)
    grown, report = cl.split(
        ctx.dsn(), config, list(new_partitions), progress=None if as_json else click.echo
    )
    cl.write_config(cluster_file, grown)
    if as_json:
        echo_json(
            {
                "partitions_before": report.partitions_before,
                "partitions_after": report.partitions_after,
                "moved": {o: {"from": a, "to": b} for o, (a, b) in sorted(report.moved.items())},
                "rows": report.rows,
            }
        )
    else:
        click.echo(
            f"split: {report.partitions_before} -> {report.partitions_after} partitions, "
            f"{len(report.moved)} org(s) moved, {report.rows} rows copied; "
            f"{cluster_file} updated"
        )
