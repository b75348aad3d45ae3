"""Administration through the API: the directory (province admins), people's keys (unit
admins for their unit, province admins for the units under theirs; anyone for their own
key) and the audit log. Every change is recorded in the audit log, with its person."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, Field

from services.ingest.deps import CurrentUnit, Database, Settings
from shared import audit
from shared.audit import Actor
from shared.auth import (
    ROLES,
    Principal,
    Role,
    issue_api_key_row,
    key_info,
    list_api_keys,
    revoke_api_key,
    role_rank,
    rotate_api_key,
    units_under,
)
from shared.directory import (
    Agreement,
    AgreementIn,
    Unit,
    UnitIn,
    create_agreement,
    create_unit,
    list_units,
)
from shared.errors import Forbidden, NotFound, Unprocessable
from shared.events import Contract, ShortText
from shared.http import (
    KeyFirstRoute,
    ProvinceAdminKey,
    UnitAdminKey,
    error_responses,
    service_state,
)

router = APIRouter(prefix="/v1", responses=error_responses(401, 429),
                   route_class=KeyFirstRoute)

MAX_GRACE_HOURS = 24 * 30


@router.get("/units", response_model=list[Unit])
async def units(db: Database, unit: CurrentUnit) -> list[Unit]:
    """The unit directory, for choosing place and party codes."""
    return await list_units(db)


@router.post("/admin/units", status_code=status.HTTP_201_CREATED, response_model=Unit,
             responses=error_responses(403, 409))
async def add_unit(body: UnitIn, db: Database, admin: ProvinceAdminKey) -> Unit:
    """Add a unit to the directory (province admins)."""
    async with db.acquire() as conn, conn.transaction():
        created = await create_unit(conn, body)
        await audit.record(conn, Actor.of(admin), "directory.unit.add", subject=created.code,
                           detail=body.model_dump(mode="json"))
        return created


@router.post("/admin/agreements", status_code=status.HTTP_201_CREATED, response_model=Agreement,
             responses=error_responses(403, 409))
async def add_agreement(body: AgreementIn, db: Database, admin: ProvinceAdminKey) -> Agreement:
    """Record a coordination agreement between units (province admins)."""
    async with db.acquire() as conn, conn.transaction():
        created = await create_agreement(conn, body)
        await audit.record(conn, Actor.of(admin), "directory.agreement.add",
                           subject=str(created.id), detail=body.model_dump(mode="json"))
        return created


# ------------------------------------------------------------------------------ keys


class KeyView(BaseModel):
    """A key as its admins see it: never the key itself."""

    id: int
    unit_code: str
    person_id: int
    person_name: str
    role: Role
    key_prefix: str = Field(description="The first 12 characters, to tell keys apart.")
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    replaced_by: int | None = Field(description="The key that replaced it (rotation).")


class KeyIn(Contract):
    person: ShortText = Field(min_length=1, description="The officer or desk the key is for, "
                              "by name (recorded on everything done with the key).")
    role: Role = "desk"
    unit_code: ShortText | None = Field(None, description="Default: the caller's unit. "
                                        "Province admins may name a unit under theirs.")
    label: ShortText | None = None
    expires_at: datetime | None = Field(None, description="When the key stops working.")


class KeyIssued(KeyView):
    key: str = Field(description="The key itself: shown once, here.")


class RotateIn(Contract):
    grace_hours: float = Field(24, ge=0, le=MAX_GRACE_HOURS, description=(
        "How long the old key keeps working, so that devices can switch over."))


class Rotated(KeyIssued):
    old_key_stops_at: datetime


async def _scope(conn: asyncpg.Connection | asyncpg.Pool, principal: Principal) -> list[str]:
    """The units whose keys and audit records the caller administers."""
    if principal.may("province_admin"):
        return await units_under(conn, principal.unit_code)
    if principal.may("unit_admin"):
        return [principal.unit_code]
    return []


async def _key_in_reach(conn: asyncpg.Connection | asyncpg.Pool, principal: Principal,
                        key_id: int) -> KeyView:
    """A key the caller may rotate or revoke: its own, or one of the units it
    administers (others are 404, whether or not they exist)."""
    info = await key_info(conn, key_id)
    if info is None or (info.id != principal.key_id
                        and info.unit_code not in await _scope(conn, principal)):
        raise NotFound(f"no key {key_id} you administer", field="key_id")
    return KeyView(**info.__dict__)


@router.get("/keys", response_model=list[KeyView], responses=error_responses(403))
async def list_keys(
    db: Database, admin: UnitAdminKey,
    unit: Annotated[str | None, Query(max_length=64, description=(
        "Only this unit's keys (province admins: a unit under theirs)."))] = None,
) -> list[KeyView]:
    """The keys of the caller's unit (province admins: of the units under theirs)."""
    scope = await _scope(db, admin)
    if unit is not None:
        if unit not in scope:
            raise Forbidden(f"unit {unit} is not one you administer", field="unit")
        scope = [unit]
    return [KeyView(**info.__dict__) for info in await list_api_keys(db, units=scope)]


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyIssued,
             responses=error_responses(403))
async def issue_key(body: KeyIn, db: Database, settings: Settings,
                    admin: UnitAdminKey) -> KeyIssued:
    """Issue a key for a person of the caller's unit (province admins: of a unit under
    theirs), with a role no higher than the caller's. The key is shown once."""
    unit_code = body.unit_code or admin.unit_code
    async with db.acquire() as conn, conn.transaction():
        if unit_code not in await _scope(conn, admin):
            raise Forbidden(f"unit {unit_code} is not one you administer", field="unit_code")
        if role_rank(body.role) > role_rank(admin.role):
            raise Forbidden(f"a {admin.role} may not issue a {body.role} key", field="role")
        if not await conn.fetchval(
                "SELECT 1 FROM units WHERE code = $1 AND active_to IS NULL", unit_code):
            raise Unprocessable(f"unit {unit_code} is not active", field="unit_code")
        key_id, key = await issue_api_key_row(
            conn, unit_code, settings.api_key_pepper.get_secret_value(), role=body.role,
            person=body.person, label=body.label, expires_at=body.expires_at)
        view = await _key_in_reach(conn, admin, key_id)
        await audit.record(conn, Actor.of(admin), "key.issue", subject=str(key_id),
                           unit_code=unit_code,
                           detail={"person": body.person, "role": body.role,
                                   "expires_at": body.expires_at})
    return KeyIssued(**view.model_dump(), key=key)


@router.post("/keys/{key_id}/rotate", response_model=Rotated, responses=error_responses(404))
async def rotate_key(key_id: Annotated[int, Path(ge=1, le=2**62)], db: Database,
                     settings: Settings, caller: CurrentUnit, request: Request,
                     body: RotateIn | None = None) -> Rotated:
    """Replace a key by a new one for the same person and role: your own (any role), or
    one of the units you administer. The old key keeps working for `grace_hours`."""
    grace = timedelta(hours=(body or RotateIn()).grace_hours)
    async with db.acquire() as conn, conn.transaction():
        old = await _key_in_reach(conn, caller, key_id)
        rotated = await rotate_api_key(conn, key_id, settings.api_key_pepper.get_secret_value(),
                                       grace)
        if rotated is None:
            raise NotFound(f"key {key_id} no longer works (revoked or expired)",
                           field="key_id")
        new_id, key, stops = rotated
        info = await key_info(conn, new_id)  # the same person's: in reach as the old one
        assert info is not None
        view = KeyView(**info.__dict__)
        await audit.record(conn, Actor.of(caller), "key.rotate", subject=str(key_id),
                           unit_code=old.unit_code,
                           detail={"new_key": new_id, "old_key_stops_at": stops})
    service_state(request).keys.forget(key_id)  # its expiry changed
    return Rotated(**view.model_dump(), key=key, old_key_stops_at=stops)


@router.post("/keys/{key_id}/revoke", response_model=KeyView, responses=error_responses(404))
async def revoke_key(key_id: Annotated[int, Path(ge=1, le=2**62)], db: Database,
                     caller: CurrentUnit, request: Request) -> KeyView:
    """Revoke a key at once (its open alert streams close): your own, or one of the units
    you administer."""
    async with db.acquire() as conn, conn.transaction():
        view = await _key_in_reach(conn, caller, key_id)
        if not await revoke_api_key(conn, key_id):
            return view  # revoked already: nothing changes
        await audit.record(conn, Actor.of(caller), "key.revoke", subject=str(key_id),
                           unit_code=view.unit_code, detail={"person": view.person_name})
        view = await _key_in_reach(conn, caller, key_id)
    # Committed: this process's cache drops the key now, not when the NOTIFY comes back.
    service_state(request).keys.forget(key_id)
    return view


# ------------------------------------------------------------------------------ audit


class AuditView(BaseModel):
    id: int
    at: datetime
    unit_code: str | None
    person_id: int | None
    person_name: str | None
    key_id: int | None
    action: str = Field(description="e.g. watchlist.upsert, alert.confirm, key.rotate")
    subject: str | None
    detail: str = Field(description="The action's details as JSON text (as hashed).")
    hash: str = Field(description="The record's chain hash, hex.")


@router.get("/audit", response_model=list[AuditView], responses=error_responses(403))
async def audit_records(
    db: Database, admin: UnitAdminKey,
    unit: Annotated[str | None, Query(max_length=64, description=(
        "Only this unit's records (province admins: a unit under theirs)."))] = None,
    before: Annotated[int | None, Query(ge=1, le=2**62, description=(
        "Records with ids below this one (paging: the last id of a page)."))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditView]:
    """The audit records of the caller's unit, newest first (province admins: of the units
    under theirs). `giapranh audit verify` proves the whole chain."""
    scope = await _scope(db, admin)
    if unit is not None:
        if unit not in scope:
            raise Forbidden(f"unit {unit} is not one you administer", field="unit")
        scope = [unit]
    return [AuditView(**{**r.__dict__, "hash": r.hash.hex()})
            for r in await audit.records_of(db, scope, before=before, limit=limit)]


__all__ = ["ROLES", "router"]
