"""One consumer shape for every topic: the stream runner.

Every consumer of giapranh is a `StreamRunner` around a handler. The runner owns the poll
loop (nothing else calls `getmany`); the handler is the service's logic and never touches
Kafka:

    poll a batch -> handler(messages: each record decoded by its topic's spec as the
                            handler iterates; undecodable ones go to the dead letters)
      -> Outcome(publish, failed, after_ack)
      -> publish the outcome's events on their topics (keyed and encoded by the spec)
         and park the failed messages on the dead-letter topic, awaiting acknowledgement
      -> outcome.after_ack() (e.g. record that a batch's verdicts are out)
      -> commit the batch's next offsets (consumer groups only)

Ordering and at-least-once: a batch's offsets are committed only after its events were
acknowledged by the broker, its after-ack step is done and the batch before it was
committed. With `in_flight > 1` the next batch is polled and handled while earlier ones'
events travel to the broker (pipelining pays where handling is CPU work, as matching);
commits still happen in order. A crash re-delivers everything after the last commit, so
handlers must be idempotent (event ids, unique keys).

Failures, one policy for all:
- a record that does not decode is parked on the dead-letter topic with the error;
- a handler that raises a transient error (database or broker unreachable) has its batch
  retried, with backoff, until it succeeds; nothing is committed past it;
- a handler that raises anything else has its batch handled again one message at a time,
  and only the messages that still fail are parked (a poison message never blocks the
  stream and never crash-loops the service);
- a broker error anywhere in the loop drops the clients and starts over from the last
  commit, with backoff (`run` never returns until cancelled).

Streams without a group (`group_id=None`) read every partition of their topics from the
beginning and commit nothing: the matcher's watchlist follower, which every worker reads
whole.

A lost log (a broker restarted empty, a topic recreated) is noticed by a `LogWatch`
every couple of seconds (an input topic missing, or an output partition shorter than
what the broker acknowledged): the topics are created again; if an output topic lost its log, the stream's `on_log_lost`
hook says what to publish again from PostgreSQL; if an input topic did, the runner starts
over (a group reads from its committed offsets, which a lost log lost too, so from the
earliest; a group-less stream from the beginning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared import metrics
from shared.kafka import (
    DeadLetterSink,
    LogWatch,
    cancel_requested,
    create_consumer,
    create_producer,
    ensure_topics,
    publish_all,
    stop_if_cancelled,
    stop_quietly,
)
from shared.settings import CommonSettings
from shared.topics import TopicSpec

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, KafkaError,
    asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.TransactionRollbackError, asyncpg.OperatorInterventionError,
)
"""Errors that say "not now" (a peer unreachable, a deadlock), not "never": retried."""


@dataclass(slots=True)
class Message:
    """One decoded record (slotted and not frozen: about half the cost of creating a frozen
    dataclass, paid 50,000 times a second on the report stream)."""

    record: ConsumerRecord
    spec: TopicSpec
    event: Any


@dataclass
class Outcome:
    """What handling a batch produced."""

    publish: list[tuple[TopicSpec, Any]] = field(default_factory=list)
    """Events to publish, each on its topic, in this order (per-key order holds)."""
    failed: list[tuple[Message, BaseException]] = field(default_factory=list)
    """Messages the handler could not process: parked on the dead-letter topic."""
    after_ack: Callable[[], Awaitable[None]] | None = None
    """Run once every event was acknowledged, before the offsets are committed."""

    def merge(self, other: Outcome) -> Outcome:
        steps = [step for step in (self.after_ack, other.after_ack) if step is not None]

        async def both() -> None:
            for step in steps:
                await step()

        return Outcome(self.publish + other.publish, self.failed + other.failed,
                       both if steps else None)


class Batch:
    """One poll's records, decoded as the handler iterates, once.

    Decoding lazily lets a handler decode, handle and drop each record in turn instead of
    holding a whole batch of decoded events: measured ~15 % more reports/s on the matcher's
    stream than decoding the batch up front (the memory stays in the CPU's caches and the
    garbage collector has fewer young objects to walk). Records that do not decode are
    skipped and collected in `undecodable`.
    """

    __slots__ = ("_parts", "undecodable")

    def __init__(self, parts: list[tuple[TopicSpec, list[ConsumerRecord]]]):
        self._parts = parts
        self.undecodable: list[tuple[ConsumerRecord, BaseException]] = []

    def __len__(self) -> int:
        return sum(len(records) for _, records in self._parts)

    def __iter__(self) -> Iterator[Message]:
        for spec, records in self._parts:
            decode = spec.adapter.validate_json
            for record in records:
                try:
                    event = decode(record.value)
                except Exception as exc:  # noqa: BLE001 - whatever does not decode is parked
                    self.undecodable.append((record, exc))
                    continue
                yield Message(record, spec, event)


class Handler(Protocol):
    async def __call__(self, messages: Iterable[Message]) -> Outcome:
        """Handle the messages (iterate them once) and say what came of it."""


@dataclass(frozen=True)
class Stream:
    """What a runner consumes and how."""

    name: str
    """Label of the stream's metrics and logs, e.g. `matcher.reports`."""
    service: str
    """The consuming service (dead letters name it)."""
    specs: tuple[TopicSpec, ...]
    group_id: str | None
    """Consumer group; None: every partition from the beginning, no commits."""
    batch_size: int = 500
    in_flight: int = 1
    """Batches whose events may travel to the broker while the next one is handled."""
    on_log_lost: Callable[[set[str]], Awaitable[list[tuple[TopicSpec, Any]]]] | None = None
    """Called with the full names of the output topics whose log was lost; returns what to
    publish again (from PostgreSQL)."""
    resend_dropped: bool = False
    """When an output's log lost only what the broker acknowledged since the last whole
    check (Tansu may drop a batch it acknowledged), publish that again from memory instead
    of calling `on_log_lost`. Only for outputs read in any order: what is sent again comes
    after what was sent since (a hit after the withdrawal of its entry, say), so a stream
    whose readers need the order leaves this off and rebuilds from PostgreSQL."""


KEPT_UNCHECKED = 100_000
"""Events a stream keeps in memory to publish again should the broker drop them after
acknowledging them (a check every 2 s: ~8,000 at 2,000 alerts/s); beyond, it relies on its
`on_log_lost`."""


class LogLost(Exception):
    """An input topic's log was lost: the runner starts over."""


class StreamRunner:
    def __init__(self, settings: CommonSettings, stream: Stream, handler: Handler):
        self._settings = settings
        self._stream = stream
        self._handler = handler
        self._specs = {settings.topic(spec.name): spec for spec in stream.specs}
        self.ready = asyncio.Event()
        """Set while the runner holds partitions (its group joined, or every partition
        assigned); cleared while it reconnects."""
        self._watch = LogWatch(settings, client_id=f"giapranh-{stream.name}-logwatch")
        self._backoff = 0.1
        self._published: list[tuple[str, bytes | None, bytes]] | None = (
            [] if stream.resend_dropped else None)
        """What the broker acknowledged since the log watch's last check began (None: not
        kept, or more than `KEPT_UNCHECKED`), to publish again if the check finds only that
        lost (`Stream.resend_dropped`)."""

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with backoff after any broker failure."""
        while True:
            stop_if_cancelled()
            started = time.monotonic()
            try:
                await self._consume()
            except asyncio.CancelledError:
                if cancel_requested():
                    raise
                # aiokafka lets a CancelledError of its own tasks escape when the broker
                # goes away: that is a failure to recover from, not a stop.
                await self._failed(RuntimeError("a Kafka client task was cancelled"), started)
            except Exception as exc:  # noqa: BLE001 - every failure reconnects
                await self._failed(exc, started)

    async def _failed(self, exc: BaseException, started: float) -> None:
        stop_if_cancelled()
        self.ready.clear()
        metrics.STREAM_RESTARTS.labels(stream=self._stream.name).inc()
        if time.monotonic() - started > 30:
            self._backoff = 0.1  # it ran a while: this is a new outage
        log.warning("stream %s failed, reconnecting in %.1f s: %r",
                    self._stream.name, self._backoff, exc)
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    async def _consume(self) -> None:
        stream, settings = self._stream, self._settings
        # A restarted broker may have lost the topics (Tansu keeps them in memory).
        await ensure_topics(settings)
        producer = create_producer(settings, client_id=f"giapranh-{stream.name}")
        consumer = create_consumer(
            settings, *(() if stream.group_id is None else self._specs), group_id=stream.group_id,
            client_id=f"giapranh-{stream.name}")
        try:
            await producer.start()
            await consumer.start()
            if stream.group_id is None:
                await self._assign_everything(consumer, producer)
            await self._loop(consumer, producer)
        finally:
            self.ready.clear()
            await self._watch.close()
            await stop_quietly(consumer)
            await stop_quietly(producer)

    async def _assign_everything(self, consumer: AIOKafkaConsumer,
                                 producer: AIOKafkaProducer) -> None:
        partitions = [TopicPartition(topic, p) for topic in self._specs
                      for p in sorted(await producer.partitions_for(topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        self.ready.set()

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        stream = self._stream
        dead_letters = DeadLetterSink(producer, self._settings, stream.service)
        in_flight: deque[asyncio.Task[None]] = deque()
        try:
            while True:
                stop_if_cancelled()  # aiokafka's getmany may swallow our cancellation
                while in_flight and in_flight[0].done():
                    in_flight.popleft().result()  # raises a delivery's failure
                if self._watch.due():
                    await self._check_log(producer)
                batch = await consumer.getmany(timeout_ms=500, max_records=stream.batch_size)
                if stream.group_id is not None and consumer.assignment():
                    self.ready.set()
                if not batch:
                    continue
                started = time.perf_counter()
                messages = Batch([(self._specs[partition.topic], records)
                                  for partition, records in batch.items()])
                outcome = await self._handle(messages)
                for record, error in messages.undecodable:
                    await dead_letters.park(record, error)
                offsets = {partition: records[-1].offset + 1
                           for partition, records in batch.items()}
                if len(in_flight) >= stream.in_flight:
                    await in_flight.popleft()  # the oldest batch is delivered and committed
                in_flight.append(asyncio.create_task(self._deliver(
                    consumer, producer, dead_letters, outcome, offsets, started,
                    sum(len(records) for records in batch.values()),
                    in_flight[-1] if in_flight else None)))
        finally:
            for task in in_flight:
                task.cancel()
            for task in in_flight:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _publish(self, producer: AIOKafkaProducer,
                       records: list[tuple[str, bytes | None, bytes]]) -> None:
        """Publish, and keep what was acknowledged until the log watch has seen it in the
        log (`_check_log`)."""
        if not records:
            return
        await publish_all(producer, records, watch=self._watch)
        # (No await since the watch learnt of them: a check begun after this sees them.)
        if self._published is not None:
            self._published += records
            if len(self._published) > KEPT_UNCHECKED:
                self._published = None

    async def _check_log(self, producer: AIOKafkaProducer) -> None:
        checking = self._published
        if self._stream.resend_dropped:
            self._published = []
        try:
            lost = await self._watch.check(self._specs)
        except BaseException:
            # (Not checked: kept for the next check.)
            self._published = (None if checking is None or self._published is None
                               else checking + self._published)
            raise
        if not lost:
            return
        service = self._stream.service
        for topic in lost:
            metrics.LOG_LOSSES.labels(service=service, topic=topic).inc()
        log.warning("stream %s: the broker lost the log of %s", self._stream.name,
                    ", ".join(sorted(lost)))
        outputs = lost - set(self._specs)
        # A log that lost only what was acknowledged since the last whole check gets that
        # again, from memory; one lost wholly (or when too much was sent since to keep),
        # what the stream's `on_log_lost` reads from PostgreSQL.
        wholly = outputs if checking is None else outputs & self._watch.wholly_lost
        tail = [record for record in checking or () if record[0] in outputs - wholly]
        try:
            await ensure_topics(self._settings)
            if tail:
                await self._publish(producer, tail)
                log.warning("stream %s: published %d event(s) again (sent since the last "
                            "whole check of %s)", self._stream.name, len(tail),
                            ", ".join(sorted(outputs - wholly)))
            if wholly and self._stream.on_log_lost is not None:
                again = await self._stream.on_log_lost(wholly)
                if again:
                    await self._publish(producer, [spec.record(self._settings, event)
                                                   for spec, event in again])
                    log.warning("stream %s: published %d event(s) again from PostgreSQL",
                                self._stream.name, len(again))
        except BaseException:
            # Not published again: the next check finds the loss again, and sends it.
            self._watch.unforget()
            if self._published is not None:
                self._published = tail + self._published
            raise
        if lost & set(self._specs):
            raise LogLost(f"the log of {', '.join(sorted(lost & set(self._specs)))} was lost")

    async def _handle(self, messages: Batch) -> Outcome:
        """The handler's outcome; transient errors retried, others isolated per message."""
        if not len(messages):
            return Outcome()
        try:
            return await self._retrying(messages)
        except Exception as exc:  # noqa: BLE001 - find the message at fault
            log.warning("stream %s: a batch of %d failed (%r); handling it one by one",
                        self._stream.name, len(messages), exc)
        messages.undecodable.clear()  # iterated again below
        outcome = Outcome()
        for message in messages:
            try:
                outcome = outcome.merge(await self._retrying([message]))
            except Exception as exc:  # noqa: BLE001 - this one is poison
                outcome.failed.append((message, exc))
        return outcome

    async def _retrying(self, messages: Iterable[Message]) -> Outcome:
        backoff = 0.1
        while True:
            stop_if_cancelled()
            try:
                return await self._handler(messages)
            except TRANSIENT_ERRORS as exc:
                log.warning("stream %s: cannot handle a batch now, retrying in %.1f s: %r",
                            self._stream.name, backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _deliver(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                       dead_letters: DeadLetterSink, outcome: Outcome,
                       offsets: dict[TopicPartition, int], started: float, size: int,
                       previous: asyncio.Task[None] | None) -> None:
        for message, error in outcome.failed:
            await dead_letters.park(message.record, error)
        await self._publish(producer, [spec.record(self._settings, event)
                                       for spec, event in outcome.publish])
        await dead_letters.flush()
        if outcome.after_ack is not None:
            await outcome.after_ack()
        if previous is not None:
            await previous
        if self._stream.group_id is not None:
            await consumer.commit(offsets)
        name = self._stream.name
        metrics.STREAM_BATCH_MESSAGES.labels(stream=name).observe(size)
        metrics.STREAM_BATCH_SECONDS.labels(stream=name).observe(time.perf_counter() - started)
        await record_lag(consumer, name)


async def record_lag(consumer: AIOKafkaConsumer, stream: str) -> None:
    """Set `giapranh_consumer_lag` from the last fetch's high-water marks."""
    lag = 0
    for partition in consumer.assignment():
        high = consumer.highwater(partition)
        if high is not None:
            lag += max(0, high - await consumer.position(partition))
    metrics.CONSUMER_LAG.labels(stream=stream).set(lag)
