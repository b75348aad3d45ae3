"""Wiring of the ingest service: the one place its real adapters are built."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.ingest import api
from services.ingest.relay import OutboxRelay
from services.ingest.settings import IngestSettings
from services.ingest.store import IngestStore
from shared.db import create_pool
from shared.http import install_error_handlers, install_metrics


def create_app(settings: IngestSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        relay = OutboxRelay(pool, settings)
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
        app.state.settings = settings
        app.state.pool = pool
        app.state.store = IngestStore(pool, settings)
        try:
            yield
        finally:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
            await pool.close()

    app = FastAPI(
        title="giapranh ingest",
        summary="Units publish sightings, incidents and watchlist changes.",
        version="1",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_metrics(app, "ingest")
    app.include_router(api.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
