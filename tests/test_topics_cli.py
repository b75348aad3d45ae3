"""`giapranh topics`: a deployment's topics listed, and emptied after a point-in-time
restore (only its own prefix's; refused while a matcher or notifier still consumes)."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from typer.testing import CliRunner

from giapranh.cli import app
from shared.settings import CommonSettings
from shared.topics import ALL_TOPICS, DEAD_LETTER
from tests.conftest import eventually


async def cli(env, *args: str):
    runner = CliRunner(env={**env.process_env(), "COLUMNS": "250"})
    return await asyncio.to_thread(runner.invoke, app, ["topics", *args])


async def listed(env) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap_servers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_emptying_deletes_the_deployments_topics_and_no_others(env, topics):
    settings = env.settings(CommonSettings)
    sightings = settings.topic("sightings")
    other = f"other-{settings.topic_prefix}sightings"  # another deployment on the broker
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(other, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(sightings, b"{}", partition=0)
    finally:
        await producer.stop()

    shown = await cli(env, "list")
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if sightings in line)
    assert "yes" in row and row.split()[-2] == "1", row  # (on the broker, 1 message)

    emptied = await cli(env, "empty", "--yes", "--wait", "0")
    assert emptied.exit_code == 0, emptied.output
    left = await listed(env)
    assert other in left
    dead_letters = settings.topic(DEAD_LETTER.name)  # (kept nowhere else: kept, unless asked)
    assert {settings.topic(spec.name) for spec in ALL_TOPICS} & left == {dead_letters}, left
    again = await cli(env, "empty", "--yes", "--dead-letters")
    assert again.exit_code == 0, again.output
    assert dead_letters not in await listed(env)
    nothing = await cli(env, "empty", "--yes")
    assert nothing.exit_code == 0 and "nothing to delete" in nothing.output, nothing.output


async def test_emptying_is_refused_while_a_service_still_consumes(env, topics):
    settings = env.settings(CommonSettings)
    group = f"{env.process_env()['GIAPRANH_MATCHER_GROUP_ID']}.reports"  # a running matcher's
    consumer = AIOKafkaConsumer(settings.topic("sightings"), group_id=group,
                                bootstrap_servers=env.bootstrap_servers,
                                session_timeout_ms=6000, heartbeat_interval_ms=500,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        async def joined() -> bool:
            return bool(consumer.assignment())

        await eventually(joined, timeout=30, what="the consumer to join its group")
        refused = await cli(env, "empty", "--yes", "--wait", "1")
        assert refused.exit_code == 1, refused.output
        assert f"consumer group {group}: still has 1 member(s)" in refused.output
        assert settings.topic("sightings") in await listed(env)  # nothing deleted

        forced = await cli(env, "empty", "--yes", "--force")
        assert forced.exit_code == 0, forced.output
        assert settings.topic("sightings") not in await listed(env)
    finally:
        await consumer.stop()
