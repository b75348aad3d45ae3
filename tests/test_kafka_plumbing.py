"""Kafka plumbing against the real broker."""

from aiokafka.partitioner import DefaultPartitioner

from shared.kafka import create_producer, ensure_topics, publish_all
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
