"""Wiring of the ingest service: the one place its real adapters are built."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import RedirectResponse

from services.ingest import admin, api, checks, incidents, sync
from services.ingest.groupcommit import GroupCommit
from services.ingest.privacy import run_purges
from services.ingest.reconciler import Reconciler
from services.ingest.relay import OutboxRelay
from services.ingest.settings import IngestSettings
from services.ingest.store import IngestStore
from shared.auth import KeyStore
from shared.db import create_pool, starting_history
from shared.errors import NotFound
from shared.http import ServiceState, background, create_http_app, set_state
from shared.ratelimit import RateLimit
from shared.topics import SIGHTINGS


def create_app(settings: IngestSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings, name_processes=True)  # (settling lost writes)
        relay = OutboxRelay(pool, settings)
        reconciler = Reconciler(pool, settings)
        keys = KeyStore(pool, settings.api_key_pepper.get_secret_value(),
                        cache_seconds=settings.key_cache_seconds)
        app.state.settings = settings
        app.state.store = store = IngestStore(pool, settings,
                                              max_lookalikes=settings.max_lookalikes_per_unit)
        app.state.sightings = sightings = GroupCommit(
            store, SIGHTINGS, max_wait_seconds=settings.ingest_max_wait_seconds,
            write_timeout_seconds=settings.ingest_write_timeout_seconds)
        app.state.watchlist_writes = RateLimit(settings.watchlist_writes_per_minute,
                                               "watchlist changes")
        app.state.matcher_client = httpx.AsyncClient(
            base_url=settings.matcher_url, timeout=settings.check_timeout_seconds)
        set_state(app, ServiceState(
            pool=pool, requests=RateLimit(settings.requests_per_minute_per_key, "requests",
                                          burst=settings.requests_per_minute_per_key / 10),
            keys=keys,
            readiness={"broker": lambda: relay.connected, "verdicts": reconciler.healthy},
            history=await starting_history(pool, "ingest")))
        try:
            async with (background(keys.watch(settings.database_url), "key-cache"),
                        background(sightings.run(), "group-commit"),
                        background(relay.run(), "outbox-relay"),
                        background(reconciler.run(), "reconciler"),
                        background(run_purges(pool, settings.sighting_retention_days,
                                              settings.purge_interval_seconds), "purge")):
                yield
        finally:
            await app.state.matcher_client.aclose()
            await pool.close()

    app = create_http_app(
        service="ingest", summary="Units publish sightings, incidents and watchlist changes.",
        lifespan=lifespan,
        # (sync first: `/v1/watchlist/sync` is not the entry `sync` of `/v1/watchlist/{id}`)
        routers=[sync.router, api.router, incidents.router, checks.router, admin.router],
        max_body_bytes=settings.max_body_bytes,
        settings=settings,
    )
    install_field_page(app)
    return app


FIELD = Path(__file__).parent / "static" / "field"
FIELD_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
               "sw.js": "text/javascript; charset=utf-8", "icon.svg": "image/svg+xml",
               "manifest.webmanifest": "application/manifest+json"}
FIELD_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                "connect-src 'self'; manifest-src 'self'; worker-src 'self'; base-uri 'none'; "
                "form-action 'self'; frame-ancestors 'none'")


def install_field_page(app: FastAPI) -> None:
    """The officers' field page (`/field/`): its files, read once; nothing from elsewhere
    (the Content-Security-Policy allows this origin only)."""
    files = {name: (FIELD / name).read_bytes() for name in [*FIELD_FILES, "index.html"]}
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": FIELD_POLICY}

    @app.get("/field", include_in_schema=False)
    async def field_redirect() -> RedirectResponse:
        return RedirectResponse("/field/")

    @app.get("/field/", include_in_schema=False)
    async def field_page() -> Response:
        return Response(files["index.html"], media_type="text/html; charset=utf-8",
                        headers=headers)

    @app.get("/field/{name}", include_in_schema=False)
    async def field_file(name: str) -> Response:
        if name not in FIELD_FILES:
            raise NotFound(f"no file {name} on the field page", field="name")
        return Response(files[name], media_type=FIELD_FILES[name], headers=headers)
