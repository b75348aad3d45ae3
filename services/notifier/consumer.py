"""The notifier's hit consumer: hits in, alerts and deliveries stored, offsets committed.

Batches: each poll's hits are stored in one transaction, then the AlertRaised events are
sent and awaited together, then offsets are committed (at least once). Repeats are
harmless: an alert is unique per hit id, so a redelivered hit creates nothing.

Failures: a message that does not decode is parked on the dead-letter topic. If storing a
batch fails, its hits are retried one by one and only the ones that still fail are parked.
If the database or broker is unreachable, the consumer backs off and retries the same
batch: nothing is committed past an unstored hit.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from services.notifier.settings import NotifierSettings
from services.notifier.store import AlertStore, NewAlert
from shared import metrics
from shared.events import AlertRaised, HitFound, HitsWithdrawn, encode_event, utcnow
from shared.kafka import (
    DeadLetterSink,
    create_consumer,
    create_producer,
    ensure_topics,
    publish_all,
    record_lag,
)
from shared.topics import ALERTS, HITS

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
_TRANSIENT = (OSError, asyncpg.exceptions.InterfaceError,
              asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.TooManyConnectionsError)


class HitConsumer:
    def __init__(self, store: AlertStore, settings: NotifierSettings):
        self._store = store
        self._settings = settings
        self.ready = asyncio.Event()
        """Set once the consumer has joined its group and holds partitions."""

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect on any client failure
                self.ready.clear()
                log.warning("hit consumer failed, restarting in %.1f s: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _consume(self) -> None:
        settings = self._settings
        await ensure_topics(settings)
        consumer = create_consumer(
            settings, settings.topic(HITS.name), group_id=settings.notifier_group_id,
            client_id="giapranh-notifier",
        )
        producer = create_producer(settings, client_id="giapranh-notifier")
        await producer.start()
        try:
            await consumer.start()
            try:
                await self._loop(consumer, producer)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        dead_letters = DeadLetterSink(producer, self._settings, "notifier")
        while True:
            batch = await consumer.getmany(
                timeout_ms=500, max_records=self._settings.notifier_batch_size
            )
            if consumer.assignment():
                self.ready.set()
            records = [record for records in batch.values() for record in records]
            if not records:
                continue
            decoded: list[tuple[HitFound | HitsWithdrawn, ConsumerRecord]] = []
            for record in records:
                try:
                    decoded.append((HITS.decode(record.value), record))
                except Exception as exc:  # noqa: BLE001 - undecodable: park it
                    await dead_letters.park(record, exc)
            created = await self._store_with_retry(decoded, dead_letters)
            await self._announce(producer, created)
            await dead_letters.flush()
            await consumer.commit()
            await record_lag(consumer, "notifier")

    async def _store_with_retry(
        self, decoded: list[tuple[HitFound | HitsWithdrawn, ConsumerRecord]],
        dead_letters: DeadLetterSink,
    ) -> list[NewAlert]:
        events = [event for event, _ in decoded]
        backoff = 0.1
        while True:
            try:
                return await self._store.store_hits(events)
            except _TRANSIENT as exc:
                log.warning("database unavailable, retrying batch in %.1f s: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except asyncpg.PostgresError:
                break
        created: list[NewAlert] = []
        for hit, record in decoded:
            try:
                created.extend(await self._store.store_hits([hit]))
            except asyncpg.PostgresError as exc:
                await dead_letters.park(record, exc)
        return created

    async def _announce(self, producer: AIOKafkaProducer, created: list[NewAlert]) -> None:
        topic = self._settings.topic(ALERTS.name)
        now = utcnow()
        outgoing: list[tuple[str, bytes, bytes]] = []
        for alert in created:
            metrics.ALERTS_RAISED.inc()
            log.info("alert raised for %s", ", ".join(r.unit_code for r in alert.recipients),
                     extra={"alert_id": alert.alert_id, "hit_id": alert.hit.hit_id,
                            "correlation_id": alert.hit.correlation(),
                            "entry_id": alert.hit.entry.entry_id})
            metrics.DELIVERIES.labels(channel="store", result="ok").inc(len(alert.recipients))
            for recipient in alert.recipients:
                metrics.ALERTS_BY_UNIT.labels(unit=recipient.unit_code).inc()
            metrics.SIGHTING_TO_ALERT.observe(
                max(0.0, (now - alert.hit.reported_at).total_seconds())
            )
            event = AlertRaised(
                occurred_at=now, correlation_id=alert.hit.correlation(),
                alert_id=alert.alert_id, hit_id=alert.hit.hit_id,
                entry_id=alert.hit.entry.entry_id, category=alert.hit.entry.category,
                recipients=alert.recipients,
            )
            outgoing.append((topic, str(alert.alert_id).encode(), encode_event(event)))
        await publish_all(producer, outgoing)
