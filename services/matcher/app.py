"""Wiring of the stream matcher: a faust worker around the pure engine.

faust runs the worker: its lifecycle (mode services started and stopped in order,
signals, graceful shutdown, logging) and its web server, which serves our ASGI app
(/healthz, /readyz, /metrics). The streams are not faust agents: they run on the shared
`StreamRunner` (aiokafka `getmany` batches), like every other consumer of giapranh, because
- the report stream is the hot path: faust's per-event iteration and `take_events`
  measured 5-7k events/s here, the batches ~50k/s;
- every worker must read the whole watchlist topic, which an agent in the worker's
  consumer group cannot do without a GlobalTable, and GlobalTable recovery with several
  workers can loop (faust #283).

Watchlist state: every worker holds the whole watchlist in a `MatchingEngine`. At start it
loads the current entries from PostgreSQL (ingest's `ingest_watchlist` view: the system of
record, so a restarted in-memory broker loses nothing), then follows the watchlist topic
from its beginning, reading every partition; entry versions make the replay idempotent.
New and changed entries are checked against the recent reports (late hits); cancelled
ones emit `HitsWithdrawn`.

Reports (sightings, incidents) are consumed by a consumer group of the workers. Each
batch's hits are acknowledged before its offsets are committed (at least once), and the
hits of up to `MAX_BATCHES_IN_FLIGHT` batches travel while the next is matched;
downstream drops repeats by the deterministic hit id.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import asyncpg
import faust
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from faust.contrib.asgi import serve_asgi
from mode import Service

from services.matcher.engine import MatchingEngine, gc_paused
from services.matcher.hits import hits_for, late_hits
from services.matcher.late import RecentReports
from services.matcher.settings import MatcherSettings
from shared import metrics
from shared.events import (
    HitFound,
    HitsWithdrawn,
    WatchlistEntry,
    WatchlistEntryCancelled,
    WatchlistEntryUpserted,
    utcnow,
)
from shared.http import install_metrics
from shared.stream import Message, Outcome, Stream, StreamRunner
from shared.topics import HITS, INCIDENTS, SIGHTINGS, WATCHLIST

log = logging.getLogger(__name__)

MAX_BATCHES_IN_FLIGHT = 4
"""Batches whose hits may be on their way to the broker while the next one is matched."""


def _log_hit(hit: HitFound) -> None:
    log.info("%s hit on %s (score %.2f)", "late" if hit.late else "live", hit.entry.entry_id,
             hit.score, extra={"event_id": hit.event_id, "correlation_id": hit.correlation(),
                               "hit_id": hit.hit_id, "entry_id": hit.entry.entry_id,
                               "unit": hit.place.unit_code})


def calm_garbage_collector() -> None:
    """Keep Python's cyclic GC off the big, long-lived watchlist index.

    Every full collection walks all tracked objects; with a large index that turned a 6 µs
    report decode into ~30-50 µs (measured). Freezing moves what is loaded now out of the
    collector's reach, and a larger young generation makes collections rarer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class MatcherRuntime(Service):
    """The worker's state (engine, recent reports) and its two streams."""

    def __init__(self, settings: MatcherSettings, **kwargs: Any):
        super().__init__(**kwargs)
        self.settings = settings
        self.engine = MatchingEngine()
        self.recent = RecentReports(timedelta(days=settings.late_match_window_days),
                                    settings.late_match_max_reports)
        self.ready = asyncio.Event()
        """Set once the watchlist snapshot and the recent reports are loaded."""
        self.reports = StreamRunner(settings, Stream(
            name="matcher.reports", service="matcher", specs=(SIGHTINGS, INCIDENTS),
            group_id=f"{settings.matcher_group_id}.reports",
            batch_size=settings.matcher_batch_size, in_flight=MAX_BATCHES_IN_FLIGHT,
        ), self.match_reports)
        self.watchlist = StreamRunner(settings, Stream(
            name="matcher.watchlist", service="matcher", specs=(WATCHLIST,), group_id=None,
            batch_size=settings.matcher_batch_size,
        ), self.apply_watchlist_changes)

    @property
    def consuming(self) -> bool:
        """True while the report stream holds partitions."""
        return self.reports.ready.is_set()

    async def on_start(self) -> None:
        await self._load_watchlist_snapshot()
        await self._load_recent_reports()
        calm_garbage_collector()
        self.ready.set()

    @Service.task
    async def _run_reports(self) -> None:
        await self.ready.wait()
        await self.reports.run()

    @Service.task
    async def _run_watchlist(self) -> None:
        await self.ready.wait()
        await self.watchlist.run()

    async def _load_watchlist_snapshot(self) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            rows = await conn.fetch(
                "SELECT entry::text, version, cancelled_at FROM ingest_watchlist"
            )
        finally:
            await conn.close()
        with gc_paused():
            for row in rows:
                if row["cancelled_at"] is None:
                    self.engine.upsert(WatchlistEntry.model_validate_json(row["entry"]))
                else:
                    self.engine.cancel(
                        WatchlistEntry.model_validate_json(row["entry"]).entry_id,
                        row["version"])
        self._update_size_gauge()
        log.info("watchlist snapshot loaded: %d active entries", len(self.engine))

    async def _load_recent_reports(self) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            rows = await conn.fetch(
                """SELECT occurred_at, payload::text FROM ingest_reports
                    WHERE occurred_at >= now() - $1::interval ORDER BY occurred_at""",
                self.recent.window,
            )
        finally:
            await conn.close()
        self.recent.extend((row["occurred_at"], row["payload"].encode()) for row in rows)
        log.info("recent reports loaded for late matching: %d", len(self.recent))

    async def match_reports(self, messages: Iterable[Message]) -> Outcome:
        """The report stream's handler: each report's hits, to be published."""
        outcome = Outcome()
        matched: dict[str, int] = {}
        engine, keep = self.engine, self.recent.add
        for message in messages:
            report = message.event
            try:
                hits = hits_for(engine, report)
            except Exception as exc:  # noqa: BLE001 - one bad report must not stop the stream
                outcome.failed.append((message, exc))
                continue
            keep(report.occurred_at, message.record.value)
            matched[report.type] = matched.get(report.type, 0) + 1
            for hit in hits:
                metrics.HITS.labels(category=hit.entry.category.value, mode="live").inc()
                _log_hit(hit)
                outcome.publish.append((HITS, hit))
        for report_type, count in matched.items():
            metrics.MATCHER_EVENTS.labels(type=report_type).inc(count)
        return outcome

    async def apply_watchlist_changes(self, messages: Iterable[Message]) -> Outcome:
        """The watchlist follower's handler: apply each change to the engine; withdraw the
        hits of cancelled entries; check new and changed entries against the recent
        reports (NCIC's delayed inquiry), the reports decoded once for the whole batch."""
        outcome = Outcome()
        changed: list[tuple[Message, WatchlistEntry]] = []
        for message in messages:
            change = message.event
            if isinstance(change, WatchlistEntryUpserted):
                if self.engine.upsert(change.entry):
                    changed.append((message, change.entry))
            elif isinstance(change, WatchlistEntryCancelled):
                if self.engine.cancel(change.entry_id, change.version):
                    outcome.publish.append((HITS, HitsWithdrawn(
                        occurred_at=utcnow(), correlation_id=change.correlation(),
                        entry_id=change.entry_id, owner_unit=change.owner_unit,
                        version=change.version, reason=change.reason,
                    )))
        if changed:
            outcome = outcome.merge(await asyncio.to_thread(self._late_hits, changed))
        self._update_size_gauge()
        return outcome

    def _late_hits(self, changed: list[tuple[Message, WatchlistEntry]]) -> Outcome:
        outcome = Outcome()
        reports = self.recent.within(utcnow())
        for message, entry in changed:
            try:
                found = late_hits(self.engine, entry.entry_id, reports)
            except Exception as exc:  # noqa: BLE001 - parked with its change, the rest go on
                outcome.failed.append((message, exc))
                continue
            for hit in found:
                metrics.HITS.labels(category=hit.entry.category.value, mode="late").inc()
                _log_hit(hit)
                outcome.publish.append((HITS, hit))
        return outcome

    def _update_size_gauge(self) -> None:
        for category, size in self.engine.size_by_category().items():
            metrics.WATCHLIST_SIZE.labels(category=category).set(size)


def create_app(settings: MatcherSettings) -> faust.App:
    session = settings.kafka_session_timeout_seconds
    app = faust.App(
        settings.matcher_group_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        store="memory://",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_heartbeat_interval=max(0.1, session / 4),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        datadir=str(settings.matcher_data_dir),
        web_enabled=True,
        web_port=settings.matcher_port,
        web_bind=settings.matcher_host,
    )
    runtime = MatcherRuntime(settings)
    app.service(runtime)

    web = FastAPI(title="giapranh matcher")
    install_metrics(web, "matcher")

    @web.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok" if runtime.ready.is_set() else "starting",
                "reports": "consuming" if runtime.consuming else "waiting",
                "watchlist_entries": len(runtime.engine)}

    @web.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = runtime.ready.is_set() and runtime.consuming
        return JSONResponse({"ready": ready, "checks": {"watchlist_loaded": runtime.ready.is_set(),
                                                        "broker": runtime.consuming}},
                            status_code=200 if ready else 503)

    serve_asgi(app, web, host=settings.matcher_host, port=settings.matcher_port)
    return app
