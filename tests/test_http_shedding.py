"""`shared.http.LoadShedding` around a bare ASGI app on a real socket: a long-lived
stream counts among the requests in flight until its response starts, then not."""

import asyncio

import httpx

from shared.http import LoadShedding
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
