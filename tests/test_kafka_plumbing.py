"""Kafka plumbing against the real broker."""

from aiokafka.partitioner import DefaultPartitioner

from shared.kafka import LogWatch, create_producer, ensure_topics, publish_all
from shared.settings import CommonSettings
from tests.conftest import read_topic


async def test_publish_all_keeps_per_key_order_on_the_default_partition(env):
    settings = env.settings(CommonSettings, topic_partitions=3)
    await ensure_topics(settings)
    topic = settings.topic("sightings")
    records = [(topic, f"unit-{i % 5}".encode(), f"{i}".encode()) for i in range(2000)]
    producer = create_producer(settings, client_id="test")
    await producer.start()
    try:
        assert await publish_all(producer, records) == 2000
    finally:
        await producer.stop()

    seen: dict[bytes, list[int]] = {}
    partition_of: dict[bytes, set[int]] = {}
    for message in await read_topic(env, topic, 2000):
        seen.setdefault(message.key, []).append(int(message.value))
        partition_of.setdefault(message.key, set()).add(message.partition)
    for key, values in seen.items():
        assert values == sorted(values), f"{key!r} out of order"
        assert partition_of[key] == {DefaultPartitioner()(key, [0, 1, 2], [0, 1, 2])}


async def test_a_log_watch_takes_no_send_acknowledged_during_its_check_for_a_loss(env):
    """A stream publishes while its watch asks the broker where each log ends: what was
    acknowledged meanwhile may end beyond the ends the broker gave, and is no loss. (It was
    taken for one under load: the notifier then announced five minutes of alerts again,
    42,400 at 2,000 alerts/s, and fell seconds behind.) A log truly shorter than what was
    acknowledged before the check is still a loss."""
    settings = env.settings(CommonSettings)
    await ensure_topics(settings)
    topic = settings.topic("alerts")
    watch = LogWatch(settings, client_id="test-watch")
    producer = create_producer(settings, client_id="test")
    await producer.start()
    try:
        await publish_all(producer, [(topic, b"k", b"before")], watch=watch)
        assert await watch.check([topic]) == set()
        client = watch._client
        assert client is not None
        asking = client.end_offsets

        async def while_asked(partitions):
            ends = await asking(partitions)
            # (sends acknowledged after the broker answered, before the watch compares)
            await publish_all(producer, [(topic, b"k", f"during {i}".encode())
                                         for i in range(5)], watch=watch)
            return ends

        client.end_offsets = while_asked
        assert await watch.check([topic]) == set()
        client.end_offsets = asking
        assert await watch.check([topic]) == set()
        partition = next(iter(watch._known))
        watch.expect(partition, watch._known[partition] + 10)  # more than the log holds
        assert await watch.check([topic]) == {topic}
    finally:
        await producer.stop()
        await watch.close()
