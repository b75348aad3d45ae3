"""Duty desks receive their alerts live over server-sent events, and only theirs."""

import asyncio
import json
import uuid

import httpx
from aiokafka import AIOKafkaProducer

from giapranh.demo import DEMO_ENTRIES
from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from shared.auth import issue_api_key_row
from shared.events import HitFound, Place
from shared.settings import CommonSettings
from shared.topics import HITS
from tests.conftest import bearer, eventually, served


async def read_alerts(url, key, count, into):
    async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "GET", f"{url}/v1/alerts/stream", headers=bearer(key)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = {}
        async for line in response.aiter_lines():
            if line.startswith(("event:", "id:", "data:")):
                field, _, value = line.partition(":")
                event[field] = value.strip()
            elif line == "" and "data" in event:
                into.append({**event, "data": json.loads(event["data"])})
                event = {}
                if len(into) == count:
                    return


def hit(n: int, owner: str) -> HitFound:
    entry = DEMO_ENTRIES[0].model_copy(update={"entry_id": f"E-{n}", "owner_unit": owner})
    return HitFound.model_validate(HITS.example()).model_copy(update={
        "hit_id": uuid.uuid5(uuid.NAMESPACE_URL, f"stream-hit-{n}"), "entry": entry,
        "place": Place(unit_code="CA-31212"),
        "score": 0.9321})  # (not exact as PostgreSQL's `real` keeps it: as read back)


async def test_desks_receive_only_their_alerts_live(env, topics, directory):
    async with served(create_app(env.settings(NotifierSettings))) as url:
        async with httpx.AsyncClient() as client:
            async def consumer_ready():
                return (await client.get(f"{url}/healthz")).json()["hit_consumer"] == "ready"

            await eventually(consumer_ready, what="the hit consumer")
        owner_events, outsider_events = [], []
        readers = [asyncio.create_task(read_alerts(url, directory["CA-30307"], 2, owner_events)),
                   asyncio.create_task(read_alerts(url, directory["CA-22051"], 1, outsider_events))]
        await asyncio.sleep(0.5)  # both streams subscribed
        producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
        await producer.start()
        try:
            topic = env.settings(CommonSettings).topic(HITS.name)
            first, second = hit(1, "CA-30307"), hit(2, "CA-22051")
            await producer.send_and_wait(topic, first.model_dump_json().encode(), partition=0)
            await producer.send_and_wait(topic, second.model_dump_json().encode(), partition=0)
        finally:
            await producer.stop()
        await asyncio.wait_for(asyncio.gather(*readers), timeout=20)
        # The stream writes its JSON straight from the stored alert (not through the
        # model): the same alert as the API gives.
        # Each unit's own view: the alert's columns read once for both units, each
        # joined to the unit's own delivery (why it was told, its actions).
        async with httpx.AsyncClient(base_url=url) as client:
            for unit, events in (("CA-30307", owner_events), ("CA-22051", outsider_events)):
                for event in events:
                    got = await client.get(f"/v1/alerts/{event['id']}",
                                           headers=bearer(directory[unit]))
                    assert got.json() == event["data"]

    # The listing unit of the first hit, and seen-unit partner of both, gets both live.
    assert [e["data"]["hit_id"] for e in owner_events] == [str(first.hit_id), str(second.hit_id)]
    assert all(e["event"] == "alert" and e["id"] == e["data"]["alert_id"] for e in owner_events)
    assert owner_events[0]["data"]["why_you"][0] == "this unit listed the subject"
    # Sông Cầu is concerned by the second hit only: its first event is that one.
    assert [e["data"]["hit_id"] for e in outsider_events] == [str(second.hit_id)]


async def test_the_stream_needs_a_key(env, topics, directory):
    async with served(create_app(env.settings(NotifierSettings))) as url:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{url}/v1/alerts/stream")
    assert response.status_code == 401


async def _open_stream(url, key, opened, ended):
    async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "GET", f"{url}/v1/alerts/stream", headers=bearer(key)) as response:
        assert response.status_code == 200
        opened.set()
        async for _ in response.aiter_lines():
            pass
    ended.set()


async def test_a_revoked_or_expired_key_loses_its_open_stream_within_a_second(
    env, topics, directory, pool
):
    from datetime import UTC, datetime, timedelta

    from shared.auth import issue_api_key, revoke_api_key

    pepper = env.settings(CommonSettings).api_key_pepper.get_secret_value()
    revoked_key = await issue_api_key(pool, "CA-30307", pepper, label="desk 1")
    expiring_key = await issue_api_key(pool, "CA-30307", pepper, label="desk 2",
                                       expires_at=datetime.now(UTC) + timedelta(seconds=3))
    async with served(create_app(env.settings(NotifierSettings))) as url:
        flags = {name: (asyncio.Event(), asyncio.Event()) for name in ("revoked", "expiring")}
        streams = [asyncio.create_task(_open_stream(url, key, *flags[name]))
                   for name, key in (("revoked", revoked_key), ("expiring", expiring_key))]
        for opened, _ in flags.values():
            await asyncio.wait_for(opened.wait(), 10)
        [key_id] = [k.id for k in await _keys(pool) if k.label == "desk 1"]
        await revoke_api_key(pool, key_id)
        await asyncio.wait_for(flags["revoked"][1].wait(), 1.0)  # within a second
        assert not flags["expiring"][1].is_set()
        await asyncio.wait_for(flags["expiring"][1].wait(), 3 + 1.0)
        await asyncio.gather(*streams)
        async with httpx.AsyncClient() as client:
            again = await client.get(f"{url}/v1/alerts/stream", headers=bearer(revoked_key))
        assert again.status_code == 401


async def _keys(pool):
    from shared.auth import list_api_keys

    return await list_api_keys(pool)


async def test_a_key_holds_a_limited_number_of_streams(env, topics, directory):
    settings = env.settings(NotifierSettings, notifier_max_streams_per_key=2)
    async with served(create_app(settings)) as url:
        key = directory["CA-30307"]
        flags = [(asyncio.Event(), asyncio.Event()) for _ in range(2)]
        streams = [asyncio.create_task(_open_stream(url, key, *f)) for f in flags]
        for opened, _ in flags:
            await asyncio.wait_for(opened.wait(), 10)
        async with httpx.AsyncClient() as client:
            third = await client.get(f"{url}/v1/alerts/stream", headers=bearer(key))
            other_unit = await client.get(f"{url}/v1/alerts", headers=bearer(
                directory["CA-31212"]))
        assert third.status_code == 429 and "retry-after" in third.headers
        assert third.json()["error"]["code"] == "rate_limited"
        assert other_unit.status_code == 200
        for task in streams:
            task.cancel()


async def test_a_unit_holds_a_limited_number_of_streams_whatever_its_keys(
        env, topics, directory, pool):
    """A unit admin mints keys at will: the unit's streams are capped too, all its keys
    together, and another unit's streams are not."""
    settings = env.settings(NotifierSettings, notifier_max_streams_per_key=5,
                            notifier_max_streams_per_unit=2)
    pepper = settings.api_key_pepper.get_secret_value()
    extra = [(await issue_api_key_row(pool, "CA-30307", pepper, role="desk"))[1]
             for _ in range(2)]
    async with served(create_app(settings)) as url:
        flags = [(asyncio.Event(), asyncio.Event()) for _ in range(2)]
        streams = [asyncio.create_task(_open_stream(url, key, *f))
                   for key, f in zip([directory["CA-30307"], extra[0]], flags, strict=True)]
        for opened, _ in flags:
            await asyncio.wait_for(opened.wait(), 10)
        async with httpx.AsyncClient() as client:
            third = await client.get(f"{url}/v1/alerts/stream", headers=bearer(extra[1]))
        assert third.status_code == 429, third.text
        assert "GIAPRANH_NOTIFIER_MAX_STREAMS_PER_UNIT" in third.json()["error"]["message"]
        other, other_ended = asyncio.Event(), asyncio.Event()
        other_unit = asyncio.create_task(_open_stream(url, directory["CA-31212"], other,
                                                      other_ended))
        await asyncio.wait_for(other.wait(), 10)
        for task in [*streams, other_unit]:
            task.cancel()


async def test_a_stream_its_client_closed_no_longer_counts_against_the_key(
        env, topics, directory):
    settings = env.settings(NotifierSettings, notifier_max_streams_per_key=1)
    async with served(create_app(settings)) as url:
        key = directory["CA-30307"]
        opened, ended = asyncio.Event(), asyncio.Event()
        stream = asyncio.create_task(_open_stream(url, key, opened, ended))
        await asyncio.wait_for(opened.wait(), 10)
        async with httpx.AsyncClient() as client:
            second = await client.get(f"{url}/v1/alerts/stream", headers=bearer(key))
        assert second.status_code == 429
        stream.cancel()  # the desk closes the page

        async def reopened():
            async with httpx.AsyncClient(timeout=5) as client, client.stream(
                    "GET", f"{url}/v1/alerts/stream", headers=bearer(key)) as response:
                return response.status_code == 200

        await eventually(reopened, what="the key's one stream to be free again")


async def test_a_stream_with_a_request_pipelined_behind_it_ends_when_its_client_goes(
        env, topics, directory):
    """uvicorn tells only the latest request parsed that the connection is lost: with a
    request pipelined behind a live stream, the stream never learnt its client had gone,
    and held its place among the key's and the unit's streams until a restart."""
    app = create_app(env.settings(NotifierSettings))
    key = directory["CA-30307"]
    async with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write((f"GET /v1/alerts/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                          f"{key}\r\n\r\nGET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: "
                          f"Bearer {key}\r\n\r\n").encode())
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
            writer.close()
        feed = app.state.feed

        async def all_closed() -> bool:
            return feed.streams_of_unit("CA-30307") == 0

        await eventually(all_closed, timeout=10, what="the streams whose clients went to end")


async def test_open_streams_leave_the_requests_in_flight_once_they_start(
        env, topics, directory):
    """A live stream counts among the instance's requests in flight, and its unit's, only
    until it starts: more streams than either limit stay open, and the unit's requests
    are still served."""
    settings = env.settings(NotifierSettings, max_requests_in_flight=4,
                            notifier_max_streams_per_key=5)  # (1 place for the unit)
    key = directory["CA-30307"]
    async with served(create_app(settings)) as url:
        streams, opened = [], []
        for _ in range(5):
            opened.append(asyncio.Event())
            streams.append(asyncio.create_task(
                _open_stream(url, key, opened[-1], asyncio.Event())))
            await asyncio.wait_for(opened[-1].wait(), 10)  # (else refused: 503 or 429)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            me = await client.get("/v1/me", headers=bearer(key))
        assert me.status_code == 200, me.text
        for stream in streams:
            stream.cancel()
