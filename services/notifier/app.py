"""Wiring of the notifier: the one place its real adapters are built."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import RedirectResponse, Response

from services.notifier import api, reports_api
from services.notifier.cap import render_cap
from services.notifier.channels import SseChannel
from services.notifier.clock import Clock, SystemClock
from services.notifier.consumer import hit_stream, incident_stream, replay_incidents
from services.notifier.feed import AlertFeed
from services.notifier.service import AlertService
from services.notifier.settings import NotifierSettings
from services.notifier.webhooks import (
    Destination,
    WebhookChannel,
    WebhookDispatcher,
    WebhookPolicy,
)
from services.notifier.workflow import Deadlines
from shared import metrics
from shared.auth import KeyStore
from shared.db import DATABASE_ERRORS, create_pool, starting_history
from shared.http import ServiceState, background, create_http_app, set_state
from shared.i18n import LANGUAGES
from shared.kafka import stop_if_cancelled
from shared.ratelimit import RateLimit

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def content_security_policy(page: str) -> str:
    """A policy that runs the page's own inline script and style (by their hashes) and
    nothing else: no other origin, no framing, no plugins."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
            for b in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


async def watch_deadlines(alerts: AlertService, interval: float) -> None:
    """Escalate missed confirmation deadlines and keep the overdue gauge current."""
    while True:
        stop_if_cancelled()
        try:
            escalated = await alerts.escalate_overdue()
            if escalated:
                log.warning("escalated %d alert(s) past their confirmation deadline",
                            len(escalated))
            metrics.OVERDUE_ALERTS.set(await alerts.count_overdue())
        except DATABASE_ERRORS as exc:
            log.warning("deadline check failed, retrying: %r", exc)
        await asyncio.sleep(interval)


def create_app(settings: NotifierSettings, *, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        alerts = AlertService(
            pool, clock=clock, channels=[SseChannel(), WebhookChannel()],
            deadlines=Deadlines(timedelta(seconds=settings.urgent_deadline_seconds),
                                timedelta(seconds=settings.routine_deadline_seconds)),
            radius_km=settings.notifier_radius_km, pursuit_km=settings.pursuit_radius_km,
        )

        async def render(alert_id: UUID, unit_code: str, kind: str, fmt: str) -> bytes:
            view = await alerts.alert_for_unit(alert_id, unit_code)
            if fmt == "cap":
                return render_cap(view.model_dump(), sender=settings.cap_sender,
                                  recipients=await alerts.recipients(alert_id))
            return json.dumps(jsonable_encoder({"kind": kind, "alert": view}),
                              ensure_ascii=False).encode()

        destination = Destination(settings.allowed_networks())
        dispatcher = WebhookDispatcher(
            pool, render, WebhookPolicy(
                max_attempts=settings.webhook_max_attempts,
                base_seconds=settings.webhook_retry_base_seconds,
                max_backoff_seconds=settings.webhook_retry_max_seconds,
                timeout_seconds=settings.webhook_timeout_seconds),
            clock, destination=destination, poll_seconds=settings.webhook_poll_seconds)
        hits = hit_stream(settings, alerts)
        incidents = incident_stream(settings, alerts)
        keys = KeyStore(pool, settings.api_key_pepper.get_secret_value(),
                        cache_seconds=settings.key_cache_seconds)

        async def views(wanted: dict[str, list[UUID]], languages: dict[str, frozenset[str]],
                        just_raised: frozenset[UUID]) -> dict[str, dict[UUID, dict[str, bytes]]]:
            return await alerts.alert_views_json(wanted, {
                unit: [language for language in wanted_languages if language in LANGUAGES]
                or ["en"] for unit, wanted_languages in languages.items()}, just_raised)

        feed = AlertFeed(settings.database_url, views, keys,
                         max_streams_per_key=settings.notifier_max_streams_per_key,
                         max_streams_per_unit=settings.notifier_max_streams_per_unit)
        await feed.start()
        alerts.watching = feed.watches_any
        app.state.settings = settings
        app.state.alerts = alerts
        app.state.feed = feed
        app.state.hit_consumer = hits
        app.state.destination = destination
        set_state(app, ServiceState(
            pool=pool, requests=RateLimit(settings.requests_per_minute_per_key, "requests",
                                          burst=settings.requests_per_minute_per_key / 10),
            keys=keys,
            readiness={"broker": lambda: hits.ready.is_set() and incidents.ready.is_set()},
            health=lambda: {"hit_consumer": "ready" if hits.ready.is_set() else "starting",
                            "incident_consumer": "ready" if incidents.ready.is_set()
                            else "starting"},
            history=await starting_history(pool, "notifier")))
        try:
            async with (background(keys.watch(settings.database_url), "key-cache"),
                        background(hits.run(), "hit-consumer"),
                        background(incidents.run(), "incident-consumer"),
                        background(replay_incidents(
                            alerts, settings.incident_replay_seconds), "incident-replay"),
                        background(dispatcher.run(), "webhook-dispatcher"),
                        background(watch_deadlines(alerts, settings.deadline_check_seconds),
                                   "deadline-watch")):
                yield
        finally:
            await feed.stop()
            await pool.close()

    app = create_http_app(
        service="notifier", summary="Alerts for the duty desks of the units a hit concerns.",
        lifespan=lifespan, routers=[api.router, reports_api.router],
        settings=settings,
    )

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/desk")

    page = (STATIC / "desk.html").read_text()
    page_headers = {"Cache-Control": "no-cache",
                    "Content-Security-Policy": content_security_policy(page)}

    @app.get("/desk", include_in_schema=False)
    async def desk() -> Response:
        """The duty-desk page: one self-contained HTML file, no external assets; its
        Content-Security-Policy allows exactly its own inline script and style."""
        return Response(page, media_type="text/html; charset=utf-8", headers=page_headers)

    reports_page = (STATIC / "reports.html").read_text()
    reports_headers = {"Cache-Control": "no-cache",
                       "Content-Security-Policy": content_security_policy(reports_page)}

    @app.get("/reports", include_in_schema=False)
    async def reports() -> Response:
        """The review-report page ("Báo cáo sơ kết"): the report with its charts, to read
        or print (A4); one self-contained file, like the desk page."""
        return Response(reports_page, media_type="text/html; charset=utf-8",
                        headers=reports_headers)

    return app
