"""FastAPI dependencies of the ingest API, as `Annotated` aliases."""

from typing import Annotated

from fastapi import Depends, Request

from services.ingest.settings import IngestSettings
from services.ingest.store import IngestStore
from shared.http import CurrentUnit

__all__ = ["CurrentUnit", "Settings", "Store"]


def _store(request: Request) -> IngestStore:
    return request.app.state.store


def _settings(request: Request) -> IngestSettings:
    return request.app.state.settings


Store = Annotated[IngestStore, Depends(_store)]
Settings = Annotated[IngestSettings, Depends(_settings)]
