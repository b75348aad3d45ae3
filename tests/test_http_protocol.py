"""The HTTP protocol every service runs (httptools, bounded): what a client without any key
can make an instance keep, and that ordinary requests still arrive whole."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY

from shared.http_protocol import (
    MAX_BODY_DROPPED,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_PIPELINE,
    http_protocol,
)
from tests.conftest import served

BIG = 8 * 1024 * 1024


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/slow")
    async def slow() -> StreamingResponse:
        async def ticks():
            for i in range(6):
                yield b"tick %d\n" % i
                await asyncio.sleep(0.25)
        return StreamingResponse(ticks(), media_type="text/plain")

    @app.get("/big")
    async def big() -> Response:
        return Response(b"x" * BIG, media_type="application/octet-stream")

    @app.post("/body")
    async def body(request: Request) -> dict[str, object]:
        data = await request.body()
        return {"length": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "headers": sorted({name for name, _ in request.headers.items()})}

    return app


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response (content-length framed, as ours are): status, headers, body."""
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line, "the connection closed without an answer"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 10) == b""


def _rejections(reason: str) -> float:
    return REGISTRY.get_sample_value("giapranh_http_rejections_total",
                                     {"service": "test", "reason": reason}) or 0.0


async def test_bodies_longer_than_a_parse_slice_arrive_whole_with_and_without_chunks():
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit, over many slices
    digest = hashlib.sha256(payload).hexdigest()
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(payload), payload))
        status, _, body = await _read_response(reader)
        assert status == 200 and json.loads(body)["sha256"] == digest

        # The same connection, chunked in 1,000-byte chunks, and a trailer.
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 1000]), payload[i:i + 1000])
                          for i in range(0, len(payload), 1000))
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                     + chunks + b"0\r\nx-trailer: late\r\n\r\n")
        status, _, body = await _read_response(reader)
        answer = json.loads(body)
        assert status == 200 and answer["sha256"] == digest and answer["length"] == len(payload)
        # A trailer never joins the headers of a request already running.
        assert "x-trailer" not in answer["headers"]
        writer.close()


async def test_a_head_past_the_bound_is_refused_431_and_the_connection_closed():
    before = _rejections("head_too_large")
    async with served(_app()) as url:
        # Many ordinary headers (fewer than the count bound) adding up past the byte bound.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        filler = b"".join(b"x-fill-%d: %s\r\n" % (i, b"a" * 1000)
                          for i in range(MAX_HEAD_BYTES // 1000 + 8))
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n" + filler + b"\r\n")
        status, headers, body = await _read_response(reader)
        assert status == 431 and headers["connection"] == "close"
        assert str(MAX_HEAD_BYTES).encode() in body
        assert await _closed(reader)

        # One header value that never ends, a kilobyte at a time: refused once past the bound,
        # not kept for ever.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\nx-long: ")
        sent = 0
        try:
            while sent < 4 * MAX_HEAD_BYTES:
                writer.write(b"b" * 1024)
                await writer.drain()
                sent += 1024
                await asyncio.sleep(0)
        except ConnectionError:
            pass
        status, _, _ = await _read_response(reader)
        assert status == 431
    assert _rejections("head_too_large") - before == 2


async def test_more_header_fields_than_the_bound_are_refused_431():
    before = _rejections("too_many_headers")
    async with served(_app()) as url:
        for count, expected in ((MAX_HEADERS - 1, 200), (MAX_HEADERS + 1, 431)):
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
            fields = b"".join(b"x-%d: 1\r\n" % i for i in range(count))
            writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n" + fields + b"\r\n")
            status, _, _ = await _read_response(reader)
            assert status == expected, count
            writer.close()
    assert _rejections("too_many_headers") - before == 1


async def test_trailers_past_the_bound_are_refused_before_the_request_is_answered():
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n")
        try:
            for i in range(2 * MAX_HEAD_BYTES // 64):
                writer.write(b"x-t: %s\r\n" % (b"c" * 57))  # 64 bytes, under the count bound
                if i % 64 == 0:
                    await writer.drain()
                    await asyncio.sleep(0)
        except ConnectionError:
            pass
        # (a count bound alone would have stopped them, so trailers count toward it too)
        status, _, _ = await _read_response(reader)
        assert status == 431
        assert await _closed(reader)


async def test_a_connection_pipelining_past_the_bound_is_answered_in_order_then_closed():
    requests = 5_000
    before = _rejections("pipeline_too_deep")
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n" * requests)  # never reading
        answered = 0
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if not line:
                break
            assert line.startswith(b"HTTP/1.1 200")
            while (header := await reader.readline()) != b"\r\n":
                if header.lower().startswith(b"content-length"):
                    length = int(header.split(b":")[1])
            await reader.readexactly(length)
            answered += 1
        # uvicorn's own protocol answers all 5,000 (and queued every head: a connection that
        # never reads took an instance to 4.4 GB); here those parsed before the bound are.
        assert MAX_PIPELINE < answered < requests
        # The instance is still serving others.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
    assert _rejections("pipeline_too_deep") - before >= 1


async def test_a_head_left_unfinished_is_answered_408_after_the_timeout():
    async with served(_app(), http_protocol("test", head_timeout=0.5)) as url:
        # A head finished in time is unaffected, and the connection stays usable after.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"\r\n")
        assert (await _read_response(reader))[0] == 200
        await asyncio.sleep(0.8)
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        assert (await _read_response(reader))[0] == 200

        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        started = time.monotonic()
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\nx-slow: 1")
        status, _, _ = await _read_response(reader)
        assert status == 408 and time.monotonic() - started >= 0.5
        assert await _closed(reader)

        # A connection that never sends a byte is closed too.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        started = time.monotonic()
        assert await _closed(reader) and time.monotonic() - started >= 0.5


async def test_a_body_after_an_upgrade_request_is_never_read_as_a_request_of_its_own():
    """llhttp ends a request asking for another protocol at its head; uvicorn's protocol then
    parses what comes next as new requests, so a body sent a moment later was answered as
    a request (smuggled past whatever looked at the first), and the app got an empty body."""
    smuggled = b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n"
    before = _rejections("upgrade")
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\n"
                     b"upgrade: h2c\r\ncontent-length: %d\r\n\r\n" % len(smuggled))
        await writer.drain()
        await asyncio.sleep(0.2)
        with contextlib.suppress(ConnectionError):
            writer.write(smuggled)
        status, _, body = await _read_response(reader)
        assert status == 400 and b"switch protocols" in body
        assert await _closed(reader)  # (and the smuggled request never answered)

        # Without a body (curl's h2c upgrade), answered over HTTP/1.1; nothing more is read.
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\n"
                     b"upgrade: h2c\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(smuggled)
        status, _, body = await _read_response(reader)
        assert status == 200 and body == b'{"ok":true}'
        assert await _closed(reader)
    assert _rejections("upgrade") - before == 2


async def test_a_request_that_cannot_be_parsed_is_answered_400_before_the_close():
    before = _rejections("invalid")
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        # (what follows the bad line arrives after the answer: closing at once would reset
        # the connection, and the client could lose the answer)
        writer.write(b"GET /ping HTTP/1.1\r\nbad header line\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        with contextlib.suppress(ConnectionError):
            writer.write(b"x" * 100_000)
        status, _, body = await _read_response(reader)
        assert status == 400 and b"Invalid HTTP request" in body
        assert await _closed(reader)
    assert _rejections("invalid") - before == 1


async def test_an_answer_never_read_is_dropped_with_its_connection_after_the_write_timeout():
    """An answer is written whole into the connection's buffer: a client that asks and
    never reads kept it in memory, and the connection open, for ever."""
    before = _rejections("write_timeout")
    async with served(_app(), http_protocol("test", write_timeout=0.5)) as url:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", _port(url)))
        sock.sendall(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        await asyncio.sleep(2)  # (not reading)
        received = 0
        sock.settimeout(5)
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.to_thread(sock.recv, 1 << 20):
                received += len(chunk)
        sock.close()
        assert received < BIG  # (dropped: the whole answer would be more)
    assert _rejections("write_timeout") - before == 1


async def test_a_body_in_small_chunks_is_not_mistaken_for_a_long_head():
    payload = bytes(range(256)) * 1200  # 300 KiB in 16-byte chunks: framing over 64 KiB
    chunks = b"".join(b"10\r\n%s\r\n" % payload[i:i + 16] for i in range(0, len(payload), 16))
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                     + chunks + b"0\r\n\r\n")
        status, _, body = await _read_response(reader)
        assert status == 200 and json.loads(body)["length"] == len(payload)


async def test_blank_lines_do_not_keep_an_idle_connection_open():
    """The parser skips blank lines between requests; they must not hold the keep-alive
    timeout (5 s) off."""
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
        closed = False
        for _ in range(16):
            await asyncio.sleep(0.5)
            try:
                writer.write(b"\r\n")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof() or (reader._buffer == b"" and reader.exception()):
                closed = True
                break
        if not closed:
            closed = await asyncio.wait_for(reader.read(), 1) == b""
        assert closed


async def test_a_refusal_never_cuts_into_an_earlier_requests_answer():
    """A request pipelined behind a streaming answer, refused while its body is still
    coming (its trailers past the bound): nothing may be written before that answer ends."""
    async with served(_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # (the stream has begun)
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n" + b"x-t: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n")
        data = b""
        with contextlib.suppress(ConnectionError):
            while more := await asyncio.wait_for(reader.read(1 << 16), 10):
                data += more
        assert data.startswith(b"HTTP/1.1 200") and data.count(b"HTTP/1.1 ") == 1, data
        assert data.endswith(b"tick 5\n\r\n0\r\n\r\n"), data  # (whole, then closed)


async def test_a_body_that_stops_coming_is_answered_408_and_a_slow_steady_one_arrives():
    """A body must average `min_body_rate` after a grace of `head_timeout`: one that stops
    holds a place among the requests in flight for as long as the client likes (512 such
    refused everyone else). A steady one above the rate arrives whole."""
    protocol = http_protocol("test", head_timeout=0.5, min_body_rate=200)
    before = _rejections("body_timeout")
    async with served(_app(), protocol) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        started = time.monotonic()
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n" +
                     b"x" * 100)
        await writer.drain()
        status, _, body = await _read_response(reader)
        # (no byte for the grace: the 100 bytes' worth at 200 a second buys no pause)
        assert status == 408 and time.monotonic() - started >= 0.5, body
        assert b"body" in body
        assert await _closed(reader)

        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(10):  # 100 bytes every 0.2 s: 500 a second, for 2 s
            writer.write(b"y" * 100)
            await writer.drain()
            await asyncio.sleep(0.2)
        status, _, body = await _read_response(reader)
        assert status == 200, body
        assert json.loads(body)["sha256"] == hashlib.sha256(b"y" * 1000).hexdigest()
        writer.close()
    assert _rejections("body_timeout") - before == 1


async def test_a_body_answered_before_its_end_is_dropped_up_to_a_bound_then_the_connection_closes():
    """A request answered before its body ended (401 before the body, 413) has the rest of
    its body read and dropped, and the connection stays usable; past `MAX_BODY_DROPPED` it
    closes, counted, instead of parsing whatever the client sends until the keep-alive
    timeout."""
    app = FastAPI()

    @app.post("/refuse")
    async def refuse() -> Response:  # (answers without reading the body)
        return Response(b"no", status_code=401)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    before = _rejections("body_dropped")
    async with served(app) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /refuse HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n")
        assert (await _read_response(reader))[0] == 401
        writer.write(b"z" * 1000 + b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        status, _, body = await _read_response(reader)
        assert status == 200 and json.loads(body) == {"ok": True}  # (the body was no request)
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /refuse HTTP/1.1\r\nhost: t\r\ncontent-length: 10000000000\r\n\r\n")
        assert (await _read_response(reader))[0] == 401
        sent, chunk, closed = 0, b"z" * 65536, False
        deadline = time.monotonic() + 15  # (past the bound, read and dropped 2 s, then closed)
        try:
            while time.monotonic() < deadline:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 10)
                sent += len(chunk)
        except ConnectionError:
            closed = True
        assert closed and sent > MAX_BODY_DROPPED, ("the server went on reading", sent)
    assert _rejections("body_dropped") - before == 1


def _refusing_app() -> FastAPI:
    app = FastAPI()

    @app.post("/refuse")
    async def refuse() -> Response:  # (answers without reading the body, as a 401 does)
        return Response(b"no", status_code=401)

    return app


async def test_a_body_sent_at_once_then_stopped_is_answered_408_after_the_grace():
    """Bytes sent early buy no stall: a key's holder sent 1.9 MB at once, then nothing, and
    held its places among the requests in flight for half an hour (an attacking helper)."""
    protocol = http_protocol("test", head_timeout=0.5, min_body_rate=200)
    async with served(_app(), protocol) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        started = time.monotonic()
        writer.write(b"POST /body HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n" +
                     b"x" * 50000)  # (at 200 a second, 250 s of average bought)
        await writer.drain()
        status, _, body = await _read_response(reader)
        assert status == 408, body
        assert time.monotonic() - started < 10
        assert await _closed(reader)


async def test_nothing_is_written_after_an_answer_given_before_the_body():
    """A 401 before the body, then a body the parser refuses (a chunk size that is not hex,
    or framing past the bound): no second answer, which a pipelining client would take for
    its next one; the connection closes."""
    async with served(_refusing_app()) as url:
        for rest in (b"zz\r\n", b"1\r\nz\r\n" * 20000):
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
            writer.write(b"POST /refuse HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
            assert (await _read_response(reader))[0] == 401
            with contextlib.suppress(ConnectionError):
                writer.write(rest)
                await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""


async def test_an_answer_before_a_body_expecting_100_continue_closes_the_connection():
    """The client was never asked for its body: what it sends next could be taken for that
    body, so the connection closes after the answer instead of reading it as one."""
    async with served(_refusing_app()) as url:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(url))
        writer.write(b"POST /refuse HTTP/1.1\r\nhost: t\r\ncontent-length: 40\r\n"
                     b"expect: 100-continue\r\n\r\n")
        assert (await _read_response(reader))[0] == 401
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert time.monotonic() - started < 4  # (not the keep-alive timeout, 5 s)
