"""Wiring of the notifier: the one place its real adapters are built."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.notifier import api
from services.notifier.consumer import HitConsumer
from services.notifier.settings import NotifierSettings
from services.notifier.store import AlertStore
from shared.db import create_pool
from shared.http import install_error_handlers, install_metrics


def create_app(settings: NotifierSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        store = AlertStore(pool)
        consumer = HitConsumer(store, settings)
        consumer_task = asyncio.create_task(consumer.run(), name="hit-consumer")
        app.state.settings = settings
        app.state.pool = pool
        app.state.store = store
        app.state.hit_consumer = consumer
        try:
            yield
        finally:
            consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer_task
            await pool.close()

    app = FastAPI(
        title="giapranh notifier",
        summary="Alerts for the duty desks of the units a hit concerns.",
        version="1",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_metrics(app, "notifier")
    app.include_router(api.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        consumer: HitConsumer = app.state.hit_consumer
        return {"status": "ok", "hit_consumer": "ready" if consumer.ready.is_set() else "starting"}

    return app
