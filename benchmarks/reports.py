"""Review report over 1,000,000 alerts: how long `review_report` takes.

    python benchmarks/reports.py [--alerts 1000000]

Starts its own PostgreSQL (temp dir), seeds the demo directory, writes `--alerts` alerts
with SQL (`generate_series`: two or three deliveries each, acknowledged, decided, closed,
late and escalated in realistic shares) spread over 122 days between the parties of the
Long Xuyên – Cần Thơ agreement, one of them merged into another, then times the report for
the agreement over the last 61 days (the previous 61 days beside it: every alert is read).
Best of three, on a pool of two connections (as the notifier and the CLI call it: the two
periods at once) and on one connection. Target (issue 14): under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import asyncpg
from rich.console import Console

from giapranh.demo import seed_directory
from giapranh.embedded import EmbeddedDatabase
from services.notifier.reports import resolve_scope, review_report
from shared.db import apply_schema
from shared.directory import merge_unit

console = Console(stderr=True)
TARGET_SECONDS = 2.0
PARTIES = ["CA-30307", "CA-30301", "CA-30682", "CA-31212", "CA-31237", "CA-31207"]
START = datetime.fromisoformat("2026-07-02T00:00:00+07:00")


async def fill(conn: asyncpg.Connection, alerts: int) -> None:
    chunk = 100_000
    with console.status("") as status:
        for first in range(0, alerts, chunk):
            status.update(f"writing alerts {first:,} - {min(alerts, first + chunk):,} "
                          f"of {alerts:,}")
            await conn.execute(
                """INSERT INTO alerts (alert_id, hit_id, entry_id, entry_version, category,
                                       owner_unit, seen_unit, source_event_id, correlation_id,
                                       seen_at, score, late, hit, status, raised_at,
                                       updated_at, kind, decision, decided_at, outcome,
                                       escalation_level)
                   SELECT gen_random_uuid(), gen_random_uuid(), 'E-' || (n % 5000), 1,
                          (ARRAY['wanted_person', 'stolen_vehicle', 'missing_person',
                                 'managed_person'])[1 + n % 4],
                          ($3::text[])[1 + (n / 7) % 6], ($3::text[])[1 + n % 6], gen_random_uuid(),
                          gen_random_uuid(), t, 0.9, n % 50 = 0, '{}'::jsonb,
                          CASE WHEN n % 3 = 0 THEN 'closed' ELSE 'raised' END, t, t,
                          CASE WHEN n % 20 = 0 THEN 'incident' ELSE 'hit' END,
                          CASE WHEN n % 3 = 0 THEN 'confirmed'
                               WHEN n % 3 = 1 THEN 'rejected' END,
                          CASE WHEN n % 3 < 2 THEN t + (n % 3600) * interval '1 second' END,
                          CASE WHEN n % 3 = 0 THEN 'detained' END,
                          CASE WHEN n % 40 = 0 THEN 1 ELSE 0 END
                     FROM (SELECT n, $4::timestamptz + (n * 122.0 / $2) * interval '1 day' AS t
                             FROM generate_series($1::bigint, $1 + $5 - 1) AS n) AS g""",
                first, alerts, PARTIES, START, min(chunk, alerts - first))
        status.update("writing deliveries")
        await conn.execute(
            """INSERT INTO deliveries (alert_id, unit_code, reasons, delivered_at,
                                       acknowledged_at)
               SELECT a.alert_id, r.unit, '{}', a.raised_at,
                      CASE WHEN a.score > 0 AND random() < 0.8
                           THEN a.raised_at + random() * interval '10 minutes' END
                 FROM alerts a
                 CROSS JOIN LATERAL (SELECT a.owner_unit AS unit
                                     UNION SELECT a.seen_unit
                                     UNION SELECT ($1::text[])[1 + abs(hashtext(a.entry_id)) % 6]) r""",
            PARTIES)
        # As a database in use is: vacuumed (hint bits and visibility set), not with
        # autovacuum still working through a freshly written table during the timing.
        status.update("VACUUM ANALYZE")
        await conn.execute("VACUUM ANALYZE alerts, deliveries")


async def benchmark(dsn: str, alerts: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await apply_schema(conn)
        await seed_directory(conn)
        await merge_unit(conn, "CA-31207", "CA-31212")
        started = time.perf_counter()
        await fill(conn, alerts)
        console.print(f"wrote {alerts:,} alerts in {time.perf_counter() - started:.0f} s")
        deliveries = await conn.fetchval("SELECT count(*) FROM deliveries")
        agreement = await conn.fetchval(
            "SELECT id FROM agreements WHERE title LIKE 'Quy chế phối hợp địa bàn giáp ranh%'")
        scope = await resolve_scope(conn, agreement=agreement, pair=None, unit=None)
        # As the notifier and the CLI call it: with a pool (the two periods at once), and
        # on one connection (one after the other).
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
        times: dict[str, list[float]] = {"pool": [], "connection": []}
        try:
            for _ in range(3):
                for how, db in (("pool", pool), ("connection", conn)):
                    started = time.perf_counter()
                    report = await review_report(db, scope, date(2026, 9, 1),
                                                 date(2026, 10, 31),
                                                 now=datetime.now(START.tzinfo))
                    times[how].append(time.perf_counter() - started)
        finally:
            await pool.close()
    finally:
        await conn.close()
    best = min(times["pool"])
    counted = report.totals.alerts + report.previous_totals.alerts
    for how, what in (("pool", "two connections (notifier, CLI)"),
                      ("connection", "one connection")):
        print(f"review report   : agreement of {len(scope.units)} units (one merged), 61 days "
              f"and the 61 before, {what}: {min(times[how]):.2f} s (best of 3: "
              f"{', '.join(f'{t:.2f}' for t in times[how])})")
    print(f"data            : {alerts:,} alerts, {deliveries:,} deliveries; the report counted "
          f"{counted:,} alert deliveries between parties in {len(report.directions)} "
          f"directions")
    print(f"target          : < {TARGET_SECONDS:.0f} s -> ratio {best / TARGET_SECONDS:.2f} "
          f"({'met' if best < TARGET_SECONDS else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        console.print("starting PostgreSQL ...")
        with EmbeddedDatabase(Path(tmp_dir) / "pgdata", ephemeral=True) as db:
            dsn = asyncio.run(db.create_database("bench"))
            asyncio.run(benchmark(dsn, args.alerts))


if __name__ == "__main__":
    main()
