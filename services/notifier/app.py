"""Wiring of the notifier: the one place its real adapters are built."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.notifier import api
from services.notifier.consumer import HitConsumer
from services.notifier.feed import AlertFeed
from services.notifier.settings import NotifierSettings
from services.notifier.store import AlertStore
from shared.db import create_pool
from shared.http import background, create_http_app


def create_app(settings: NotifierSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        store = AlertStore(pool)
        consumer = HitConsumer(store, settings)
        app.state.settings = settings
        app.state.pool = pool
        app.state.store = store
        app.state.hit_consumer = consumer
        feed = AlertFeed(settings.database_url)
        await feed.start()
        app.state.feed = feed
        app.state.broker_ready = consumer.ready.is_set
        app.state.health = lambda: {
            "hit_consumer": "ready" if consumer.ready.is_set() else "starting"
        }
        try:
            async with background(consumer.run(), "hit-consumer"):
                yield
        finally:
            await feed.stop()
            await pool.close()

    return create_http_app(
        service="notifier", summary="Alerts for the duty desks of the units a hit concerns.",
        lifespan=lifespan, routers=[api.router],
    )
