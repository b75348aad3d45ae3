"""FastAPI dependencies of the ingest API, as `Annotated` aliases."""

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from services.ingest.settings import IngestSettings
from services.ingest.store import IngestStore
from shared.http import CurrentUnit, service_state

__all__ = ["CurrentUnit", "Database", "Settings", "Store"]


def _store(request: Request) -> IngestStore:
    return request.app.state.store


def _settings(request: Request) -> IngestSettings:
    return request.app.state.settings


def _pool(request: Request) -> asyncpg.Pool:
    return service_state(request).pool


Store = Annotated[IngestStore, Depends(_store)]
Settings = Annotated[IngestSettings, Depends(_settings)]
Database = Annotated[asyncpg.Pool, Depends(_pool)]
"""The pool, for the shared directory functions (`shared.directory`)."""
