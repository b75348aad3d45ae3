"""FastAPI dependencies of the notifier API, as `Annotated` aliases."""

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from services.notifier.feed import AlertFeed
from services.notifier.service import AlertService
from services.notifier.settings import NotifierSettings
from services.notifier.webhooks import Webhooks
from shared.http import CurrentUnit, service_state

__all__ = ["Alerts", "CurrentUnit", "Database", "Feed", "Settings", "UnitWebhooks"]


async def _alerts(request: Request) -> AlertService:
    return request.app.state.alerts


async def _feed(request: Request) -> AlertFeed:
    return request.app.state.feed


async def _settings(request: Request) -> NotifierSettings:
    return request.app.state.settings


async def _pool(request: Request) -> asyncpg.Pool:
    return service_state(request).pool


async def _webhooks(request: Request) -> Webhooks:
    return Webhooks(service_state(request).pool, request.app.state.destination)


Alerts = Annotated[AlertService, Depends(_alerts)]
Feed = Annotated[AlertFeed, Depends(_feed)]
Settings = Annotated[NotifierSettings, Depends(_settings)]
UnitWebhooks = Annotated[Webhooks, Depends(_webhooks)]
Database = Annotated[asyncpg.Pool, Depends(_pool)]
"""The pool, for reads over the notifier's tables (review reports)."""
