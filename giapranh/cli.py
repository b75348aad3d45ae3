"""The `giapranh` command: run the system locally and administer a deployment."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from giapranh.admin import (
    adjacency_app,
    agreements_app,
    audit_app,
    keys_app,
    units_app,
    webhooks_app,
)
from giapranh.topics import topics_app

app = typer.Typer(help="giapranh: real-time alert sharing between neighbouring police units.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(units_app, name="units")
app.add_typer(keys_app, name="keys")
app.add_typer(adjacency_app, name="adjacency")
app.add_typer(agreements_app, name="agreements")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")
app.add_typer(topics_app, name="topics")


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option(help="Where the embedded stack keeps its data.",
                                           envvar="GIAPRANH_DEV_DATA_DIR")] = Path(".giapranh"),
    host: Annotated[str, typer.Option(help="Address every service binds to.")] = "127.0.0.1",
    ingest_port: Annotated[int, typer.Option(envvar="GIAPRANH_DEV_INGEST_PORT")] = 8000,
    notifier_port: Annotated[int, typer.Option(envvar="GIAPRANH_DEV_NOTIFIER_PORT")] = 8001,
    matcher_port: Annotated[int, typer.Option(envvar="GIAPRANH_DEV_MATCHER_PORT")] = 8002,
    broker_port: Annotated[int, typer.Option(envvar="GIAPRANH_DEV_BROKER_PORT")] = 9092,
    log_level: Annotated[str, typer.Option(help="Log level of the services.")] = "INFO",
    demo: Annotated[bool, typer.Option(help="Seed the demo units, agreements and entries.")] = True,
) -> None:
    """Start the whole system on the embedded stack (Tansu + PostgreSQL) with demo data."""
    from giapranh.dev import DevOptions, DevStack

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = DevOptions(data_dir=data_dir, host=host, ingest_port=ingest_port,
                         notifier_port=notifier_port, matcher_port=matcher_port,
                         broker_port=broker_port, log_level=log_level.upper(), demo=demo)
    raise typer.Exit(DevStack(options).run())


@app.command()
def bench(
    rate: Annotated[list[int], typer.Option(help="Sightings per second; repeat to ramp up.")] = [500],  # noqa: B006
    seconds: Annotated[float, typer.Option(help="How long each rate runs.")] = 10.0,
    max_p99_ms: Annotated[float, typer.Option(help="Slowest p99 that counts as sustained.")] = 1000,
    hit_ratio: Annotated[float, typer.Option(
        min=0.001, max=1.0,
        help="Share of sightings that are of a listed subject (the rest match nothing).")] = 1.0,
    pursuits: Annotated[int, typer.Option(
        min=0, help="Pursuits to time: incident → neighbour's alert, and → its hot list "
        "matching a plate read (0: none).")] = 20,
    checks: Annotated[int, typer.Option(
        min=0, help="Checks (POST /v1/checks) to time, one at a time (0: none).")] = 200,
    data_dir: Annotated[Path, typer.Option(help="The running giapranh dev's data directory.",
                                           envvar="GIAPRANH_DEV_DATA_DIR")] = Path(".giapranh"),
    all_desks: Annotated[bool, typer.Option(
        help="Every demo unit's duty desk watches its live stream, as in a real province "
        "(each alert's other recipients too), not only the listing unit's.")] = False,
) -> None:
    """Sighting-to-alert latency and the highest sustained rate, the pursuit scenario and
    checks, against `giapranh dev`."""
    from giapranh.bench import bench as run

    raise typer.Exit(asyncio.run(run(data_dir, sorted(rate), seconds, max_p99_ms / 1000,
                                     hit_ratio, pursuits, checks, all_desks)))


@app.command()
def chaos(
    sightings: Annotated[int, typer.Option(help="Sightings to send.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Sightings per second.")] = 200.0,
    hit_ratio: Annotated[float, typer.Option(min=0.01, max=1.0,
                                             help="Share of sightings that must alert.")] = 0.5,
    short_broker_outage: Annotated[float, typer.Option(help="Seconds the broker is down the "
                                                       "first time.")] = 3.0,
    long_broker_outage: Annotated[float, typer.Option(help="Seconds the broker is down the "
                                                      "second time.")] = 20.0,
    settle_timeout: Annotated[float, typer.Option(help="Seconds to wait for every alert "
                                                  "after the last sighting.")] = 300.0,
    keep: Annotated[Path | None, typer.Option(help="Keep the stack's data and logs in this "
                                              "directory.")] = None,
) -> None:
    """Send sightings while killing each service and restarting the broker; count every
    expected alert (missing, duplicated) and the latency around each fault."""
    from rich.console import Console
    from rich.progress import Progress

    from giapranh.chaos import ChaosOptions, render, run

    options = ChaosOptions(sightings=sightings, rate=rate, hit_ratio=hit_ratio,
                           short_broker_outage=short_broker_outage,
                           long_broker_outage=long_broker_outage, settle_timeout=settle_timeout)
    console = Console()
    console.print(f"{sightings} sightings at {rate:g}/s; faults: "
                  + "; ".join(f"{f.name} at {f.at:.0f} s" for f in options.faults()))
    with Progress(console=console, transient=True) as progress:
        tasks: dict[str, object] = {}

        def show(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)  # type: ignore[arg-type]

        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(run(options, keep, show))
    console.print(render(report))
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def replay(
    since: Annotated[datetime, typer.Option(help="Replay events accepted from this time "
                                            "(ISO 8601; no offset: UTC).")],
    until: Annotated[datetime | None, typer.Option(help="... up to this time (default: "
                                                   "now).")] = None,
    topic: Annotated[list[str] | None, typer.Option(
        help="Only this topic (sightings, incidents, watchlist); repeat.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait, with a progress bar, until a running "
                                       "ingest has published them all.")] = True,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar="GIAPRANH_DATABASE_URL",
        help="PostgreSQL DSN (giapranh dev prints it).")] = None,
) -> None:
    """Publish again, from PostgreSQL, the events accepted in a period: what a broker lost
    reaches the matcher again; consumers drop what they had already seen."""
    import asyncpg
    from rich.progress import Progress

    from services.ingest.reconciler import replay as replay_events
    from services.ingest.reconciler import replay_pending
    from shared.settings import CommonSettings
    from shared.topics import INCIDENTS, SIGHTINGS, WATCHLIST

    settings = CommonSettings(**({"database_url": database_url} if database_url else {}))
    known = {spec.name: [t.__name__ for t in spec.value_types]
             for spec in (SIGHTINGS, INCIDENTS, WATCHLIST)}
    unknown = [name for name in topic or () if name not in known]
    if unknown:
        raise typer.BadParameter(f"unknown topic(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(known)}", param_hint="--topic")
    start, end = (_aware(since), _aware(until) if until else None)

    async def go() -> int:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            count = await replay_events(
                pool, start, end, [t for name in topic for t in known[name]] if topic else None)
            typer.echo(f"{count} event(s) queued for publishing again")
            if wait and count:
                with Progress(transient=True) as progress:
                    task = progress.add_task("published", total=count)
                    while True:
                        left = await replay_pending(pool, start, end)
                        progress.update(task, completed=count - left)
                        if left == 0:
                            break
                        await asyncio.sleep(0.5)
                typer.echo("all published (is an ingest running? it does the publishing)")
            return count
        finally:
            await pool.close()

    asyncio.run(go())


@app.command()
def purge(
    older_than_days: Annotated[float | None, typer.Option(
        min=0.0, help="Retention period (default: GIAPRANH_SIGHTING_RETENTION_DAYS, 90).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only count what would be purged.")] = False,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar="GIAPRANH_DATABASE_URL",
        help="PostgreSQL DSN (giapranh dev prints it).")] = None,
) -> None:
    """Remove the subject of every sighting that matched nothing and happened longer ago than
    the retention period (ingest does it hourly by itself); alerts and the audit log stay."""
    from datetime import timedelta

    import asyncpg
    from rich.progress import Progress

    from services.ingest.privacy import due
    from services.ingest.privacy import purge as purge_sightings
    from services.ingest.settings import IngestSettings

    settings = IngestSettings(**({"database_url": database_url} if database_url else {}))
    days = settings.sighting_retention_days if older_than_days is None else older_than_days
    before = datetime.now(UTC) - timedelta(days=days)

    async def go() -> None:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            count = await due(pool, before)
            if dry_run or not count:
                typer.echo(f"{count} unmatched sighting(s) older than {days:g} days"
                           + (" would be purged" if dry_run else ""))
                return
            with Progress(transient=True) as progress:
                task = progress.add_task("purging", total=count)
                done = await purge_sightings(
                    pool, before, progress=lambda n: progress.update(task, completed=n))
            typer.echo(f"purged {done} unmatched sighting(s) older than {days:g} days")
        finally:
            await pool.close()

    asyncio.run(go())


@app.command()
def post(
    upstream: Annotated[str | None, typer.Option(help="The ingest API, e.g. "
                                                 "https://ingest.example:8000.")] = None,
    key: Annotated[str | None, typer.Option(envvar="GIAPRANH_POST_KEY", help="The post's "
                                            "API key (kept in memory only).")] = None,
    data: Annotated[Path, typer.Option(help="Where the replica and the queue are kept.")] = Path(
        ".giapranh-post"),
    port: Annotated[int, typer.Option(help="Local API port (localhost).")] = 8010,
    sync_seconds: Annotated[float, typer.Option(help="Seconds between syncs.")] = 30.0,
    stale_minutes: Annotated[float, typer.Option(help="A list older than this is flagged "
                                                 "stale in every answer.")] = 60.0,
    wipe: Annotated[bool, typer.Option("--wipe", help="Delete the replica and the queue, "
                                       "then exit.")] = False,
) -> None:
    """A border post's node: a replica of the watchlist its unit may see, the matching
    engine, and a queue of its sightings, so checks and sightings are answered with the
    link down; sightings go upstream when it returns. Local API on localhost:
    POST /checks, POST /sightings, GET /status."""
    from datetime import timedelta

    import uvicorn

    from giapranh.post import PostNode, create_app
    from giapranh.post import wipe as wipe_replica
    from shared.http_protocol import http_protocol

    if wipe:
        removed = wipe_replica(data)
        typer.echo("removed " + (", ".join(map(str, removed)) if removed else "nothing"))
        return
    if not upstream or not key:
        raise typer.BadParameter("--upstream and --key (or GIAPRANH_POST_KEY) are needed",
                                 param_hint="--upstream/--key")
    node = PostNode(upstream, key, data, stale_after=timedelta(minutes=stale_minutes))
    if node.list_as_of is None or not node.replica.complete:
        _first_sync(node)
    typer.echo(f"border post: {len(node.engine)} entries in the replica (list of "
               f"{node.list_as_of or 'never synced'}); local API on http://127.0.0.1:{port}")
    uvicorn.run(create_app(node, sync_seconds), host="127.0.0.1", port=port,
                log_level="warning", http=http_protocol("post"))


def _first_sync(node: Any) -> None:
    """The first sync of a large list takes a while on a post's link: show it coming in.
    Upstream unreachable: say so and serve what the replica holds (it syncs later)."""
    import httpx
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("first sync: {task.completed:,} entries"),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("sync", total=None)
        try:
            asyncio.run(node.sync(progress=lambda n: bar.update(task, completed=n)))
        except httpx.HTTPError as exc:
            typer.echo(f"upstream unreachable ({exc!r}): serving the replica as it is, "
                       "syncing again later", err=True)


report_app = typer.Typer(help="Review reports (\"Báo cáo sơ kết\") from the system of record.",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("review")
def report_review(
    start: Annotated[datetime, typer.Option("--from", formats=["%Y-%m-%d"],
                                            help="First day (Vietnam time).")],
    end: Annotated[datetime, typer.Option("--to", formats=["%Y-%m-%d"],
                                          help="Last day, included.")],
    agreement: Annotated[int | None, typer.Option(help="An agreement's id "
                                                  "(`giapranh agreements list`).")] = None,
    pair: Annotated[str | None, typer.Option(help="Two unit codes: CA-30307,CA-31212.")] = None,
    unit: Annotated[str | None, typer.Option(help="One unit, with every unit it "
                                             "exchanged with.")] = None,
    lang: Annotated[str, typer.Option(help="vi or en.")] = "vi",
    pdf: Annotated[Path | None, typer.Option(help="Write the report as an A4 PDF here.")] = None,
    csv: Annotated[Path | None, typer.Option(help="Write its figures as CSV here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write it as JSON here.")] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar="GIAPRANH_DATABASE_URL",
        help="PostgreSQL DSN (giapranh dev prints it).")] = None,
) -> None:
    """A review report for an agreement, a pair of units or a unit over a period, with the
    previous period beside it; printed as a table, and written as PDF, CSV or JSON."""
    import asyncpg
    from rich.console import Console
    from rich.table import Table

    from services.notifier.report_pdf import render_pdf
    from services.notifier.reports import (
        label,
        resolve_scope,
        review_report,
        to_csv,
    )
    from shared.errors import GiapranhError
    from shared.settings import CommonSettings

    if lang not in ("vi", "en"):
        raise typer.BadParameter("vi or en", param_hint="--lang")
    settings = CommonSettings(**({"database_url": database_url} if database_url else {}))

    async def build():  # type: ignore[no-untyped-def]
        # Two connections: the report reads its two periods at once.
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            scope = await resolve_scope(pool, agreement=agreement, pair=pair, unit=unit)
            return await review_report(pool, scope, start.date(), end.date(),
                                       now=datetime.now(UTC))
        finally:
            await pool.close()

    try:
        report = asyncio.run(build())
    except GiapranhError as exc:
        typer.echo(f"error: {exc.message}" + (f" ({exc.field})" if exc.field else ""), err=True)
        raise typer.Exit(1) from None
    import sys

    console = Console() if sys.stdout.isatty() else Console(width=160)  # (files: no wrap)
    table = Table(title=f"{label('title', lang)}\n{report.title}")  # type: ignore[arg-type]
    table.add_column(label("direction", lang))  # type: ignore[arg-type]
    for name in ("alerts", "acknowledged", "confirmed", "rejected", "detained"):
        table.add_column(label(name, lang), justify="right")  # type: ignore[arg-type]
    for d in report.directions:
        table.add_row(f"{d.from_unit} → {d.to_unit}",
                      *(f"{getattr(d.current, n)} ({getattr(d.previous, n)})"
                        for n in ("alerts", "acknowledged", "confirmed", "rejected", "detained")))
    console.print(table)
    console.print(f"({label('previous', lang)}: {report.previous_period.start} – "  # type: ignore[arg-type]
                  f"{report.previous_period.end})")
    if pdf:
        pdf.write_bytes(render_pdf(report, lang))  # type: ignore[arg-type]
        typer.echo(f"wrote {pdf}")
    if csv:
        csv.write_text(to_csv(report))
        typer.echo(f"wrote {csv}")
    if json_out:
        json_out.write_text(report.model_dump_json(indent=2))
        typer.echo(f"wrote {json_out}")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@app.command()
def migrate() -> None:
    """Apply pending schema migrations to GIAPRANH_DATABASE_URL."""
    import asyncpg

    from shared.db import apply_schema
    from shared.settings import CommonSettings

    settings = CommonSettings()

    async def run() -> list[str]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await apply_schema(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    typer.echo(f"applied migrations: {', '.join(applied)}" if applied else "schema is up to date")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
