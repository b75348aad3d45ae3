"""A request that needs a key is authenticated before its body is read (`KeyFirstRoute`).

FastAPI reads a body before it solves any dependency: a client without a key could announce
a body, never send it, and hold its request among those in flight for as long as it kept
the connection open (an attacking helper refused everyone else with 512 such connections).
Each route of both APIs is tried on a real socket with a head and no body."""

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY

from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.notifier.app import create_app as create_notifier
from services.notifier.settings import NotifierSettings
from shared.auth import issue_api_key
from shared.http import CurrentUnit, KeyFirstRoute
from shared.settings import CommonSettings
from tests.conftest import bearer, eventually, served
from tests.test_load_shedding import sighting

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _routes(routes):
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        else:  # (an included router)
            inner = getattr(route, "original_router", route)
            yield from _routes(getattr(inner, "routes", []))


async def _head_only(port: int, method: str, path: str, headers: str = "") -> bytes:
    """Sends a head announcing a 64-byte body, and no body: the status line answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json"
                     f"\r\nContent-Length: 64\r\n{headers}\r\n".encode())
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("service", ["ingest", "notifier"])
async def test_a_request_without_a_key_is_refused_before_its_body_comes(
        env, topics, directory, service):
    if service == "ingest":
        app = create_ingest(env.settings(IngestSettings))
    else:
        app = create_notifier(env.settings(NotifierSettings))
    routes = [route for route in _routes(app.routes) if route.methods & UNSAFE]
    assert len(routes) >= 6, [route.path for route in routes]  # (the walk found them)
    async with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        for route in routes:
            assert isinstance(route, KeyFirstRoute), route.path
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            for method in route.methods & UNSAFE:
                for headers in ("", "Authorization: Bearer not-a-key\r\n"):
                    status = await _head_only(port, method, path, headers)
                    assert status.startswith(b"HTTP/1.1 401 "), (method, path, headers, status)


async def test_a_keyed_request_still_reads_a_body_that_comes_late_and_counts_once(
        env, topics, directory):
    """Authenticated first, the body is read as before, and the key's request budget is
    spent once per request (a burst of 2 here: two pass, the third is refused)."""
    app = create_ingest(env.settings(IngestSettings, requests_per_minute_per_key=20))
    key = bearer(directory["CA-31212"])["Authorization"]
    answers = []
    async with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            payload = json.dumps(sighting()).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST /v1/sightings HTTP/1.1\r\nHost: test\r\nAuthorization: {key}"
                         f"\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(payload)
            answers.append(await asyncio.wait_for(reader.readline(), 10))
            writer.close()
    assert [answer[:12] for answer in answers] == [b"HTTP/1.1 202", b"HTTP/1.1 202",
                                                   b"HTTP/1.1 429"], answers


@pytest.mark.parametrize("path", ["/v1/sightings", "/v1/sightings/batch"])
async def test_a_client_leaving_in_the_middle_of_its_body_is_counted_not_logged_as_an_error(
        env, topics, directory, caplog, path):
    """Its request ends as 499 (nginx's "client closed request") in the request counts, with
    no traceback in the log, and nothing is stored of it."""
    app = create_ingest(env.settings(IngestSettings))
    key = bearer(directory["CA-31212"])["Authorization"]
    before = _requests("ingest", path, "499")
    async with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {key}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                     '{"subject": {"name": "NGUY'.encode())
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.transport.abort()
        await eventually(lambda: _counted("ingest", path, "499", before + 1),
                         what="the request counted as 499")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def _requests(service: str, route: str, status: str) -> float:
    return REGISTRY.get_sample_value("giapranh_http_requests_total", {
        "service": service, "route": route, "method": "POST", "status": status}) or 0.0


async def _counted(service: str, route: str, status: str, at_least: float) -> bool:
    return _requests(service, route, status) >= at_least


async def test_one_unit_holds_at_most_its_share_of_the_requests_in_flight(
        env, topics, directory, pool, caplog):
    """A unit's clients trickling bodies (each fast enough not to be cut off), on two of its
    keys, hold at most `max_requests_in_flight_per_unit` places together: its next request
    is refused at once, 429 `unit_busy` naming the setting, while another unit's request is
    taken in; and the places are given back as its requests end."""
    app = create_ingest(env.settings(IngestSettings, max_requests_in_flight=8,
                                     max_requests_in_flight_per_unit=2))
    pepper = env.settings(CommonSettings).api_key_pepper.get_secret_value()
    hostile = bearer(directory["CA-31212"])["Authorization"]
    second = bearer(await issue_api_key(pool, "CA-31212", pepper,
                                        role="reporter"))["Authorization"]
    other = bearer(directory["CA-30307"])["Authorization"]

    async with served(app) as url:
        port = int(url.rsplit(":", 1)[1])

        async def start(key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
            return await _begin(port, key)

        held = [await start(hostile), await start(second)]
        await asyncio.sleep(0.3)  # (both are being read)
        reader, writer, _ = await start(second)
        status = await asyncio.wait_for(reader.readline(), 5)
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).lower()
        body = json.loads(await asyncio.wait_for(reader.read(2000), 5))
        writer.close()
        assert status.startswith(b"HTTP/1.1 429 "), status
        assert b"retry-after: 1" in head, head
        assert body["error"]["code"] == "unit_busy", body
        assert body["error"]["field"] == "Authorization", body
        assert "GIAPRANH_MAX_REQUESTS_IN_FLIGHT_PER_UNIT" in body["error"]["message"], body
        # The operator learns which unit it is (once a minute per unit).
        told = [r.getMessage() for r in caplog.records if "unit_busy" in r.getMessage()]
        assert len(told) == 1 and "unit CA-31212 has 2 requests" in told[0], told
        # Another unit's key is not refused because of it.
        reader, writer, rest = await start(other)
        writer.write(rest)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 202 ")
        writer.close()
        # The held requests end normally, and give their places back.
        for reader, writer, rest in held:
            writer.write(rest)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 202 ")
            writer.close()
        reader, writer, rest = await start(hostile)
        writer.write(rest)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 202 ")
        writer.close()


async def _begin(port: int, key: str
                 ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A sighting whose head and first bytes were sent, the rest of its body (returned)
    not yet."""
    payload = json.dumps(sighting()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/sightings HTTP/1.1\r\nHost: test\r\nAuthorization: {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}"
                 f"\r\n\r\n".encode() + payload[:10])
    await writer.drain()
    return reader, writer, payload[10:]


async def _status(reader: asyncio.StreamReader) -> bytes:
    return (await asyncio.wait_for(reader.readline(), 10))[:12]


async def test_units_holding_many_places_leave_the_last_ones_to_others(
        env, topics, directory):
    """Two units each filling their share could leave nobody else a place (four did at
    the default shares): the last places (a quarter of a unit's share, here 1 of 8) are
    kept for units with fewer requests in flight."""
    app = create_ingest(env.settings(IngestSettings, max_requests_in_flight=8,
                                     max_requests_in_flight_per_unit=4))
    first, second, third = (bearer(directory[unit])["Authorization"]
                            for unit in ("CA-31212", "CA-30307", "CA-22051"))
    async with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        held = [await _begin(port, first) for _ in range(4)]
        held += [await _begin(port, second) for _ in range(3)]
        await asyncio.sleep(0.3)  # (7 of 8 places taken, the last one kept)
        reader, writer, _ = await _begin(port, second)
        assert await _status(reader) == b"HTTP/1.1 429"
        body = (await asyncio.wait_for(reader.read(4000), 5)).decode()
        assert "unit_busy" in body and "last 1 places of this instance" in body, body
        writer.close()
        reader, writer, rest = await _begin(port, third)  # (holding none: it gets it)
        writer.write(rest)
        assert await _status(reader) == b"HTTP/1.1 202"
        writer.close()
        for reader, writer, rest in held:
            writer.write(rest)
            assert await _status(reader) == b"HTTP/1.1 202"
            writer.close()
    assert app.state.unit_slots.total == 0


async def test_a_units_place_is_held_until_its_answer_is_written(env, topics, directory):
    """FastAPI writes an answer after the route's handler returned: a client leaving its
    answers unread must keep its unit's place while they are written, and give it back
    once they are (or the client is gone), whatever the answer."""
    app = create_ingest(env.settings(IngestSettings, max_requests_in_flight=8,
                                     max_requests_in_flight_per_unit=1))
    writing = asyncio.Event()
    finish = asyncio.Event()
    router = APIRouter(route_class=KeyFirstRoute)

    @router.get("/test/slow-answer")
    async def slow_answer(principal: CurrentUnit) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first "
            writing.set()
            await finish.wait()
            yield b"last"
        return StreamingResponse(chunks())

    app.include_router(router)
    key = bearer(directory["CA-31212"])
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        slow = asyncio.create_task(client.get("/test/slow-answer", headers=key))
        await asyncio.wait_for(writing.wait(), 10)
        refused = await client.post("/v1/sightings", json=sighting(), headers=key)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "unit_busy"
        finish.set()
        assert (await slow).content == b"first last"
        assert app.state.unit_slots.held("CA-31212") == 0
        accepted = await client.post("/v1/sightings", json=sighting(), headers=key)
        assert accepted.status_code == 202, accepted.text
        # A failing request gives its place back too.
        bad = await client.post("/v1/sightings", json={"subject": 1}, headers=key)
        assert bad.status_code == 422
        assert app.state.unit_slots.held("CA-31212") == 0
