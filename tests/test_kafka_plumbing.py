"""Kafka plumbing against the real broker."""

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from shared.kafka import create_producer, ensure_topics, publish_all
from shared.settings import CommonSettings
from tests.conftest import eventually


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

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=env.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    seen: dict[bytes, list[int]] = {}
    partition_of: dict[bytes, set[int]] = {}
    try:
        async def all_read():
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for message in messages:
                    seen.setdefault(message.key, []).append(int(message.value))
                    partition_of.setdefault(message.key, set()).add(tp.partition)
            return sum(map(len, seen.values())) >= 2000

        await eventually(all_read, what="2000 records")
    finally:
        await consumer.stop()
    for key, values in seen.items():
        assert values == sorted(values), f"{key!r} out of order"
        assert partition_of[key] == {DefaultPartitioner()(key, [0, 1, 2], [0, 1, 2])}
