"""A request that needs a key is authenticated before its body is read (`KeyFirstRoute`).

FastAPI reads a body before it solves any dependency: a client without a key could announce
a body, never send it, and hold its request among those in flight for as long as it kept
the connection open (an attacking helper refused everyone else with 512 such connections).
Each route of both APIs is tried on a real socket with a head and no body."""

import asyncio
import json
import logging
import re

import pytest
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY

from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.notifier.app import create_app as create_notifier
from services.notifier.settings import NotifierSettings
from shared.http import KeyFirstRoute
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
