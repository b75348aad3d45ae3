"""The live feed behind `GET /v1/alerts/stream`, on its own: a change reaches every open
stream of its units as one server-sent event, read and encoded once for all of them, and
idle streams hear a heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from uuid import UUID

from services.notifier.channels import ALERTS_CHANNEL
from services.notifier.feed import HEARTBEAT, AlertFeed
from shared.auth import KeyStore, Principal
from shared.settings import CommonSettings


def desk(unit: str, key_id: int) -> Principal:
    return Principal(unit_code=unit, role="desk", key_id=key_id)


async def test_a_change_is_read_and_encoded_once_for_all_of_a_units_streams(env, pool):
    renders: list[tuple[str, list[UUID], frozenset[str]]] = []

    async def render(unit: str, alert_ids: list[UUID],
                     languages: frozenset[str]) -> dict[UUID, dict[str, str]]:
        renders.append((unit, alert_ids, languages))
        return {alert_id: {language: json.dumps({"alert_id": str(alert_id), "for": unit,
                                                 "in": language})
                           for language in languages}
                for alert_id in alert_ids}

    keys = KeyStore(pool, env.settings(CommonSettings).api_key_pepper.get_secret_value())
    feed = AlertFeed(env.database_url, render, keys, max_streams_per_key=5)
    await feed.start()
    try:
        with contextlib.ExitStack() as streams:
            # More streams than one slice of the fan-out, on several keys.
            queues = [streams.enter_context(feed.subscribe(desk("CA-30307", n // 5)))
                      for n in range(250)]
            elsewhere = streams.enter_context(feed.subscribe(desk("CA-31212", 999)))
            # A desk reading Vietnamese on the same unit: one more rendering, not per stream.
            vietnamese = [streams.enter_context(feed.subscribe(desk("CA-30307", 500 + n), "vi"))
                          for n in range(3)]
            alert_id = uuid.uuid4()
            await pool.execute("SELECT pg_notify($1, $2)", ALERTS_CHANNEL, json.dumps({
                "alert_id": str(alert_id), "kind": "raised", "units": ["CA-30307"]}))
            items = [await asyncio.wait_for(queue.get(), 5) for queue in queues]
            items_vi = [await asyncio.wait_for(queue.get(), 5) for queue in vietnamese]
            assert elsewhere.empty()
    finally:
        await feed.stop()

    assert renders == [("CA-30307", [alert_id], frozenset({"en", "vi"}))]
    assert all(item is items[0] for item in [*items, *items_vi])  # one item for every stream
    for language in ("en", "vi"):
        assert items[0].frame_for(language) == (
            f'event: alert\ndata: {{"alert_id": "{alert_id}", "for": "CA-30307", '
            f'"in": "{language}"}}\nid: {alert_id}\n\n').encode()


async def test_idle_streams_hear_a_heartbeat(env, pool):
    async def render(unit: str, alert_ids: list[UUID],
                     languages: frozenset[str]) -> dict[UUID, dict[str, str]]:
        return {}

    keys = KeyStore(pool, env.settings(CommonSettings).api_key_pepper.get_secret_value())
    feed = AlertFeed(env.database_url, render, keys, max_streams_per_key=5,
                     heartbeat_seconds=0.1)
    await feed.start()
    try:
        with feed.subscribe(desk("CA-30307", 1)) as queue:
            assert await asyncio.wait_for(queue.get(), 5) is HEARTBEAT
    finally:
        await feed.stop()
    assert HEARTBEAT.frame == b": ping\n\n"
