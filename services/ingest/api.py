"""The ingest API (`/v1`): units publish sightings, incidents and watchlist changes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Protocol
from uuid import UUID, uuid4

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, Field, model_validator

from services.ingest.deps import CurrentUnit, Settings, Sightings, Store, WatchlistWriter
from services.ingest.store import (
    Accepted,
    EventStatus,
    Report,
    WatchlistEntryView,
    request_hash,
)
from shared import metrics
from shared.audit import Actor
from shared.errors import Conflict, Unprocessable
from shared.events import (
    HOT_LIST,
    Contract,
    EntryId,
    Event,
    Place,
    ShortText,
    SightingReported,
    Subject,
    Timestamp,
    WatchlistEntry,
    WatchlistEntryFields,
    utcnow,
)
from shared.http import KeyFirstRoute, error_responses, json_body, json_body_openapi
from shared.logs import event_logger
from shared.topics import SIGHTINGS, TopicSpec

router = APIRouter(prefix="/v1", responses=error_responses(401, 429),
                   route_class=KeyFirstRoute)
log = logging.getLogger(__name__)
events_log = event_logger("ingest")

ClientEventId = Annotated[
    UUID | None,
    Field(description="Your own id for this event. Retrying with the same id and body is safe."),
]


class SightingIn(Contract):
    event_id: ClientEventId = None
    occurred_at: Timestamp = Field(description="When the subject was seen (with offset).")
    subject: Subject
    place: Place

    @model_validator(mode="after")
    def _subject_is_identifiable(self) -> SightingIn:
        if self.subject.is_empty():
            raise ValueError("a sighting needs at least a name, a national_id or a plate")
        return self

    model_config = {
        "json_schema_extra": {
            "examples": [{
                "event_id": "5b0e6a52-3d0c-4a8e-9d43-0f6f7f6c2a11",
                "occurred_at": "2026-11-20T21:14:00+07:00",
                "subject": {"name": "NGUYEN VAN HUNG", "national_id": "089 091 004 217"},
                "place": {"unit_code": "CA-31212", "address": "bến phà Thốt Nốt"},
            }]
        }
    }


MAX_BATCH = 1000


class SightingBatchIn(Contract):
    sightings: tuple[SightingIn, ...] = Field(min_length=1, max_length=MAX_BATCH)

    @model_validator(mode="after")
    def _event_ids_unique_in_batch(self) -> SightingBatchIn:
        seen: set[UUID] = set()
        for sighting in self.sightings:
            if sighting.event_id is not None:
                if sighting.event_id in seen:
                    raise ValueError(f"event id {sighting.event_id} appears twice in the batch")
                seen.add(sighting.event_id)
        return self


class CancelIn(Contract):
    reason: ShortText = Field(examples=["arrested"])


class EventAccepted(BaseModel):
    event_id: UUID
    type: str
    status: str = "accepted"
    duplicate: bool = Field(description="True when this request repeated an accepted event.")


class BatchAccepted(BaseModel):
    accepted: int = Field(description="New events in this batch.")
    duplicates: int = Field(description="Events this batch repeated (already accepted).")
    results: list[EventAccepted] = Field(description="One per sighting, in request order.")


class EntryStored(BaseModel):
    entry: WatchlistEntry
    event_id: UUID | None = Field(description="The change event; null if nothing changed.")


def _accepted(result: Accepted, unit_code: str) -> EventAccepted:
    if not result.duplicate:
        metrics.EVENTS_ACCEPTED.labels(type=result.type).inc()
    if events_log.isEnabledFor(logging.DEBUG):  # counted in giapranh_events_accepted_total
        events_log.debug("accepted %s%s", result.type,
                         " (repeat)" if result.duplicate else "",
                         extra={"event_id": result.event_id,
                                "correlation_id": result.event_id, "unit": unit_code})
    return _view(result)


def _view(result: Accepted) -> EventAccepted:
    return EventAccepted(event_id=result.event_id, type=result.type, duplicate=result.duplicate)


class _Report(Protocol):
    occurred_at: datetime
    place: Place


async def _check_reports(
    bodies: Sequence[_Report], store: Store, settings: Settings, prefix: str = ""
) -> None:
    limit = utcnow() + timedelta(seconds=settings.max_future_skew_seconds)
    for index, body in enumerate(bodies):
        where = f"{prefix}{index}." if prefix else ""
        if body.occurred_at > limit:
            raise Unprocessable("occurred_at is in the future", field=f"{where}occurred_at")
    unknown = await store.unknown_units({body.place.unit_code for body in bodies})
    for index, body in enumerate(bodies):
        if body.place.unit_code in unknown:
            where = f"{prefix}{index}." if prefix else ""
            raise Unprocessable(f"unknown unit code {body.place.unit_code}",
                                field=f"{where}place.unit_code")


def _fingerprint(body: Contract) -> bytes:
    return request_hash(body.model_dump_json(exclude={"event_id"}))


async def _publish(event: Event, body: Contract, store: Store, spec: TopicSpec,
                   person_id: int | None, timeout: float) -> EventAccepted:
    result = await store.record(event, spec=spec, fingerprint=_fingerprint(body),
                                person_id=person_id, timeout=timeout)
    return _accepted(result, event.producer_unit or "")


def _sighting(body: SightingIn, unit_code: str, recorded_at: datetime) -> SightingReported:
    return SightingReported(
        event_id=body.event_id or uuid4(), occurred_at=body.occurred_at, recorded_at=recorded_at,
        producer_unit=unit_code, subject=body.subject, place=body.place,
    )


@router.post("/sightings", status_code=status.HTTP_202_ACCEPTED, response_model=EventAccepted,
             responses=error_responses(409, 503))
async def report_sighting(
    body: SightingIn, unit: CurrentUnit, store: Store, settings: Settings,
    sightings: Sightings,
) -> EventAccepted:
    """Report a person or vehicle seen at a place and time."""
    await _check_reports([body], store, settings)
    result = await sightings.record(Report(_sighting(body, unit.unit_code, utcnow()),
                                           _fingerprint(body), unit.person_id))
    return _accepted(result, unit.unit_code)


@router.post("/sightings/batch", status_code=status.HTTP_202_ACCEPTED,
             response_model=BatchAccepted, responses=error_responses(409),
             openapi_extra=json_body_openapi(SightingBatchIn))
async def report_sightings(
    unit: CurrentUnit, store: Store, settings: Settings,
    body: SightingBatchIn = json_body(SightingBatchIn),
) -> BatchAccepted:
    """Report up to 1,000 sightings at once: all are accepted, or none (the error names
    the index at fault, e.g. `sightings.17.subject.national_id`). Safe to retry."""
    await _check_reports(body.sightings, store, settings, prefix="sightings.")
    now = utcnow()
    reports = [
        Report(_sighting(item, unit.unit_code, now), _fingerprint(item), unit.person_id)
        for item in body.sightings
    ]
    try:
        results = await store.record_many(
            reports, spec=SIGHTINGS, timeout=settings.ingest_write_timeout_seconds)
    except Conflict as conflict:
        raise Conflict(conflict.message, field=f"sightings.{conflict.field}") from None
    views = [_view(result) for result in results]
    duplicates = sum(view.duplicate for view in views)
    metrics.EVENTS_ACCEPTED.labels(type=SightingReported.__name__).inc(len(views) - duplicates)
    log.info("accepted a batch of sightings", extra={"unit": unit.unit_code, "count": len(views)})
    if events_log.isEnabledFor(logging.DEBUG):
        for view in views:
            events_log.debug("accepted SightingReported", extra={
                "event_id": view.event_id, "correlation_id": view.event_id,
                "unit": unit.unit_code})
    return BatchAccepted(accepted=len(views) - duplicates, duplicates=duplicates, results=views)


class Me(BaseModel):
    """The caller, as its key says (the field page shows it and reports from its unit)."""

    unit_code: str
    unit_name: str
    role: str
    person_name: str | None


@router.get("/me", response_model=Me)
async def who_am_i(unit: CurrentUnit, store: Store) -> Me:
    name = await store.pool.fetchval("SELECT name FROM units WHERE code = $1", unit.unit_code)
    return Me(unit_code=unit.unit_code, unit_name=name or unit.unit_code, role=unit.role,
              person_name=unit.person_name)


@router.put("/watchlist/{entry_id}", response_model=EntryStored, responses=error_responses(403))
async def upsert_watchlist_entry(
    entry_id: Annotated[EntryId, Path()], body: WatchlistEntryFields, unit: WatchlistWriter,
    store: Store,
) -> EntryStored:
    """Create or update one of the calling unit's watchlist entries."""
    if body.category in HOT_LIST:
        raise Unprocessable(f"{body.category.value} entries are made from incidents "
                            "(POST /v1/incidents), not listed directly", field="category")
    entry = WatchlistEntry(**body.model_dump(), entry_id=entry_id, owner_unit=unit.unit_code)
    stored, accepted = await store.upsert_watchlist_entry(entry, unit_code=unit.unit_code,
                                                           actor=Actor.of(unit))
    if accepted is not None:
        _accepted(accepted, unit.unit_code)
    return EntryStored(entry=stored, event_id=accepted.event_id if accepted else None)


@router.get("/watchlist", response_model=list[WatchlistEntryView])
async def list_watchlist_entries(
    unit: CurrentUnit, store: Store,
    include_cancelled: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[WatchlistEntryView]:
    """The calling unit's own entries, most recently changed first."""
    return await store.own_entries(unit.unit_code, include_cancelled=include_cancelled,
                                   limit=limit, offset=offset)


@router.get("/watchlist/{entry_id}", response_model=WatchlistEntryView,
            responses=error_responses(404))
async def get_watchlist_entry(
    entry_id: Annotated[EntryId, Path()], unit: CurrentUnit, store: Store
) -> WatchlistEntryView:
    return await store.own_entry(entry_id, unit.unit_code)


@router.post("/watchlist/{entry_id}/cancel", response_model=EventAccepted,
             responses=error_responses(403, 404, 409))
async def cancel_watchlist_entry(
    entry_id: Annotated[EntryId, Path()], body: CancelIn, unit: WatchlistWriter, store: Store
) -> EventAccepted:
    """Cancel an entry (e.g. the subject was arrested): it stops raising alerts at once."""
    result = await store.cancel_watchlist_entry(
        entry_id, unit_code=unit.unit_code, reason=body.reason, actor=Actor.of(unit)
    )
    return _accepted(result, unit.unit_code)


@router.get("/events/{event_id}", response_model=EventStatus, responses=error_responses(404))
async def event_status(event_id: UUID, unit: CurrentUnit, store: Store) -> EventStatus:
    """Where one of the calling unit's events is: `accepted` (stored, waiting for the
    broker), `relayed` (on the broker, matched or being matched), `matched` (it raised
    at least one alert, listed in `alerts`), `purged` (a sighting that matched nothing,
    whose subject was removed after the retention period)."""
    return await store.event_status(event_id, unit.unit_code)
