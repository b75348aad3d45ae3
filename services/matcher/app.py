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
import contextlib
import hmac
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import faust
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faust.auth import SASLCredentials, SSLCredentials
from faust.contrib.asgi import serve_asgi
from faust.types.auth import CredentialsT
from mode import Service
from pydantic import BaseModel

from services.matcher.engine import MatchingEngine, gc_paused
from services.matcher.hits import (
    HITS_PER_SUBJECT_AND_OWNER,
    capped,
    hits_for,
    late_hits,
    late_hits_of,
)
from services.matcher.late import RecentReports
from services.matcher.ledger import Ledger
from services.matcher.reconcile import HitReconciler, Policy, startup_changes
from services.matcher.settings import MatcherSettings
from shared import metrics
from shared.auth import internal_token
from shared.db import create_pool, starting_history
from shared.events import (
    HOT_LIST,
    HitFound,
    HitsWithdrawn,
    IncidentReported,
    SightingReported,
    Subject,
    WatchlistEntry,
    WatchlistEntryCancelled,
    WatchlistEntryUpserted,
    utcnow,
)
from shared.http import install_metrics, metrics_listener, same_history
from shared.kafka import (
    cancel_requested,
    publish_all,
    security_options,
    start_producer,
    stop_if_cancelled,
    stop_quietly,
)
from shared.logs import event_logger
from shared.runtime import calm_garbage_collector
from shared.stream import TRANSIENT_ERRORS, Message, Outcome, Stream, StreamRunner
from shared.topics import HITS, INCIDENTS, SIGHTINGS, WATCHLIST, TopicSpec

log = logging.getLogger(__name__)
events_log = event_logger("matcher")

MAX_BATCHES_IN_FLIGHT = 4
"""Batches whose hits may be on their way to the broker while the next one is matched."""


def _log_hit(hit: HitFound) -> None:
    """Each hit at DEBUG (counted in `giapranh_hits_total` instead): at a thousand hits a
    second an INFO line each cost ~15 % of the matcher's CPU."""
    if not events_log.isEnabledFor(logging.DEBUG):
        return
    events_log.debug("%s hit on %s (score %.2f)", "late" if hit.late else "live",
                     hit.entry.entry_id,
             hit.score, extra={"event_id": hit.event_id, "correlation_id": hit.correlation(),
                               "hit_id": hit.hit_id, "entry_id": hit.entry.entry_id,
                               "unit": hit.place.unit_code})


class MatcherRuntime(Service):
    """The worker's state (engine, recent reports), its two streams and its reconciliation."""

    def __init__(self, settings: MatcherSettings, **kwargs: Any):
        super().__init__(**kwargs)
        self.settings = settings
        self.engine = MatchingEngine()
        self.recent = RecentReports(timedelta(days=settings.late_match_window_days),
                                    settings.late_match_max_reports)
        self.loaded = asyncio.Event()
        """Set once the watchlist snapshot and the recent reports are loaded."""
        self.ready = asyncio.Event()
        """Set once what changed while no matcher ran is processed too: the streams start."""
        self._hits_lost = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self.history: str | None = None
        self._ledger: Ledger | None = None
        self._producer: AIOKafkaProducer | None = None
        self.reports = StreamRunner(settings, Stream(
            name="matcher.reports", service="matcher", specs=(SIGHTINGS, INCIDENTS),
            group_id=f"{settings.matcher_group_id}.reports",
            batch_size=settings.matcher_batch_size, in_flight=MAX_BATCHES_IN_FLIGHT,
            on_log_lost=self._on_hits_lost,
        ), self.match_reports)
        self.watchlist = StreamRunner(settings, Stream(
            name="matcher.watchlist", service="matcher", specs=(WATCHLIST,), group_id=None,
            batch_size=settings.matcher_batch_size, on_log_lost=self._on_hits_lost,
        ), self.apply_watchlist_changes)

    @property
    def consuming(self) -> bool:
        """True while the report stream holds partitions."""
        return self.reports.ready.is_set()

    @property
    def pool(self) -> asyncpg.Pool | None:
        return self._pool

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "the matcher has not started"
        return self._ledger

    async def on_start(self) -> None:
        self._pool = await create_pool(self.settings, max_size=4)
        self._ledger = Ledger(self._pool)
        # (taken before the snapshot: the watchlists held belong to this history)
        self.history = await starting_history(self._pool, "matcher")
        await self._load_watchlist_snapshot()
        await self._load_recent_reports()
        calm_garbage_collector()
        self.loaded.set()

    async def on_stop(self) -> None:
        await self._drop_producer()
        if self._pool is not None:
            await self._pool.close()

    @Service.task
    async def _catch_up(self) -> None:
        """Process what changed while no matcher ran, then let the streams start."""
        await self.loaded.wait()
        backoff = 0.1
        while not self.should_stop:
            stop_if_cancelled()
            try:
                await self._process_missed_changes()
                break
            except (*TRANSIENT_ERRORS, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and cancel_requested():
                    raise
                log.warning("catching up with watchlist changes failed, retrying in %.1f s: "
                            "%r", backoff, exc)
                await self._drop_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:  # never block the streams on it: the next start tries again
                log.exception("catching up with the watchlist changes made while no matcher "
                              "ran failed; they are not processed until the next start")
                break
        self.ready.set()

    @Service.task
    async def _run_reports(self) -> None:
        await self.ready.wait()
        await self.reports.run()

    @Service.task
    async def _run_watchlist(self) -> None:
        await self.ready.wait()
        await self.watchlist.run()

    @Service.task
    async def _reconcile(self) -> None:
        """Hits with no alert and withdrawals that withdrew nothing, published again."""
        await self.ready.wait()
        settings = self.settings
        reconciler = HitReconciler(self.engine, self.ledger, Policy(
            timedelta(seconds=settings.matcher_redrive_after_seconds),
            settings.matcher_max_redrives))
        next_cleanup, full = 0.0, False
        while not self.should_stop:
            stop_if_cancelled()
            if not full:  # a full round means more is waiting: go on at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hits_lost.wait(),
                                           settings.matcher_reconcile_seconds)
            everything = self._hits_lost.is_set()
            self._hits_lost.clear()
            full = False
            try:
                full = await reconciler.round(self._publish, everything=everything)
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + 3600
                    await self.ledger.forget_older_than(
                        utcnow() - timedelta(days=settings.matcher_record_days))
            except (*TRANSIENT_ERRORS, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and cancel_requested():
                    raise
                log.warning("reconciliation round failed, retrying: %r", exc)
                await self._drop_producer()
                if everything:
                    self._hits_lost.set()
            except Exception:  # a bug must not end reconciliation for good: say it, go on
                log.exception("reconciliation round failed")
                await asyncio.sleep(settings.matcher_reconcile_seconds)

    async def _on_hits_lost(self, topics: set[str]) -> list[tuple[TopicSpec, Any]]:
        if self.settings.topic(HITS.name) in topics:
            self._hits_lost.set()  # the reconciliation publishes every unresolved hit again
        return []

    async def _publish(self, events: list[tuple[TopicSpec, Any]]) -> None:
        if self._producer is None:
            self._producer = await start_producer(self.settings, "giapranh-matcher-reconcile")
        await publish_all(self._producer, (spec.record(self.settings, event)
                                           for spec, event in events))

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_quietly(producer)

    async def _process_missed_changes(self) -> None:
        entries, withdrawals, versions = await startup_changes(self.ledger)
        if not versions:
            return
        hits, failures = await asyncio.to_thread(self._late_hits, entries)
        for entry, error in failures:
            log.error("late check of entry %s failed: %r", entry.entry_id, error)
        await self._publish([*((HITS, w) for w in withdrawals), *((HITS, h) for h in hits)])
        await self.ledger.record_entries(versions, hits)
        log.info("caught up with %d watchlist change(s) made while no matcher ran: %d late "
                 "hit(s), %d withdrawal(s)", len(versions), len(hits), len(withdrawals))

    async def _load_watchlist_snapshot(self) -> None:
        rows = await self.ledger.snapshot()
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
        rows = await self.ledger.recent_reports(self.recent.window)
        self.recent.extend((row["occurred_at"], row["payload"].encode()) for row in rows)
        log.info("recent reports loaded for late matching: %d", len(self.recent))

    async def match_reports(self, messages: Iterable[Message]) -> Outcome:
        """The report stream's handler: each report's hits, to be published; once they
        are acknowledged, the verdicts and hits are recorded."""
        outcome = Outcome()
        matched: dict[str, int] = {}
        verdicts: list[tuple[UUID, int]] = []
        emitted: list[HitFound] = []
        engine, keep = self.engine, self.recent.add
        for message in messages:
            report = message.event
            if not isinstance(report, SightingReported | IncidentReported):
                continue  # an incident's update or closing: its hot list changes elsewhere
            try:
                hits = hits_for(engine, report)
            except Exception as exc:  # noqa: BLE001 - one bad report must not stop the stream
                outcome.failed.append((message, exc))
                continue
            keep(report.occurred_at, message.record.value)
            matched[report.type] = matched.get(report.type, 0) + 1
            verdicts.append((report.event_id, len(hits)))
            for hit in hits:
                metrics.HITS.labels(category=hit.entry.category.value, mode="live").inc()
                _log_hit(hit)
                outcome.publish.append((HITS, hit))
                emitted.append(hit)
        for report_type, count in matched.items():
            metrics.MATCHER_EVENTS.labels(type=report_type).inc(count)
        if verdicts:
            ledger = self.ledger
            outcome.after_ack = lambda: ledger.record_reports(verdicts, emitted)
        return outcome

    async def apply_watchlist_changes(self, messages: Iterable[Message]) -> Outcome:
        """The watchlist follower's handler: apply each change to the engine; withdraw the
        hits of cancelled entries; check new and changed entries against the recent
        reports (NCIC's delayed inquiry), the reports decoded once for the whole batch.
        Once that is acknowledged, the versions processed are recorded."""
        outcome = Outcome()
        changed: list[tuple[Message, WatchlistEntry]] = []
        versions: dict[str, int] = {}
        for message in messages:
            change = message.event
            if isinstance(change, WatchlistEntryUpserted):
                versions[change.entry.entry_id] = change.entry.version
                if self.engine.upsert(change.entry):
                    changed.append((message, change.entry))
            elif isinstance(change, WatchlistEntryCancelled):
                versions[change.entry_id] = change.version
                if self.engine.cancel(change.entry_id, change.version):
                    outcome.publish.append((HITS, HitsWithdrawn(
                        occurred_at=utcnow(), correlation_id=change.correlation(),
                        entry_id=change.entry_id, owner_unit=change.owner_unit,
                        version=change.version, reason=change.reason,
                    )))
        late: list[HitFound] = []
        if changed:
            late, failures = await asyncio.to_thread(
                self._late_hits, [entry for _, entry in changed])
            by_entry = {entry.entry_id: message for message, entry in changed}
            outcome.failed += [(by_entry[entry.entry_id], error) for entry, error in failures]
            outcome.publish += [(HITS, hit) for hit in late]
        self._update_size_gauge()
        if versions:
            ledger = self.ledger
            outcome.after_ack = lambda: ledger.record_entries(versions, late)
        return outcome

    def _late_hits(self, entries: list[WatchlistEntry]
                   ) -> tuple[list[HitFound], list[tuple[WatchlistEntry, Exception]]]:
        """The late hits of these entries among the recent reports, at most
        `HITS_PER_SUBJECT_AND_OWNER` per reported subject and listing unit: a unit that
        lists many look-alikes at once must not bury the desks under late alerts."""
        found: list[HitFound] = []
        failures: list[tuple[WatchlistEntry, Exception]] = []
        now = utcnow()
        reports = self.recent.within(now)
        # An incident's hot list looks back hours, not days: the camera that read the plate
        # before the report was filed.
        since = now - timedelta(hours=self.settings.incident_lookback_hours)
        for group, window in (
                ([e for e in entries if e.category not in HOT_LIST], reports),
                ([e for e in entries if e.category in HOT_LIST],
                 [r for r in reports if r.occurred_at >= since])):
            if not group:
                continue
            try:
                found += late_hits_of(self.engine, [entry.entry_id for entry in group], window)
            except Exception:  # noqa: BLE001 - find the entry at fault, the rest go on
                for entry in group:
                    try:
                        found += late_hits(self.engine, entry.entry_id, window)
                    except Exception as exc:  # noqa: BLE001 - parked with its change
                        failures.append((entry, exc))
        found, left_out = capped(found)
        if left_out:
            metrics.HITS_CAPPED.labels(mode="late").inc(left_out)
            log.warning("%d late hit(s) on look-alike entries of one unit not raised (at "
                        "most %d per report, subject and unit)", left_out,
                        HITS_PER_SUBJECT_AND_OWNER)
        for hit in found:
            metrics.HITS.labels(category=hit.entry.category.value, mode="late").inc()
            _log_hit(hit)
        return found, failures

    def _update_size_gauge(self) -> None:
        for category, size in self.engine.size_by_category().items():
            metrics.WATCHLIST_SIZE.labels(category=category).set(size)


def broker_credentials(settings: MatcherSettings) -> CredentialsT | None:
    """faust's form of `security_options`: the worker's own clients (its producer and
    consumer) authenticate like every other client of giapranh."""
    options = security_options(settings)
    protocol = options["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(options["ssl_context"])
    # SASLCredentials says SASL_SSL when it has an SSL context, SASL_PLAINTEXT otherwise.
    return SASLCredentials(username=options["sasl_plain_username"],
                           password=options["sasl_plain_password"],
                           mechanism=options["sasl_mechanism"],
                           ssl_context=options.get("ssl_context"))


class CheckQuery(BaseModel):
    subject: Subject
    at: datetime | None = None


def create_app(settings: MatcherSettings) -> faust.App:
    session = settings.kafka_session_timeout_seconds
    app = faust.App(
        settings.matcher_group_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
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
    install_metrics(web, "matcher", public=settings.metrics_port is None)

    @web.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok" if runtime.ready.is_set() else "starting",
                "reports": "consuming" if runtime.consuming else "waiting",
                "watchlist_entries": len(runtime.engine)}

    @web.get("/readyz")
    async def readyz() -> JSONResponse:
        checks: dict[str, bool | None] = {"watchlist_loaded": runtime.ready.is_set(),
                                          "broker": runtime.consuming}
        if runtime.history is not None and runtime.pool is not None:
            # (watchlists loaded from a history a restore left behind are not the list;
            # None: the database cannot say now)
            checks["database_history"] = await same_history(runtime.pool, runtime.history,
                                                            "matcher")
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks},
                            status_code=200 if ready else 503)

    token = internal_token(settings.api_key_pepper.get_secret_value())

    @web.post("/internal/check", include_in_schema=False)
    async def check(body: CheckQuery, request: Request) -> JSONResponse:
        """Match one subject now, for ingest's `POST /v1/checks` (services' token only)."""
        if not hmac.compare_digest(request.headers.get("x-giapranh-internal", ""), token):
            return JSONResponse({"error": "internal endpoint"}, status_code=401)
        if not runtime.ready.is_set():
            return JSONResponse({"error": "watchlist still loading"}, status_code=503)
        matches = runtime.engine.match(body.subject, at=body.at or utcnow())
        return JSONResponse({
            "watchlist_entries": len(runtime.engine),
            "matches": [{"entry": m.entry.model_dump(mode="json"), "score": m.score,
                         "reasons": [r.model_dump() for r in m.reasons]} for m in matches]})

    serve_asgi(app, web, host=settings.matcher_host, port=settings.matcher_port)
    if settings.metrics_port is not None:  # for the worker's life: a daemon thread
        listener = metrics_listener(settings)
        listener.__enter__()
        app.metrics_listener = listener  # type: ignore[attr-defined] # kept: its exit stops it
    return app
