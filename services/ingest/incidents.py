"""Incidents: reported, updated and closed by their unit; each suspect and vehicle becomes
a temporary watchlist entry of that unit (the incident's hot list).

An incident is the first thing the coordination agreements ask to share ("phối hợp truy
bắt"): the notifier alerts the units it concerns at once (`services/notifier/incidents.py`),
and its suspects and vehicles are matched like any listed subject, so a plate read across
the border raises an alert to the incident's unit and the unit where it was read. The hot
list is ordinary watchlist entries (category `incident_suspect` / `incident_vehicle`,
scope `owner_only`, `valid_until` the incident's time + `GIAPRANH_HOT_LIST_HOURS`), so the
matcher, late matching and withdrawal need nothing new; closing the incident cancels
them, which withdraws their open alerts with the outcome as reason.

Everything an incident changes is written in one transaction with its outbox rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field

from services.ingest.api import ClientEventId, EventAccepted, _accepted, _check_reports
from services.ingest.deps import CurrentUnit, Settings, Store
from services.ingest.store import Accepted, IngestStore, Report, request_hash
from shared import audit
from shared.audit import Actor
from shared.errors import Conflict, NotFound, Unprocessable
from shared.events import (
    Bearing,
    Category,
    Contract,
    IncidentClosed,
    IncidentOutcome,
    IncidentReported,
    IncidentUpdated,
    LongText,
    Place,
    Severity,
    SharingScope,
    ShortText,
    Suspect,
    Timestamp,
    UnitCode,
    Vehicle,
    WatchlistEntry,
    WatchlistEntryCancelled,
    WatchlistEntryUpserted,
    utcnow,
)
from shared.http import DeskKey, KeyFirstRoute, error_responses
from shared.topics import INCIDENTS, WATCHLIST

router = APIRouter(prefix="/v1", responses=error_responses(401, 429),
                   route_class=KeyFirstRoute)


# ------------------------------------------------------------------------------- bodies


class IncidentIn(Contract):
    event_id: ClientEventId = None
    occurred_at: Timestamp
    incident_type: ShortText = Field(examples=["cướp giật tài sản"])
    summary: LongText | None = None
    place: Place
    suspects: tuple[Suspect, ...] = Field((), max_length=100)
    vehicles: tuple[Vehicle, ...] = Field((), max_length=100)
    severity: Severity = Field(Severity.EXPECTED, description=(
        "`immediate`: neighbours act now (an urgent alert); `expected`: soon."))
    fled_towards: tuple[UnitCode, ...] = Field(
        (), max_length=20, description="Units the suspects fled towards (they are alerted).")
    fled_bearing: Bearing | None = Field(None, description=(
        "Direction of flight in degrees from north: units that way are alerted."))
    hot_list_hours: int | None = Field(None, ge=1, le=720, description=(
        "How long suspects and vehicles stay on the hot list (default "
        "GIAPRANH_HOT_LIST_HOURS)."))

    model_config = {
        "json_schema_extra": {
            "examples": [{
                "occurred_at": "2026-11-20T21:40:00+07:00",
                "incident_type": "cướp giật tài sản",
                "summary": "Hai đối tượng đi xe máy giật túi xách tại bến phà, bỏ chạy về "
                           "hướng Vĩnh Thạnh.",
                "place": {"unit_code": "CA-31212", "address": "bến phà Thốt Nốt"},
                "severity": "immediate",
                "suspects": [{"name": "Trần Văn Tèo", "birth_year": 1996,
                              "action": "arrest", "cautions": ["armed"]}],
                "vehicles": [{"plate": "65-B1 234.56", "description": "Exciter đỏ"}],
                "fled_towards": ["CA-31207"],
            }]
        }
    }


class IncidentUpdateIn(Contract):
    event_id: ClientEventId = None
    suspects: tuple[Suspect, ...] = Field((), max_length=100)
    vehicles: tuple[Vehicle, ...] = Field((), max_length=100)
    fled_towards: tuple[UnitCode, ...] = Field((), max_length=20)
    fled_bearing: Bearing | None = None
    note: LongText | None = None


class IncidentCloseIn(Contract):
    event_id: ClientEventId = None
    outcome: IncidentOutcome
    note: LongText | None = None


class HotListEntry(BaseModel):
    entry: WatchlistEntry
    cancelled_at: datetime | None
    cancel_reason: str | None


class IncidentView(BaseModel):
    incident_id: UUID
    unit_code: str
    incident_type: str
    severity: Severity
    occurred_at: datetime
    hot_list_until: datetime
    status: Literal["open", "closed"]
    closed_at: datetime | None
    outcome: IncidentOutcome | None
    closing_note: str | None
    hot_list: list[HotListEntry] = Field(description="Its suspects and vehicles as entries.")


# ------------------------------------------------------------------------------- the hot list


def hot_list_entries(incident_id: UUID, unit_code: str, suspects: tuple[Suspect, ...],
                     vehicles: tuple[Vehicle, ...], *, numbered_from: tuple[int, int],
                     until: datetime) -> list[WatchlistEntry]:
    """The watchlist entries an incident's suspects and vehicles become (a suspect with
    nothing to match on, only a description, becomes none)."""
    common = {"owner_unit": unit_code, "sharing_scope": SharingScope.OWNER_ONLY,
              "valid_until": until, "incident_id": incident_id}
    entries = []
    for number, suspect in enumerate(suspects, numbered_from[0] + 1):
        if suspect.is_empty():
            continue
        entries.append(WatchlistEntry(
            entry_id=f"INC-{incident_id.hex}-S{number}", category=Category.INCIDENT_SUSPECT,
            full_name=suspect.name, gender=suspect.gender, birth_date=suspect.birth_date,
            birth_year=suspect.birth_year, national_id=suspect.national_id,
            plates=(suspect.plate,) if suspect.plate else (),
            description=suspect.description, action=suspect.action,
            cautions=suspect.cautions, **common))
    for number, vehicle in enumerate(vehicles, numbered_from[1] + 1):
        entries.append(WatchlistEntry(
            entry_id=f"INC-{incident_id.hex}-V{number}", category=Category.INCIDENT_VEHICLE,
            plates=(vehicle.plate,), description=vehicle.description, action=vehicle.action,
            cautions=vehicle.cautions, **common))
    return entries


async def _list(conn: asyncpg.Connection, store: IngestStore, entries: list[WatchlistEntry],
                person_id: int | None) -> None:
    """New hot-list entries and their outbox rows (no look-alike limit: they expire)."""
    if not entries:
        return
    await conn.execute(
        """INSERT INTO watchlist_entries (entry_id, owner_unit, category, version, entry,
                                          valid_until, incident_id)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::jsonb[],
                                $6::timestamptz[], $7::uuid[])""",
        [e.entry_id for e in entries], [e.owner_unit for e in entries],
        [e.category.value for e in entries], [e.version for e in entries],
        [e.model_dump(mode="json") for e in entries], [e.valid_until for e in entries],
        [e.incident_id for e in entries])
    now = utcnow()
    events = [WatchlistEntryUpserted(occurred_at=now, producer_unit=e.owner_unit, entry=e)
              for e in entries]
    await store._record(conn, [Report(event, request_hash(event.model_dump_json()), person_id)
                               for event in events], spec=WATCHLIST)


async def _unlist(conn: asyncpg.Connection, store: IngestStore, incident_id: UUID,
                  unit_code: str, reason: str, person_id: int | None) -> int:
    """Cancel the incident's active hot-list entries (their open alerts are withdrawn)."""
    rows = await conn.fetch(
        """UPDATE watchlist_entries
              SET version = version + 1, cancelled_at = now(), cancel_reason = $2,
                  updated_at = now()
            WHERE incident_id = $1 AND cancelled_at IS NULL
        RETURNING entry_id, version""", incident_id, reason)
    now = utcnow()
    events = [WatchlistEntryCancelled(occurred_at=now, producer_unit=unit_code,
                                      entry_id=row["entry_id"], owner_unit=unit_code,
                                      version=row["version"], reason=reason) for row in rows]
    if events:
        await store._record(conn, [Report(e, request_hash(e.model_dump_json()), person_id)
                                   for e in events], spec=WATCHLIST)
    return len(events)


async def _incident_row(conn: asyncpg.Connection, incident_id: UUID,
                        unit_code: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM incidents WHERE incident_id = $1 FOR UPDATE",
                              incident_id)
    if row is None or row["unit_code"] != unit_code:  # another unit's: as if none
        raise NotFound(f"unit {unit_code} reported no incident {incident_id}",
                       field="incident_id")
    return row


async def _check_units(store: IngestStore, codes: tuple[str, ...], field: str) -> None:
    unknown = await store.unknown_units(set(codes))
    for index, code in enumerate(codes):
        if code in unknown:
            raise Unprocessable(f"unknown unit code {code}", field=f"{field}.{index}")


def _fingerprint(body: Contract) -> bytes:
    return request_hash(body.model_dump_json(exclude={"event_id"}))


# ------------------------------------------------------------------------------- routes


@router.post("/incidents", status_code=status.HTTP_202_ACCEPTED, response_model=EventAccepted,
             responses=error_responses(409))
async def report_incident(
    body: IncidentIn, unit: CurrentUnit, store: Store, settings: Settings
) -> EventAccepted:
    """Report a crime or disorder event. The units it concerns are alerted at once (its
    own, bordering units, agreement partners, units nearby and the units it fled towards);
    its suspects and vehicles go on the hot list for `hot_list_hours` and are also checked
    against the reports of the last hours. The incident's id is this event's id."""
    await _check_reports([body], store, settings)
    await _check_units(store, body.fled_towards, "fled_towards")
    hours = body.hot_list_hours or settings.hot_list_hours
    event = IncidentReported(
        event_id=body.event_id or uuid4(), occurred_at=body.occurred_at,
        producer_unit=unit.unit_code, incident_type=body.incident_type, summary=body.summary,
        place=body.place, suspects=body.suspects, vehicles=body.vehicles,
        severity=body.severity, fled_towards=body.fled_towards,
        fled_bearing=body.fled_bearing, hot_list_hours=hours)
    until = body.occurred_at + timedelta(hours=hours)
    async with store.pool.acquire() as conn, conn.transaction():
        [accepted] = await store._record(
            conn, [Report(event, _fingerprint(body), unit.person_id)], spec=INCIDENTS)
        if not accepted.duplicate:
            await conn.execute(
                """INSERT INTO incidents (incident_id, unit_code, incident_type, severity,
                                          occurred_at, hot_list_until, suspects, vehicles)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                event.event_id, unit.unit_code, event.incident_type, event.severity.value,
                event.occurred_at, until, len(event.suspects), len(event.vehicles))
            await _list(conn, store, hot_list_entries(
                event.event_id, unit.unit_code, event.suspects, event.vehicles,
                numbered_from=(0, 0), until=until), unit.person_id)
            await audit.record(conn, Actor.of(unit), "incident.report",
                               subject=str(event.event_id),
                               detail={"type": event.incident_type,
                                       "severity": event.severity.value,
                                       "suspects": len(event.suspects),
                                       "vehicles": len(event.vehicles)})
    return _accepted(accepted, unit.unit_code)


@router.post("/incidents/{incident_id}/update", status_code=status.HTTP_202_ACCEPTED,
             response_model=EventAccepted, responses=error_responses(404, 409))
async def update_incident(
    incident_id: Annotated[UUID, Path()], body: IncidentUpdateIn, unit: CurrentUnit,
    store: Store,
) -> EventAccepted:
    """Add suspects or vehicles (they join the hot list) or a new direction of flight (its
    units are alerted). Only the reporting unit may; not once the incident is closed."""
    if not (body.suspects or body.vehicles or body.fled_towards
            or body.fled_bearing is not None or body.note):
        raise Unprocessable("nothing to update: give suspects, vehicles, fled_towards, "
                            "fled_bearing or a note", field="body")
    await _check_units(store, body.fled_towards, "fled_towards")
    event = IncidentUpdated(
        event_id=body.event_id or uuid4(), occurred_at=utcnow(), producer_unit=unit.unit_code,
        correlation_id=incident_id, incident_id=incident_id, suspects=body.suspects,
        vehicles=body.vehicles, fled_towards=body.fled_towards,
        fled_bearing=body.fled_bearing, note=body.note)
    async with store.pool.acquire() as conn, conn.transaction():
        row = await _incident_row(conn, incident_id, unit.unit_code)
        accepted = await _changed(conn, store, event, body, unit.person_id, row)
        if not accepted.duplicate:
            await conn.execute(
                "UPDATE incidents SET suspects = suspects + $2, vehicles = vehicles + $3 "
                "WHERE incident_id = $1", incident_id, len(body.suspects), len(body.vehicles))
            await _list(conn, store, hot_list_entries(
                incident_id, unit.unit_code, body.suspects, body.vehicles,
                numbered_from=(row["suspects"], row["vehicles"]),
                until=row["hot_list_until"]), unit.person_id)
            await audit.record(conn, Actor.of(unit), "incident.update",
                               subject=str(incident_id),
                               detail={"suspects": len(body.suspects),
                                       "vehicles": len(body.vehicles),
                                       "fled_towards": list(body.fled_towards)})
    return _accepted(accepted, unit.unit_code)


@router.post("/incidents/{incident_id}/close", status_code=status.HTTP_202_ACCEPTED,
             response_model=EventAccepted, responses=error_responses(403, 404, 409))
async def close_incident(
    incident_id: Annotated[UUID, Path()], body: IncidentCloseIn, unit: DeskKey, store: Store,
) -> EventAccepted:
    """Close the incident with its outcome: its hot list expires at once, the open alerts
    on it are closed, and every unit that received them sees the outcome. A duty desk or
    above of the reporting unit may."""
    event = IncidentClosed(
        event_id=body.event_id or uuid4(), occurred_at=utcnow(), producer_unit=unit.unit_code,
        correlation_id=incident_id, incident_id=incident_id, outcome=body.outcome,
        note=body.note)
    async with store.pool.acquire() as conn, conn.transaction():
        row = await _incident_row(conn, incident_id, unit.unit_code)
        accepted = await _changed(conn, store, event, body, unit.person_id, row)
        if not accepted.duplicate:
            await conn.execute(
                "UPDATE incidents SET closed_at = now(), outcome = $2, closing_note = $3 "
                "WHERE incident_id = $1", incident_id, body.outcome.value, body.note)
            reason = f"incident closed: {body.outcome.value}"
            unlisted = await _unlist(conn, store, incident_id, unit.unit_code, reason,
                                     unit.person_id)
            await audit.record(conn, Actor.of(unit), "incident.close",
                               subject=str(incident_id),
                               detail={"outcome": body.outcome.value, "note": body.note,
                                       "hot_list_cancelled": unlisted})
    return _accepted(accepted, unit.unit_code)


async def _changed(conn: asyncpg.Connection, store: IngestStore,
                   event: IncidentUpdated | IncidentClosed, body: Contract,
                   person_id: int | None, row: asyncpg.Record) -> Accepted:
    """Record an update or the closing; a retry of an accepted one changes nothing, and
    nothing changes a closed incident."""
    [accepted] = await store._record(conn, [Report(event, _fingerprint(body), person_id)],
                                     spec=INCIDENTS)
    if not accepted.duplicate and row["closed_at"] is not None:
        raise Conflict(f"incident {row['incident_id']} is closed ({row['outcome']})",
                       field="incident_id")
    return accepted


@router.get("/incidents/{incident_id}", response_model=IncidentView,
            responses=error_responses(404))
async def get_incident(
    incident_id: Annotated[UUID, Path()], unit: CurrentUnit, store: Store
) -> IncidentView:
    """One of the calling unit's incidents, with its hot list."""
    async with store.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM incidents WHERE incident_id = $1",
                                  incident_id)
        if row is None or row["unit_code"] != unit.unit_code:
            raise NotFound(f"unit {unit.unit_code} reported no incident {incident_id}",
                           field="incident_id")
        entries = await conn.fetch(
            """SELECT entry::text AS entry, cancelled_at, cancel_reason
                 FROM watchlist_entries WHERE incident_id = $1 ORDER BY entry_id""",
            incident_id)
    return IncidentView(
        incident_id=row["incident_id"], unit_code=row["unit_code"],
        incident_type=row["incident_type"], severity=row["severity"],
        occurred_at=row["occurred_at"], hot_list_until=row["hot_list_until"],
        status="closed" if row["closed_at"] else "open", closed_at=row["closed_at"],
        outcome=row["outcome"], closing_note=row["closing_note"],
        hot_list=[HotListEntry(entry=WatchlistEntry.model_validate_json(e["entry"]),
                               cancelled_at=e["cancelled_at"],
                               cancel_reason=e["cancel_reason"]) for e in entries])
