"""The live feed behind `GET /v1/alerts/stream`, on its own: a change reaches every open
stream of its units as one server-sent event, read and encoded once for all of them, and
idle streams hear a heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import timedelta
from uuid import UUID

from fastapi.sse import format_sse_event

from services.notifier.channels import ALERTS_CHANNEL, SseChannel
from services.notifier.clock import SystemClock
from services.notifier.feed import HEARTBEAT, AlertFeed, sse_event
from services.notifier.service import AlertService
from services.notifier.webhooks import WebhookChannel
from services.notifier.workflow import Deadlines
from shared.auth import KeyStore, Principal
from shared.settings import CommonSettings
from tests.conftest import eventually
from tests.notifier_helpers import WANTED, make_hit


def desk(unit: str, key_id: int) -> Principal:
    return Principal(unit_code=unit, role="desk", key_id=key_id)


async def test_a_change_is_read_and_encoded_once_for_all_of_a_units_streams(env, pool):
    renders: list[tuple[dict[str, list[UUID]], dict[str, frozenset[str]],
                        frozenset[UUID]]] = []

    async def render(wanted: dict[str, list[UUID]], languages: dict[str, frozenset[str]],
                     just_raised: frozenset[UUID]) -> dict[str, dict[UUID, dict[str, bytes]]]:
        renders.append((wanted, languages, just_raised))
        return {unit: {alert_id: {language: json.dumps({"alert_id": str(alert_id),
                                                        "for": unit, "in": language}).encode()
                                  for language in languages[unit]}
                       for alert_id in alert_ids}
                for unit, alert_ids in wanted.items()}

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
            # A change for two units with streams: read once for both, not once per unit.
            shared_id = uuid.uuid4()
            await pool.execute("SELECT pg_notify($1, $2)", ALERTS_CHANNEL, json.dumps({
                "alert_id": str(shared_id), "kind": "raised",
                "units": ["CA-30307", "CA-31212", "CA-22051"]}))
            there = await asyncio.wait_for(elsewhere.get(), 5)
            here = await asyncio.wait_for(queues[0].get(), 5)
    finally:
        await feed.stop()

    assert renders[0] == ({"CA-30307": [alert_id]}, {"CA-30307": frozenset({"en", "vi"})},
                          frozenset({alert_id}))
    # (CA-22051 has no stream here: nothing is read for it.)
    assert renders[1:] == [({"CA-30307": [shared_id], "CA-31212": [shared_id]},
                            {"CA-30307": frozenset({"en", "vi"}),
                             "CA-31212": frozenset({"en"})}, frozenset({shared_id}))]
    assert json.loads(there.frame.split(b"data: ")[1].split(b"\n")[0])["for"] == "CA-31212"
    assert json.loads(here.frame.split(b"data: ")[1].split(b"\n")[0])["for"] == "CA-30307"
    assert all(item is items[0] for item in [*items, *items_vi])  # one item for every stream
    for language in ("en", "vi"):
        assert items[0].frame_for(language) == (
            f'event: alert\ndata: {{"alert_id": "{alert_id}", "for": "CA-30307", '
            f'"in": "{language}"}}\nid: {alert_id}\n\n').encode()


async def test_idle_streams_hear_a_heartbeat(env, pool):
    async def render(wanted: dict[str, list[UUID]], languages: dict[str, frozenset[str]],
                     just_raised: frozenset[UUID]) -> dict[str, dict[UUID, dict[str, bytes]]]:
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


def test_an_event_is_written_as_fastapi_writes_it():
    """The one-line fast path writes the same bytes as FastAPI's own encoder, and data
    with line breaks (never from orjson, but possible) still goes through it."""
    alert_id = str(uuid.uuid4())
    for data in ('{"a": 1, "b": "x"}', '{"note": "tối nay"}', "two\nlines", "cr\rhere",
                 "crlf\r\nhere", ""):
        for event in ("alert", "update"):
            assert sse_event(event.encode(), data.encode(), alert_id.encode()) == \
                format_sse_event(data_str=data, event=event, id=alert_id)


async def test_a_new_alert_is_shown_as_written_and_as_read_back_alike(env, pool, directory):
    """The live streams show an alert this instance just raised from what it wrote, not
    from reading it back (`AlertService._keep_raised_views`): the same view, unit by unit,
    as the database's; none for a unit it was not sent to; and an alert changed since its
    raising (not "just raised") is read."""
    alerts = AlertService(pool, clock=SystemClock(), channels=[SseChannel(), WebhookChannel()],
                          deadlines=Deadlines(timedelta(minutes=10), timedelta(hours=1)),
                          radius_km=30)
    alerts.watching = lambda units: True
    hit = make_hit().model_copy(update={"score": 0.9321})  # (changed as `real` keeps it)
    [created] = await alerts.store_hits([hit])
    recipients = [r.unit_code for r in created.recipients]
    outsider = "CA-22051"
    assert outsider not in recipients and len(recipients) >= 2
    wanted = {unit: [created.alert_id] for unit in [*recipients, outsider]}
    languages = {unit: ["en", "vi"] for unit in wanted}

    read = await alerts.alert_views_json(wanted, languages)
    written = await alerts.alert_views_json(wanted, languages, {created.alert_id})
    assert sorted(read) == sorted(written) == sorted(recipients)  # (not the outsider's)
    for unit in recipients:
        for language in ("en", "vi"):
            assert json.loads(written[unit][created.alert_id][language]) == json.loads(
                read[unit][created.alert_id][language]), (unit, language)

    # Acknowledged here before its raising is shown: what was kept is dropped, the view
    # is read as it is now, even when asked for as just raised (its notifications came in
    # different batches).
    [again] = await alerts.store_hits([make_hit()])
    await alerts.acknowledge(again.alert_id, WANTED.owner_unit)
    views = await alerts.alert_views_json({WANTED.owner_unit: [again.alert_id]},
                                          {WANTED.owner_unit: ["en"]}, {again.alert_id})
    view = json.loads(views[WANTED.owner_unit][again.alert_id]["en"])
    assert view["status"] == "acknowledged" and view["acknowledged_at"] is not None

    # A place at -0.0 (which jsonb keeps as 0): the same view written and read.
    at_zero = make_hit(lat=-0.0, lon=-0.0)
    [zero] = await alerts.store_hits([at_zero])
    ask = {WANTED.owner_unit: [zero.alert_id]}, {WANTED.owner_unit: ["en"]}
    read_zero = await alerts.alert_views_json(*ask)
    written_zero = await alerts.alert_views_json(*ask, {zero.alert_id})
    written_text = written_zero[WANTED.owner_unit][zero.alert_id]["en"]
    assert b'"lat":0.0,"lon":0.0' in read_zero[WANTED.owner_unit][zero.alert_id]["en"]
    assert b'"lat":0.0,"lon":0.0' in written_text, written_text  # (-0.0 == 0.0 in Python)


async def test_an_alert_raised_and_changed_in_one_batch_is_not_just_raised(env, pool):
    """Its raising and a change come together: its views must be read as they are now."""
    calls: list[frozenset[UUID]] = []

    async def render(wanted: dict[str, list[UUID]], languages: dict[str, frozenset[str]],
                     just_raised: frozenset[UUID]) -> dict[str, dict[UUID, dict[str, bytes]]]:
        calls.append(just_raised)
        return {}

    keys = KeyStore(pool, env.settings(CommonSettings).api_key_pepper.get_secret_value())
    feed = AlertFeed(env.database_url, render, keys, max_streams_per_key=5)
    await feed.start()
    changed, raised = uuid.uuid4(), uuid.uuid4()
    try:
        with feed.subscribe(desk("CA-30307", 1)):
            # (one statement: the notifications arrive, and are taken, together)
            await pool.execute(
                "SELECT pg_notify($1, $2), pg_notify($1, $3), pg_notify($1, $4)",
                ALERTS_CHANNEL, *(json.dumps({"alert_id": str(alert_id), "kind": kind,
                                              "units": ["CA-30307"]})
                                  for alert_id, kind in ((changed, "raised"),
                                                         (raised, "raised"),
                                                         (changed, "updated"))))
            await eventually(lambda: asyncio.sleep(0, bool(calls)), what="a rendering")
    finally:
        await feed.stop()
    assert calls == [frozenset({raised})]


async def test_a_change_that_cannot_be_handed_out_closes_the_streams_not_the_feed(env, pool):
    """Whatever fails in handing out a change (here the rendering), its streams are closed
    for their desks to reload, and the feed goes on with the next changes."""
    failing = True

    async def render(wanted: dict[str, list[UUID]], languages: dict[str, frozenset[str]],
                     just_raised: frozenset[UUID]) -> dict[str, dict[UUID, dict[str, bytes]]]:
        if failing:
            raise ValueError("a rendering that fails")
        return {unit: {alert_id: {"en": b"{}"} for alert_id in alert_ids}
                for unit, alert_ids in wanted.items()}

    keys = KeyStore(pool, env.settings(CommonSettings).api_key_pepper.get_secret_value())
    feed = AlertFeed(env.database_url, render, keys, max_streams_per_key=5)
    await feed.start()

    async def notify(alert_id: UUID) -> None:
        await pool.execute("SELECT pg_notify($1, $2)", ALERTS_CHANNEL, json.dumps({
            "alert_id": str(alert_id), "kind": "raised", "units": ["CA-30307"]}))

    try:
        with feed.subscribe(desk("CA-30307", 1)) as closed:
            await notify(uuid.uuid4())
            assert await asyncio.wait_for(closed.get(), 5) is None  # (DISCONNECT)
        failing = False
        with feed.subscribe(desk("CA-30307", 2)) as queue:
            later = uuid.uuid4()
            await notify(later)
            assert (await asyncio.wait_for(queue.get(), 5)).alert_id == later
    finally:
        await feed.stop()
