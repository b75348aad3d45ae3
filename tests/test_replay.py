"""`giapranh replay`: events accepted in a period published again from PostgreSQL,
harmlessly (the same report matched twice makes one alert)."""

import asyncio
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from giapranh.cli import app
from shared.settings import CommonSettings
from tests.conftest import bearer, eventually, read_topic
from tests.test_matcher_stream import alerts_on, list_via_api
from tests.test_pipeline import SIGHTING, matcher_knows

HUNG = {"category": "wanted_person", "full_name": "Nguyễn Văn Hùng",
        "national_id": "089091004217"}


async def test_a_replay_publishes_the_periods_events_again_and_raises_nothing_twice(
    env, pool, directory, ingest, notifier, matcher
):
    owner, seer = directory["CA-30307"], directory["CA-31212"]
    await list_via_api(ingest, owner, "LX-HUNG", HUNG)
    await matcher_knows(matcher, 1)
    since = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(seer))
    [alert] = await eventually(lambda: alerts_on(notifier, owner, "LX-HUNG"), what="the alert")

    result = await asyncio.to_thread(CliRunner().invoke, app, [
        "replay", "--since", since.strftime("%Y-%m-%dT%H:%M:%S"), "--topic", "sightings",
        "--no-wait", "--database-url", env.database_url])
    assert result.exit_code == 0, result.output
    assert "1 event(s) queued for publishing again" in result.output

    topic = env.settings(CommonSettings).topic("sightings")
    records = await read_topic(env, topic, 2, settle=1.0)  # the original and the replay
    assert [r.value for r in records].count(records[0].value) == 2
    await asyncio.sleep(1.0)  # the matcher has matched it again by now
    assert await alerts_on(notifier, owner, "LX-HUNG") == [alert]
    assert alert["correlation_id"] == accepted.json()["event_id"]

    refused = await asyncio.to_thread(CliRunner().invoke, app, [
        "replay", "--since", "2026-01-01", "--topic", "alerts", "--database-url",
        env.database_url])
    assert refused.exit_code != 0 and "unknown topic" in refused.output
