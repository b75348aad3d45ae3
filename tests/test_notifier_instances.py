"""Two notifier instances share the hit partitions and never raise an alert twice."""

import uuid

from aiokafka import AIOKafkaProducer

from giapranh.demo import DEMO_ENTRIES
from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from shared.events import HitFound, Place
from shared.settings import CommonSettings
from shared.topics import HITS
from tests.conftest import _serve, eventually


def hit(n: int) -> HitFound:
    entry = DEMO_ENTRIES[0].model_copy(update={"entry_id": f"E-{n}"})  # keys spread partitions
    return HitFound.model_validate(HITS.example()).model_copy(update={
        "hit_id": uuid.uuid5(uuid.NAMESPACE_URL, f"hit-{n}"), "entry": entry,
        "place": Place(unit_code="CA-31212")})


async def test_two_notifiers_split_the_hits_and_store_each_alert_once(env, topics, directory, pool):
    settings = env.settings(NotifierSettings)
    async for first in _serve(create_app(settings)):
        async for second in _serve(create_app(settings)):
            consumers = [first.app.state.hit_consumer, second.app.state.hit_consumer]

            async def both_hold_partitions():
                return all(c.ready.is_set() for c in consumers)

            await eventually(both_hold_partitions, timeout=30, what="both notifiers in the group")
            producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
            await producer.start()
            try:
                topic = env.settings(CommonSettings).topic(HITS.name)
                hits = [hit(n) for n in range(40)]
                for redelivered in [*hits, *hits[:15]]:  # at-least-once: some arrive twice
                    await producer.send(topic, redelivered.model_dump_json().encode(),
                                        key=redelivered.entry.entry_id.encode())
                # A sentinel last on each partition: once its alert exists, everything
                # before it on that partition, repeats included, has been consumed.
                for partition, n in ((0, 1000), (1, 1001)):
                    await producer.send(topic, hit(n).model_dump_json().encode(),
                                        partition=partition)
                await producer.flush()
            finally:
                await producer.stop()

            async def all_consumed():
                return await pool.fetchval("SELECT count(*) FROM alerts") >= 42

            await eventually(all_consumed, what="every hit and both sentinels")
            assert await pool.fetchval("SELECT count(*) FROM alerts") == 42
            assert await pool.fetchval("SELECT count(DISTINCT hit_id) FROM alerts") == 42
