"""FastAPI dependencies of the ingest API, as `Annotated` aliases."""

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from services.ingest.groupcommit import GroupCommit
from services.ingest.settings import IngestSettings
from services.ingest.store import IngestStore
from shared.auth import Principal
from shared.http import CurrentUnit, service_state

__all__ = ["CurrentUnit", "Database", "Settings", "Sightings", "Store", "WatchlistWriter"]


async def _store(request: Request) -> IngestStore:
    return request.app.state.store


async def _sightings(request: Request) -> GroupCommit:
    return request.app.state.sightings


async def _settings(request: Request) -> IngestSettings:
    return request.app.state.settings


async def _pool(request: Request) -> asyncpg.Pool:
    return service_state(request).pool


async def _watchlist_write(request: Request, unit: CurrentUnit) -> Principal:
    """The caller, once its key's watchlist-write budget allows one more change."""
    request.app.state.watchlist_writes.take(unit.key_id)
    return unit


Store = Annotated[IngestStore, Depends(_store)]
Sightings = Annotated[GroupCommit, Depends(_sightings)]
"""Where single sightings are written (group commit)."""
WatchlistWriter = Annotated[Principal, Depends(_watchlist_write)]
"""The calling unit, for a watchlist change (rate-limited per key)."""
Settings = Annotated[IngestSettings, Depends(_settings)]
Database = Annotated[asyncpg.Pool, Depends(_pool)]
"""The pool, for the shared directory functions (`shared.directory`)."""
