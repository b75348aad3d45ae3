"""Directory administration (`/v1/admin`): only keys with the admin role."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from services.ingest.deps import CurrentUnit, Database
from shared.auth import Principal
from shared.directory import (
    Agreement,
    AgreementIn,
    Unit,
    UnitIn,
    create_agreement,
    create_unit,
    list_units,
)
from shared.errors import Forbidden
from shared.http import error_responses

router = APIRouter(prefix="/v1", responses=error_responses(401, 429))


async def _admin(unit: CurrentUnit) -> Principal:
    if not unit.is_admin:
        raise Forbidden(f"unit {unit.unit_code}'s key has no admin role")
    return unit


Admin = Annotated[Principal, Depends(_admin)]


@router.get("/units", response_model=list[Unit])
async def units(db: Database, unit: CurrentUnit) -> list[Unit]:
    """The unit directory, for choosing place and party codes."""
    return await list_units(db)


@router.post("/admin/units", status_code=status.HTTP_201_CREATED, response_model=Unit,
             responses=error_responses(403, 409))
async def add_unit(body: UnitIn, db: Database, admin: Admin) -> Unit:
    return await create_unit(db, body)


@router.post("/admin/agreements", status_code=status.HTTP_201_CREATED, response_model=Agreement,
             responses=error_responses(403, 409))
async def add_agreement(body: AgreementIn, db: Database, admin: Admin) -> Agreement:
    async with db.acquire() as conn:
        return await create_agreement(conn, body)
