"""`shared.http.LoadShedding` around a bare ASGI app on a real socket: a long-lived
stream counts among the requests in flight until its response starts, then not."""

import asyncio
import json

import httpx

from shared.http import LoadShedding
from shared.http_protocol import http_protocol
from tests.conftest import eventually, served


async def test_a_stream_counts_until_its_response_starts():
    gate, done = asyncio.Event(), asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/v1/alerts/stream":
            await gate.wait()  # (authenticating, checking its limits)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
            await done.wait()
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    shed = LoadShedding(app, limit=1, service="test")

    async def counted(n):
        async def check():
            return shed.in_flight == n
        return check

    async with served(shed) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        async def open_stream():
            async with client.stream("GET", "/v1/alerts/stream") as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    break
                await done.wait()

        first = asyncio.create_task(open_stream())
        await eventually(await counted(1), what="the stream's setup counted")
        refused = await client.get("/v1/alerts/stream")  # (a flood of them is shed)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        gate.set()
        await eventually(await counted(0), what="the stream no longer counted once started")
        assert (await client.get("/other")).status_code == 200  # while the stream stays open
        assert not first.done()
        done.set()
        await first


async def _raw(port: int, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes, bool]:
    """Sends `request`, reads one response: status line, headers, body, and whether the
    server then closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    status = await asyncio.wait_for(reader.readline(), 5)
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        headers[name.lower()] = value.strip()
    body = b"" if request.startswith(b"HEAD") else await reader.readexactly(
        int(headers[b"content-length"]))
    try:
        after = await asyncio.wait_for(reader.read(1), 0.3)
    except TimeoutError:
        after = None
    assert not after, f"more than one response: {after!r}"  # (a HEAD's answer has no body)
    writer.close()
    return status, headers, body, after == b""


async def test_the_protocols_refusal_is_the_apps_own_without_running_it():
    """`serve` gives the protocol the app's refusal (`early_refusal`): a refused request is
    answered from the parser, and the answer must be the one the app would give."""
    gate = asyncio.Event()
    reached = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        reached.append(scope["path"])
        if scope["path"] == "/hold":
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    shed = LoadShedding(app, limit=1, service="test")
    answers = {}
    for early in (False, True):
        protocol = http_protocol("test", early_refusal=shed.refusal_now if early else None)
        async with served(shed, protocol) as url, httpx.AsyncClient(base_url=url) as client:
            port = int(url.rsplit(":", 1)[1])
            holding = asyncio.create_task(client.get("/hold"))
            await eventually(lambda: _true(shed.in_flight == 1), what="a request in flight")
            reached.clear()
            answers[early] = [
                await _raw(port, b"POST /x HTTP/1.1\r\nhost: t\r\naccept-language: vi\r\n"
                                 b"content-length: 3\r\n\r\nabc"),
                await _raw(port, b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n"),
                await _raw(port, b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"),
            ]
            assert reached == []  # (refused before any route)
            # A refused request's body sent after its answer is dropped, not read as the
            # next request.
            smuggled = b"GET /smuggled HTTP/1.1\r\nhost: t\r\n\r\n"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n"
                         % len(smuggled))
            assert b" 503 " in await asyncio.wait_for(reader.readline(), 5)
            writer.write(smuggled)
            gate.set()
            assert (await holding).status_code == 200
            await asyncio.sleep(0.1)
            writer.write(b"GET /after HTTP/1.1\r\nhost: t\r\n\r\n")
            data = b""
            while not (b"HTTP/1.1 200" in data and data.endswith(b"ok\r\n0\r\n\r\n")):
                more = await asyncio.wait_for(reader.read(4096), 5)
                assert more, data
                data += more
            assert reached == ["/after"], reached
            writer.close()
            gate.clear()

    for (status, headers, body, closed), (status0, headers0, body0, closed0) in zip(
            answers[True], answers[False], strict=True):
        assert status == status0 == b"HTTP/1.1 503 Service Unavailable\r\n"
        for varying in (b"date",):
            headers.pop(varying), headers0.pop(varying)
        assert headers == headers0 and body == body0 and closed == closed0
    (_, headers, body, closed), (_, _, head_body, _), (_, _, _, close_closed) = answers[True]
    assert headers[b"retry-after"] == b"1" and not closed
    assert "đang" in json.loads(body)["error"]["message"]  # (in the caller's language)
    assert head_body == b"" and close_closed


async def _true(value: bool) -> bool:
    return value


async def test_refusals_from_the_parser_are_bounded_per_connection():
    """While overloaded, each request is answered from the parser at once; a connection
    pipelining thousands without reading must not get thousands of answers made (each
    kept in memory until read: an attacker took an instance to 2.6 GB)."""
    gate = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    shed = LoadShedding(app, limit=1, service="test")
    async with served(shed) as url, httpx.AsyncClient(base_url=url) as client:
        holding = asyncio.create_task(client.get("/hold"))
        await eventually(lambda: _true(shed.in_flight == 1), what="a request in flight")
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n" * 5_000)
        data = b""
        while more := await asyncio.wait_for(reader.read(1 << 16), 5):
            data += more
        answered = data.count(b"HTTP/1.1 503")
        assert 0 < answered <= 32, answered
        gate.set()
        assert (await holding).status_code == 200
