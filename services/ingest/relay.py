"""The outbox relay: publishes committed outbox rows to Kafka, in order, at least once.

Ordering: one relay is active at a time across all ingest instances (a transaction-level
advisory lock), and it sends rows in id order, so events with the same key reach their
partition in the order they were accepted.

Delivery: a round sends a batch, awaits every acknowledgement, then marks the rows
dispatched in the same transaction that locked them. A crash between the two re-sends the
batch; consumers drop the repeats by event id. While the broker is unreachable the relay
backs off and retries; requests keep being accepted into the outbox meanwhile.

Wake-up: `NOTIFY giapranh_outbox` from the writer wakes the relay at once; it also polls
every `relay_idle_seconds` in case a notification was missed.

A lost log: a broker that restarts empty (Tansu) or a topic recreated goes on
acknowledging sends, so a relay that only waited for acknowledgements would never notice
that what it published is gone. A `LogWatch` compares what the broker acknowledged with
its metadata every couple of seconds; on a loss the relay recreates the topics and
publishes again every row not yet verified as consumed (`reconciler.py` verifies rows
against the matcher's verdicts, and re-drives on its own what a loss between two checks
leaves behind).
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from aiokafka import AIOKafkaProducer

from services.ingest.reconciler import redrive_unconfirmed
from services.ingest.settings import IngestSettings
from services.ingest.store import OUTBOX_CHANNEL
from shared import metrics
from shared.db import DATABASE_ERRORS
from shared.kafka import (
    LogWatch,
    cancel_requested,
    ensure_topics,
    publish_all,
    start_producer,
    stop_if_cancelled,
    stop_quietly,
)
from shared.topics import ALL_TOPICS

log = logging.getLogger(__name__)

RELAY_LOCK_ID = 0x6A1A_0002
MAX_BACKOFF_SECONDS = 5.0
BACKLOG_READING_SECONDS = 2.0


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, settings: IngestSettings):
        self._pool = pool
        self._settings = settings
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._listener: asyncpg.Connection | None = None
        self._next_backlog_reading = 0.0
        self._watch = LogWatch(settings, client_id="giapranh-ingest-logwatch")
        self._topics = [settings.topic(spec.name) for spec in ALL_TOPICS]

    @property
    def connected(self) -> bool:
        """True while the relay holds a started producer (the broker answered)."""
        return self._producer is not None

    async def run(self) -> None:
        """Relay until cancelled."""
        backoff = 0.1
        try:
            while True:
                stop_if_cancelled()
                self._wake.clear()
                try:
                    if self._listener is None or self._listener.is_closed():
                        # (again after the database restarted: else no NOTIFY wakes it)
                        await self._listen_or_poll()
                    producer = await self._ensure_producer()
                    if self._watch.due():
                        await self._check_log()
                    sent = await self.relay_once(producer)
                    backoff = 0.1
                except asyncio.CancelledError:
                    if cancel_requested():
                        raise
                    await self._drop_producer()  # a Kafka client task died under us
                    await asyncio.sleep(backoff)
                    continue
                except Exception as exc:  # noqa: BLE001 - every failure is retried
                    metrics.OUTBOX_RELAY_ERRORS.inc()
                    log.warning("outbox relay round failed, retrying in %.1f s: %r", backoff, exc)
                    await self._drop_producer()
                    await self._watch.close()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                if sent < self._settings.relay_batch_size:
                    await self._idle()
        finally:
            await self._drop_producer()
            await self._watch.close()
            if self._listener is not None:
                await self._listener.close()

    async def relay_once(self, producer: AIOKafkaProducer) -> int:
        """Publish one batch of pending rows; returns how many were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK_ID):
                return 0  # another ingest instance is relaying
            rows = await conn.fetch(
                """SELECT id, topic, key, payload FROM outbox
                    WHERE dispatched_at IS NULL ORDER BY id LIMIT $1""",
                self._settings.relay_batch_size,
            )
            if not rows:
                metrics.OUTBOX_BACKLOG.set(0)
                metrics.OUTBOX_OLDEST_AGE.set(0)
                return 0
            await publish_all(producer, (
                (row["topic"], row["key"].encode() if row["key"] else None, row["payload"])
                for row in rows
            ), watch=self._watch)
            await conn.execute(
                # (the broker's acknowledgement, not the transaction's start: the latency budget)
                "UPDATE outbox SET dispatched_at = clock_timestamp() "
                "WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
            if time.monotonic() >= self._next_backlog_reading:
                # Counting a large backlog costs a scan: measure it every few seconds only.
                self._next_backlog_reading = time.monotonic() + BACKLOG_READING_SECONDS
                backlog = await conn.fetchrow(
                    """SELECT count(*) AS rows,
                              coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age
                         FROM outbox WHERE dispatched_at IS NULL"""
                )
                metrics.OUTBOX_BACKLOG.set(backlog["rows"])
                metrics.OUTBOX_OLDEST_AGE.set(float(backlog["age"]))
        metrics.OUTBOX_RELAYED.inc(len(rows))
        return len(rows)

    async def _check_log(self) -> None:
        """Publish again what a lost log took with it: every row not verified yet."""
        lost = await self._watch.check(self._topics)
        if not lost:
            return
        await ensure_topics(self._settings)
        count = await redrive_unconfirmed(self._pool)
        metrics.OUTBOX_REDRIVEN.labels(reason="log_lost").inc(count)
        log.warning("the broker lost the log of %s: publishing %d event(s) not confirmed by "
                    "the matcher again",
                    ", ".join(sorted(lost)), count)

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            # A restarted broker (Tansu keeps topics in memory) may have lost the topics.
            await ensure_topics(self._settings)
            self._producer = await start_producer(self._settings, "giapranh-ingest-relay")
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_quietly(producer)

    async def _listen_or_poll(self) -> None:
        """Listen for NOTIFY; when no connection can be had for it (too many clients, say),
        relay all the same, waking every `relay_idle_seconds`, and try again next round."""
        try:
            await self._listen()
        except DATABASE_ERRORS as exc:
            log.warning("the relay cannot listen for new outbox rows (%r): it looks every "
                        "%g s until it can", exc, self._settings.relay_idle_seconds)

    async def _listen(self) -> None:
        if self._listener is not None:
            self._listener.terminate()
            self._listener = None
        listener = await asyncpg.connect(self._settings.database_url)
        try:
            await listener.add_listener(OUTBOX_CHANNEL, lambda *_: self._wake.set())
            # (lost, it wakes the relay, which listens again at once)
            listener.add_termination_listener(lambda _conn: self._wake.set())
        except BaseException:
            listener.terminate()
            raise
        self._listener = listener

    async def _idle(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self._settings.relay_idle_seconds)
        except TimeoutError:
            pass

