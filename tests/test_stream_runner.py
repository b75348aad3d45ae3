"""The shared stream runner against the real broker: what reaches the output and the
dead-letter topic, and what is committed, when a handler fails in each way it can."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import DeadLetter, HitsWithdrawn, Place, SightingReported, Subject
from shared.http import background
from shared.kafka import create_producer, publish_all
from shared.settings import CommonSettings
from shared.stream import Message, Outcome, Stream, StreamRunner
from shared.topics import DEAD_LETTER, HITS, SIGHTINGS
from tests.conftest import eventually, read_topic


def sighting(name: str) -> SightingReported:
    return SightingReported(occurred_at=datetime.now(UTC), producer_unit="CA-31212",
                            subject=Subject(name=name), place=Place(unit_code="CA-31212"))


def withdrawal_for(report: SightingReported) -> HitsWithdrawn:
    """Any event on the hits topic will do: one per report handled, named after it."""
    return HitsWithdrawn(occurred_at=datetime.now(UTC), entry_id=f"E-{report.subject.name}",
                         owner_unit="CA-30307", version=1, reason="test")


async def produce(settings: CommonSettings, *events: SightingReported) -> None:
    producer = create_producer(settings, client_id="test")
    await producer.start()
    try:
        await publish_all(producer, (SIGHTINGS.record(settings, e) for e in events))
    finally:
        await producer.stop()


def running(runner: StreamRunner):  # noqa: ANN201 - an async context manager
    return background(runner.run(), "runner")


async def committed(settings: CommonSettings, group: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic(SIGHTINGS.name)
        total = 0
        for partition in range(settings.topic_partitions):
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


@pytest.fixture
def settings(env, topics) -> CommonSettings:
    return env.settings(CommonSettings)


async def test_a_failing_message_is_dead_lettered_alone_and_the_batch_is_committed(
    settings, env
):
    handled: list[str] = []

    async def handle(batch: Iterable[Message]) -> Outcome:
        messages = list(batch)
        if any(m.event.subject.name == "POISON" for m in messages):
            raise ValueError("cannot handle poison")
        handled.extend(m.event.subject.name for m in messages)
        return Outcome(publish=[(HITS, withdrawal_for(m.event)) for m in messages])

    group = f"{settings.topic_prefix}runner"
    runner = StreamRunner(settings, Stream("test.poison", "test", (SIGHTINGS,), group), handle)
    names = ["A", "B", "POISON", "C", "D"]
    await produce(settings, *(sighting(name) for name in names))
    async with running(runner):
        out = await read_topic(env, settings.topic(HITS.name), 4, settle=0.5)
        letters = await read_topic(env, settings.topic(DEAD_LETTER.name), 1, settle=0.3)
        await eventually(lambda: _equals(committed(settings, group), 5),
                         what="every offset committed")
    assert sorted(HITS.decode(r.value).entry_id for r in out) == ["E-A", "E-B", "E-C", "E-D"]
    [letter] = [DeadLetter.model_validate_json(r.value) for r in letters]
    assert letter.service == "test" and "cannot handle poison" in letter.error
    assert SIGHTINGS.decode(letter.payload).subject.name == "POISON"
    assert sorted(handled) == ["A", "B", "C", "D"]


async def _equals(value, expected) -> bool:
    return await value == expected


async def test_a_transient_failure_is_retried_until_it_passes_and_nothing_is_lost(
    settings, env
):
    failures = 2

    async def handle(batch: Iterable[Message]) -> Outcome:
        nonlocal failures
        messages = list(batch)
        if failures:
            failures -= 1
            raise ConnectionRefusedError("database unreachable")
        return Outcome(publish=[(HITS, withdrawal_for(m.event)) for m in messages])

    group = f"{settings.topic_prefix}transient"
    runner = StreamRunner(settings, Stream("test.transient", "test", (SIGHTINGS,), group),
                          handle)
    await produce(settings, sighting("A"), sighting("B"))
    async with running(runner):
        out = await read_topic(env, settings.topic(HITS.name), 2, settle=0.5)
        await eventually(lambda: _equals(committed(settings, group), 2), what="the commit")
    assert sorted(HITS.decode(r.value).entry_id for r in out) == ["E-A", "E-B"]
    assert failures == 0


async def test_a_stream_without_a_group_reads_every_partition_in_every_runner(settings):
    seen: list[list[str]] = [[], []]

    def recorder(into: list[str]):
        async def handle(messages: Iterable[Message]) -> Outcome:
            into.extend(m.event.subject.name for m in messages)
            return Outcome()
        return handle

    # Published before the runners start: they read from the beginning.
    names = [f"S{n}" for n in range(20)]
    await produce(settings, *(sighting(n).model_copy(update={"producer_unit": f"CA-{n}"})
                              for n in names))  # keys spread over the partitions
    runners = [StreamRunner(settings, Stream(f"test.all{i}", "test", (SIGHTINGS,), None),
                            recorder(seen[i])) for i in range(2)]
    async with running(runners[0]), running(runners[1]):
        async def both_read_everything() -> bool:
            return all(sorted(s) == sorted(names) for s in seen)

        await eventually(both_read_everything, what="both runners to read all 20")
        assert all(runner.ready.is_set() for runner in runners)


async def test_a_runner_stops_when_cancelled_even_if_a_library_turns_the_cancellation_into_an_error(  # noqa: E501
    settings, env
):
    """aiokafka and asyncpg may turn a cancellation into their own error (or swallow it):
    the runner's retry loops must still stop, or the service never shuts down."""
    entered = asyncio.Event()

    async def handle(batch: Iterable[Message]) -> Outcome:
        list(batch)
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionResetError("the connection was closed") from None  # "transient"
        return Outcome()

    runner = StreamRunner(settings, Stream("test.cancel", "test", (SIGHTINGS,),
                                           f"{settings.topic_prefix}cancel"), handle)
    await produce(settings, sighting("A"))
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(entered.wait(), 30)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done, "the runner went on retrying after it was cancelled"
    assert task.cancelled()


async def _checked(runner: StreamRunner) -> None:
    """Have the runner's log watch check now, and wait until it found the log whole."""
    watch = runner._watch
    before = watch.last_ok
    watch._next_check = 0.0
    await eventually(lambda: _true(watch.last_ok != before), what="a whole check of the log")


async def _true(value: bool) -> bool:
    return value


def _dropped_by_the_broker(runner: StreamRunner, topic: str, *, since_checked: bool):
    """After its batch was acknowledged, make the watch believe the broker acknowledged
    more than its log holds, as Tansu does when it drops a batch it acknowledged: only
    what was sent since the last whole check (`since_checked`), or the log before too."""
    async def drop() -> None:
        watch = runner._watch
        for partition in [tp for tp in watch._known if tp.topic == topic]:
            watch._known[partition] += 10_000
            if not since_checked:
                watch._verified[partition] = watch._known[partition]
    return drop


def _dropping_runner(settings: CommonSettings, name: str, on_log_lost, *,
                     drops: dict[str, bool], resend_dropped: bool) -> StreamRunner:
    """A runner publishing a withdrawal per sighting, whose batch holding a sighting named
    in `drops` is then dropped by the broker (`_dropped_by_the_broker`, `since_checked` the
    name's value); its log watch checks only when a test asks."""
    async def handle(batch: Iterable[Message]) -> Outcome:
        messages = list(batch)
        after = None
        for m in messages:
            if m.event.subject.name in drops:
                after = _dropped_by_the_broker(runner, settings.topic(HITS.name),
                                               since_checked=drops[m.event.subject.name])
        return Outcome(publish=[(HITS, withdrawal_for(m.event)) for m in messages],
                       after_ack=after)

    runner = StreamRunner(settings, Stream(f"test.{name}", "test", (SIGHTINGS,),
                                           f"{settings.topic_prefix}{name}",
                                           on_log_lost=on_log_lost,
                                           resend_dropped=resend_dropped), handle)
    runner._watch.interval = 3600
    return runner


async def _b_dropped_after_a_whole_check(settings: CommonSettings, env, runner: StreamRunner,
                                         asked: list[set[str]]) -> None:
    """A handled and its output checked whole; then B, whose output the broker drops;
    a check, until it asked `on_log_lost`."""
    out = settings.topic(HITS.name)
    await produce(settings, sighting("A"))
    await read_topic(env, out, 1)
    await _checked(runner)
    await produce(settings, sighting("B"))
    await read_topic(env, out, 2)
    runner._watch._next_check = 0.0
    await eventually(lambda: _true(bool(asked)), what="on_log_lost")


async def test_what_the_broker_dropped_after_acknowledging_it_is_published_again_alone(
    settings, env
):
    """Under load Tansu may acknowledge a batch and drop it. The runner's log watch
    notices the output's log shorter than what was acknowledged; when all it held at the
    last whole check is still there, only what was sent since is published again (kept in
    memory), not the stream's whole `on_log_lost` window from PostgreSQL (the notifier's:
    five minutes of alerts, 42,400 of them at 2,000 alerts/s). When the log is shorter than
    at that check, it was lost wholly, and `on_log_lost` is asked."""
    out = settings.topic(HITS.name)
    asked: list[set[str]] = []

    async def on_log_lost(topics: set[str]):
        asked.append(topics)
        return [(HITS, withdrawal_for(sighting("FROM-POSTGRESQL")))]

    runner = _dropping_runner(settings, "dropped", on_log_lost, resend_dropped=True,
                              drops={"D": True, "E": True, "F": False})

    def names(records) -> list[str]:
        return sorted(HITS.decode(r.value).entry_id for r in records)

    async with running(runner):
        await produce(settings, sighting("A"), sighting("B"), sighting("C"))
        await read_topic(env, out, 3)
        await _checked(runner)
        assert runner._watch.wholly_lost == set()
        await produce(settings, sighting("D"), sighting("E"))
        await read_topic(env, out, 5)
        runner._watch._next_check = 0.0  # (it finds a loss)
        assert names(await read_topic(env, out, 7, settle=1.0)) == [
            "E-A", "E-B", "E-C", "E-D", "E-D", "E-E", "E-E"]
        assert asked == []
        await _checked(runner)  # (what was sent again is in the log: a whole check)
        await produce(settings, sighting("F"))
        await read_topic(env, out, 8)
        runner._watch._next_check = 0.0
        await eventually(lambda: _true(bool(asked)), what="on_log_lost")
        assert asked == [{out}]
        assert "E-FROM-POSTGRESQL" in names(await read_topic(env, out, 9, settle=0.5))


async def test_a_stream_whose_readers_need_the_order_rebuilds_what_was_dropped(settings, env):
    """Without `resend_dropped` (the matcher's hits: one sent again after the withdrawal of
    its entry would raise an alert for a cancelled entry), a log that lost what was sent
    since the last whole check is rebuilt by `on_log_lost`, nothing sent from memory."""
    out = settings.topic(HITS.name)
    asked: list[set[str]] = []

    async def on_log_lost(topics: set[str]):
        asked.append(topics)
        return []

    runner = _dropping_runner(settings, "ordered", on_log_lost, resend_dropped=False,
                              drops={"B": True})
    async with running(runner):
        await _b_dropped_after_a_whole_check(settings, env, runner, asked)
        assert asked == [{out}]
        assert len(await read_topic(env, out, 2, settle=1.0)) == 2


async def test_a_loss_not_published_again_is_found_again_at_the_next_check(settings, env):
    """When what a lost log held cannot be published again (PostgreSQL unreachable for
    `on_log_lost`, the broker gone again), the loss is not forgotten: the next check finds
    it again and asks again."""
    out = settings.topic(HITS.name)
    asked: list[set[str]] = []

    async def on_log_lost(topics: set[str]):
        asked.append(topics)
        if len(asked) == 1:
            raise ConnectionRefusedError("database unreachable")
        return [(HITS, withdrawal_for(sighting("FROM-POSTGRESQL")))]

    runner = _dropping_runner(settings, "again", on_log_lost, resend_dropped=True,
                              drops={"B": False})
    async with running(runner):
        await _b_dropped_after_a_whole_check(settings, env, runner, asked)
        await eventually(lambda: _true(runner.ready.is_set()), what="the runner back")
        runner._watch._next_check = 0.0
        await eventually(lambda: _true(len(asked) == 2), what="on_log_lost asked again")
        assert asked == [{out}, {out}]
        assert "E-FROM-POSTGRESQL" in [HITS.decode(r.value).entry_id
                                       for r in await read_topic(env, out, 3, settle=0.5)]
