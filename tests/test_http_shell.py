"""The shell every HTTP service shares (`shared.http.create_http_app`), on a real socket:
its refusals when overloaded, and the garbage collector once it has started."""

import asyncio
import contextlib
import gc
from types import SimpleNamespace

import httpx
from fastapi import APIRouter
from prometheus_client import REGISTRY

from shared.http import SECURITY_HEADERS, create_http_app
from tests.conftest import served


def _shell(service: str, limit: int, gate: asyncio.Event):
    router = APIRouter()

    @router.get("/v1/slow")
    async def slow() -> dict[str, str]:
        await gate.wait()
        return {"status": "done"}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield

    return create_http_app(
        service=service, summary="test", lifespan=lifespan, routers=[router],
        settings=SimpleNamespace(metrics_port=None, max_requests_in_flight=limit))


def _refusals(service: str) -> float:
    return REGISTRY.get_sample_value(
        "giapranh_http_rejections_total", {"service": service, "reason": "overloaded"}) or 0.0


async def test_an_overloaded_service_refuses_in_the_callers_language_every_time():
    """The refusal is made once per language and sent again: each caller still gets its own
    language, the Retry-After, the security headers, and each refusal is counted."""
    gate = asyncio.Event()
    app = _shell("shell-test", 1, gate)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        held = asyncio.create_task(client.get("/v1/slow"))
        await asyncio.sleep(0.2)
        before = _refusals("shell-test")
        answers = []
        for language in ("vi", "en", "vi", "en-GB", "vi-VN,vi;q=0.9"):
            answers.append((language, await client.get(
                "/v1/slow", headers={"Accept-Language": language})))
        gate.set()
        assert (await held).status_code == 200
        assert (await client.get("/v1/slow")).status_code == 200  # capacity again
    for language, answer in answers:
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["error"]["code"] == "overloaded"
        message = body["error"]["message"]
        if language.startswith("vi"):
            assert "đang xử lý 1 yêu cầu" in message, message
        else:
            assert message.startswith("1 requests are being handled"), message
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == "application/json"
        for name, value in SECURITY_HEADERS:
            assert answer.headers[name.decode()] == value.decode()
    assert _refusals("shell-test") - before == len(answers)


async def test_a_started_service_keeps_the_collector_off_what_it_loaded():
    """Once its lifespan has loaded what the service keeps, what is loaded is frozen out of
    the cyclic collector's reach and the young generation is larger (shared/runtime.py):
    full collections of the whole heap stalled every answer (ingest, README)."""
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    gate = asyncio.Event()
    gate.set()
    async with served(_shell("shell-gc-test", 0, gate)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/v1/slow")).status_code == 200
        assert gc.get_threshold() == (50_000, 20, 100)
        assert gc.get_freeze_count() > 0
