"""Kafka plumbing: clients built from settings, topic creation, the dead-letter sink.

Delivery guarantees come from the outbox, event ids and idempotent consumers, not from
Kafka transactions: producers use acks=all, and the idempotent producer only where the
broker supports it (`kafka_idempotent_producer`: on for Apache Kafka, off on Tansu).
Consumers never auto-commit; they commit after a batch's effects are durable.

Every client (producers, consumers, the admin client, the log watch, and the matcher's
faust app) authenticates as `security_options` says, from the `GIAPRANH_KAFKA_SECURITY_*`,
`_SASL_*` and `_SSL_*` settings: PLAINTEXT for the embedded broker, SASL/SCRAM (over TLS
or not) or TLS client certificates for Apache Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from shared import metrics
from shared.events import DeadLetter
from shared.settings import CommonSettings
from shared.topics import ALL_TOPICS, DEAD_LETTER, TopicSpec

log = logging.getLogger(__name__)


def cancel_requested() -> bool:
    """Whether the running task itself was asked to stop, rather than hit by a
    CancelledError escaping from one of aiokafka's own tasks (which happens when the
    broker goes away: a failure to recover from, not a stop)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def stop_if_cancelled() -> None:
    """Raise CancelledError if the running task was asked to stop. A loop that retries on
    errors calls it each turn: a library may turn our cancellation into another error (or
    swallow it), and the loop would then never stop."""
    if cancel_requested():
        raise asyncio.CancelledError


STOP_TIMEOUT_SECONDS = 5.0
"""A consumer stopped in the middle of joining its group waits for the join to finish,
which on a struggling broker may never happen: after this long it is left behind."""


async def stop_quietly(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop a client that may be broken, in bounded time; only our own cancellation gets
    through."""
    try:
        await asyncio.wait_for(client.stop(), STOP_TIMEOUT_SECONDS)
    except asyncio.CancelledError:
        if cancel_requested():
            raise
    except TimeoutError:
        log.warning("a Kafka client did not stop within %.0f s; left behind",
                    STOP_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - closing a broken client
        log.debug("closing a Kafka client failed: %r", exc)


def security_options(settings: CommonSettings) -> dict[str, Any]:
    """The aiokafka keyword arguments that make a client authenticate (and encrypt) as the
    settings say; every client of giapranh is built with them.

    PLAINTEXT: only `security_protocol`. SASL_*: the mechanism, user and password. SSL and
    SASL_SSL: an SSL context that verifies the brokers' certificates against
    `kafka_ssl_cafile` (the system's CAs without it) and their host names, and presents
    the client certificate when one is given. The settings have already refused
    inconsistent combinations.
    """
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol.value}
    if protocol.sasl:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism.value
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if protocol.tls:
        options["ssl_context"] = _ssl_context(
            settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return options


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: Path | None, certfile: Path | None,
                 keyfile: Path | None) -> ssl.SSLContext:
    """One context per set of files, shared by the process's clients (a stream rebuilds
    its clients on every reconnect; the files are read once, at the first)."""
    return create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)


def client_options(settings: CommonSettings) -> dict[str, Any]:
    """What every client needs: where the brokers are and how to authenticate."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, **security_options(settings)}


def producer_options(settings: CommonSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        **client_options(settings),
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": int(settings.kafka_request_timeout_seconds * 1000),
    }
    if settings.kafka_idempotent_producer:
        options["enable_idempotence"] = True
    return options


def create_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(client_id=client_id, **producer_options(settings))


async def start_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    """A started producer; nothing left open if the broker does not answer."""
    producer = create_producer(settings, client_id)
    try:
        await producer.start()
    except BaseException:
        await stop_quietly(producer)
        raise
    return producer


def consumer_options(settings: CommonSettings) -> dict[str, Any]:
    session_ms = int(settings.kafka_session_timeout_seconds * 1000)
    return {
        **client_options(settings),
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(100, session_ms // 4),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 1000,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
    }


def create_consumer(
    settings: CommonSettings, *topics: str, group_id: str | None, client_id: str
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics, group_id=group_id, client_id=client_id, **consumer_options(settings)
    )


async def publish_all(
    producer: AIOKafkaProducer, records: Iterable[tuple[str, bytes | None, bytes]],
    *, watch: LogWatch | None = None,
) -> int:
    """Send (topic, key, value) records and wait until the broker acknowledged all of them.

    Records are grouped into as few producer batches as fit, per partition, in the given
    order, so per-key order holds; the partition of a key is the one Kafka's default
    partitioner picks (murmur2), as for any other producer. One future per batch instead
    of one per message keeps bulk publishing cheap. With `watch`, the offsets the broker
    acknowledged are remembered, so a log that loses them is noticed (`LogWatch`).
    """
    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {}
    grouped: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
    for topic, key, value in records:
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        partition = partitioner(key, partitions[topic], partitions[topic])
        grouped.setdefault((topic, partition), []).append((key, value))
    pending: list[asyncio.Future[Any]] = []
    for (topic, partition), messages in grouped.items():
        batch = producer.create_batch()
        for key, value in messages:
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        pending.append(await producer.send_batch(batch, topic, partition=partition))
    acknowledged = await asyncio.gather(*pending)
    if watch is not None:
        for metadata in acknowledged:
            # The batch's first offset: Tansu reports a partition's end as the start of
            # its last batch + 1, not its last offset + 1 (Kafka reports more).
            watch.expect(metadata.topic_partition, metadata.offset + 1)
    return sum(len(messages) for messages in grouped.values())


class LogWatch:
    """Notices a broker that lost its log.

    A broker whose log is lost (Tansu keeps it in memory; an Apache Kafka topic deleted
    and recreated) goes on acknowledging sends, so producers and consumers see nothing
    wrong. A watch remembers how long each partition's log is known to be (the offsets a
    producer had acknowledged) and `check` compares that with the broker's metadata: a
    topic missing, or a partition whose log ends before what was known, is a loss. What was
    published and not yet confirmed consumed must then be published again from PostgreSQL
    (each caller knows what that is), or, when only what was acknowledged since the last
    whole check is gone (`wholly_lost`), that alone (`shared.stream.StreamRunner`).
    """

    def __init__(self, settings: CommonSettings, client_id: str, interval: float = 2.0):
        self._settings = settings
        self._client_id = client_id
        self.interval = interval
        self._known: dict[TopicPartition, int] = {}
        self._verified: dict[TopicPartition, int] = {}
        """Where each partition's log was known to end at the last check that found it
        whole."""
        self._client: AIOKafkaConsumer | None = None
        self._next_check = 0.0
        self.last_ok: float | None = None
        """Wall-clock time (epoch seconds) of the last check that found the log whole."""
        self._forgotten: dict[TopicPartition, tuple[int, int]] = {}
        self.wholly_lost: set[str] = set()
        """Of the topics the last check found lost, those gone altogether or shorter than
        the last whole check had found them (a broker that lost its log: what it held
        before that check is gone too). The others lost only what was acknowledged since
        the last whole check (Tansu may acknowledge a batch and drop it)."""

    def expect(self, partition: TopicPartition, end_offset: int) -> None:
        """The log of `partition` is known to hold offsets below `end_offset`."""
        if end_offset > self._known.get(partition, 0):
            self._known[partition] = end_offset

    def due(self) -> bool:
        return time.monotonic() >= self._next_check

    async def check(self, topics: Iterable[str]) -> set[str]:
        """The topics whose log was lost since the last check (empty: none). Forgets what
        it knew of them, so one loss is reported once."""
        self._next_check = time.monotonic() + self.interval
        # What was known before asking: sends acknowledged while the broker answers (other
        # tasks publish meanwhile) may end beyond the ends it reports, and are no loss.
        known = dict(self._known)
        if self._client is None:
            client = AIOKafkaConsumer(client_id=self._client_id, enable_auto_commit=False,
                                      request_timeout_ms=5000,
                                      **client_options(self._settings))
            await client.start()
            self._client = client
        listed = await self._client.topics()
        wanted = set(topics) | {tp.topic for tp in known}
        lost = {topic for topic in wanted if topic not in listed}
        wholly = set(lost)
        present = [tp for tp in known if tp.topic not in lost]
        if present:
            ends = await self._client.end_offsets(present)
            lost |= {tp.topic for tp in present if ends.get(tp, 0) < known[tp]}
            wholly |= {tp.topic for tp in present
                       if ends.get(tp, 0) < self._verified.get(tp, 0)}
        self._forgotten = {tp: (self._known.pop(tp, 0), self._verified.pop(tp, 0))
                           for tp in set(self._known) | set(self._verified) if tp.topic in lost}
        self._verified.update((tp, end) for tp, end in known.items() if tp.topic not in lost)
        self.wholly_lost = wholly
        if not lost:
            self.last_ok = time.time()
        return lost

    def unforget(self) -> None:
        """What the last check forgot of the topics it found lost, remembered again: the
        caller could not publish again what they lost, and the next check must find the
        loss again."""
        for tp, (known, verified) in self._forgotten.items():
            self.expect(tp, known)
            if verified > self._verified.get(tp, 0):
                self._verified[tp] = verified
        self._forgotten = {}

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await stop_quietly(client)


async def ensure_topics(
    settings: CommonSettings, specs: Iterable[TopicSpec] = ALL_TOPICS
) -> list[str]:
    """Create the registry's topics under the settings' prefix; returns those created."""
    admin = AIOKafkaAdminClient(client_id="giapranh-admin", **client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                settings.topic(spec.name),
                settings.topic_partitions,
                settings.topic_replication,
                topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for spec in specs
            if settings.topic(spec.name) not in existing
        ]
        if not wanted:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):  # another service was first
            await admin.create_topics(wanted)
        return [topic.name for topic in wanted]
    finally:
        await admin.close()


async def wait_for_broker(settings: CommonSettings, timeout: float = 30.0) -> None:
    """Wait until the brokers answer a metadata request, or raise TimeoutError."""
    deadline = asyncio.get_running_loop().time() + timeout
    last_error: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        admin = AIOKafkaAdminClient(request_timeout_ms=2000, **client_options(settings))
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = exc
            await asyncio.sleep(0.25)
        finally:
            await admin.close()
    raise TimeoutError(
        f"Kafka at {settings.kafka_bootstrap_servers} did not answer within {timeout:.0f} s: "
        f"{last_error!r}"
    )


class DeadLetterSink:
    """Parks messages a consumer cannot process on the dead-letter topic and counts them.

    `park` only enqueues the send; the caller awaits `flush` with the rest of its batch,
    so a poison message never costs a round trip of its own.
    """

    def __init__(self, producer: AIOKafkaProducer, settings: CommonSettings, service: str):
        self._producer = producer
        self._settings = settings
        self._service = service
        self._pending: list[asyncio.Future[Any]] = []

    async def park(self, record: ConsumerRecord, error: BaseException | str) -> None:
        letter = DeadLetter(
            service=self._service,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            payload=(record.value or b"").decode(errors="replace"),
            error=str(error)[:4000],
        )
        log.warning(
            "dead-lettered %s[%s]@%s: %s",
            record.topic, record.partition, record.offset, letter.error.splitlines()[0],
        )
        metrics.DEAD_LETTERS.labels(service=self._service, topic=record.topic).inc()
        topic, key, value = DEAD_LETTER.record(self._settings, letter)
        future = await self._producer.send(topic, value, key=key)
        self._pending.append(future)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
