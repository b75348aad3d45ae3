"""Wiring of the stream matcher: a faust app whose agents only decode, match and produce.

Watchlist state: every worker holds the whole watchlist in a `MatchingEngine`. At start it
loads the current entries from PostgreSQL (the system of record, so a restarted in-memory
broker loses nothing), then follows the watchlist topic from its beginning with its own
group-less consumer, reading every partition. Entry versions make the replay idempotent.
We do not use a faust GlobalTable for this: recovery with several workers can loop
(faust #283), and table writes are not allowed from `take_events` batches.

Reports (sightings, incidents) are consumed by the worker group, in batches. Each batch's
hits are sent together and awaited once before faust commits the offsets (at least once);
downstream drops repeats by the deterministic hit id. A report that cannot be decoded or
matched goes to the dead-letter topic and the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import asyncpg
import faust
from aiokafka import AIOKafkaProducer, TopicPartition
from fastapi import FastAPI
from faust.contrib.asgi import serve_asgi
from mode import Service

from services.matcher.engine import MatchingEngine
from services.matcher.settings import MatcherSettings
from shared import metrics
from shared.events import (
    HitFound,
    IncidentReported,
    SightingReported,
    Subject,
    WatchlistEntry,
    WatchlistEntryCancelled,
    WatchlistEntryUpserted,
    encode_event,
    utcnow,
)
from shared.http import install_metrics
from shared.kafka import DeadLetterSink, create_consumer, create_producer
from shared.topics import HITS, INCIDENTS, SIGHTINGS, WATCHLIST

log = logging.getLogger(__name__)

HIT_NAMESPACE = uuid5(NAMESPACE_URL, "https://giapranh.example/hits")


def hit_id(source_event_id: UUID, entry: WatchlistEntry) -> UUID:
    """Same report, same entry version: same hit id, so downstream can drop repeats."""
    return uuid5(HIT_NAMESPACE, f"{source_event_id}:{entry.entry_id}:{entry.version}")


def report_subjects(report: SightingReported | IncidentReported) -> list[Subject]:
    if isinstance(report, SightingReported):
        return [report.subject]
    vehicles = [Subject(plate=v.plate, description=v.description) for v in report.vehicles]
    return [*report.suspects, *vehicles]


def hits_for(engine: MatchingEngine, report: SightingReported | IncidentReported) -> list[HitFound]:
    hits: dict[str, HitFound] = {}
    for subject in report_subjects(report):
        for match in engine.match(subject, at=report.occurred_at):
            if match.entry.entry_id in hits:
                continue
            hits[match.entry.entry_id] = HitFound(
                occurred_at=utcnow(),
                correlation_id=report.correlation(),
                hit_id=hit_id(report.event_id, match.entry),
                entry=match.entry,
                source_event_id=report.event_id,
                source_type=report.type,
                subject=subject,
                place=report.place,
                seen_at=report.occurred_at,
                reported_at=report.recorded_at,
                score=match.score,
                reasons=match.reasons,
            )
    return list(hits.values())


class MatcherRuntime(Service):
    """The worker's adapters and state: engine, database pool, producer, dead letters."""

    def __init__(self, settings: MatcherSettings, **kwargs: Any):
        super().__init__(**kwargs)
        self.settings = settings
        self.engine = MatchingEngine()
        self.ready = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._dead_letters: DeadLetterSink | None = None

    async def on_start(self) -> None:
        await self._load_watchlist_snapshot()
        self._producer = create_producer(self.settings, client_id="giapranh-matcher")
        await self._producer.start()
        self._dead_letters = DeadLetterSink(self._producer, self.settings, "matcher")
        self.ready.set()

    async def on_stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def _load_watchlist_snapshot(self) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            rows = await conn.fetch(
                "SELECT entry::text, version, cancelled_at FROM watchlist_entries"
            )
        finally:
            await conn.close()
        for row in rows:
            if row["cancelled_at"] is None:
                self.engine.upsert(WatchlistEntry.model_validate_json(row["entry"]))
            else:
                self.engine.cancel(WatchlistEntry.model_validate_json(row["entry"]).entry_id,
                                   row["version"])
        self._update_size_gauge()
        log.info("watchlist snapshot loaded: %d active entries", len(self.engine))

    @Service.task
    async def _follow_watchlist(self) -> None:
        await self.ready.wait()
        topic = self.settings.topic(WATCHLIST.name)
        consumer = create_consumer(self.settings, group_id=None, client_id="giapranh-matcher-wl")
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            await consumer.seek_to_beginning()
            while not self.should_stop:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        await self._apply_watchlist_record(record)
                if batch:
                    self._update_size_gauge()
        finally:
            await consumer.stop()

    async def _apply_watchlist_record(self, record: Any) -> None:
        try:
            change = WATCHLIST.decode(record.value)
        except Exception as exc:  # noqa: BLE001 - any undecodable change is parked
            assert self._dead_letters is not None
            await self._dead_letters.park(record, exc)
            await self._dead_letters.flush()
            return
        if isinstance(change, WatchlistEntryUpserted):
            self.engine.upsert(change.entry)
        elif isinstance(change, WatchlistEntryCancelled):
            self.engine.cancel(change.entry_id, change.version)

    def _update_size_gauge(self) -> None:
        for category, size in self.engine.size_by_category().items():
            metrics.WATCHLIST_SIZE.labels(category=category).set(size)

    async def process_reports(self, events: list[Any], spec: Any) -> None:
        """Match one batch of report events and send its hits; park what fails."""
        assert self._producer is not None and self._dead_letters is not None
        hits_topic = self.settings.topic(HITS.name)
        pending = []
        for event in events:
            message = event.message
            try:
                report = spec.decode(message.value)
                hits = hits_for(self.engine, report)
            except Exception as exc:  # noqa: BLE001 - one bad report must not stop the stream
                await self._dead_letters.park(message, exc)
                continue
            metrics.MATCHER_EVENTS.labels(type=report.type).inc()
            for hit in hits:
                metrics.HITS.labels(category=hit.entry.category.value, mode="live").inc()
                pending.append(await self._producer.send(
                    hits_topic, encode_event(hit), key=hit.entry.entry_id.encode()
                ))
        await asyncio.gather(*pending)
        await self._dead_letters.flush()


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

    for spec in (SIGHTINGS, INCIDENTS):
        topic = app.topic(settings.topic(spec.name), value_serializer="raw", key_serializer="raw")

        async def match_reports(stream: faust.StreamT, spec: Any = spec) -> None:
            await runtime.ready.wait()
            async for events in stream.take_events(
                settings.matcher_batch_size, settings.matcher_batch_window_seconds
            ):
                await runtime.process_reports(list(events), spec)

        app.agent(topic, name=f"match-{spec.name}")(match_reports)

    web = FastAPI(title="giapranh matcher")
    install_metrics(web, "matcher")

    @web.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok" if runtime.ready.is_set() else "starting",
                "watchlist_entries": len(runtime.engine)}

    serve_asgi(app, web, host=settings.matcher_host, port=settings.matcher_port)
    return app
