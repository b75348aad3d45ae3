"""The unit directory: units and coordination agreements, as the admin API and CLI edit it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import asyncpg
from pydantic import Field, model_validator

from shared.events import Category, Contract, ShortText, UnitCode
from shared.http import Conflict, Unprocessable

UnitKind = Literal["commune_police", "province_police", "border_guard", "military", "ministry"]


class UnitIn(Contract):
    code: UnitCode
    name: ShortText
    kind: UnitKind
    parent_code: UnitCode | None = None
    province_code: int | None = Field(None, ge=1, le=99)
    ward_code: int | None = Field(None, ge=1)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class Unit(UnitIn):
    active_from: datetime
    active_to: datetime | None


class AgreementIn(Contract):
    title: ShortText
    parties: tuple[UnitCode, ...] = Field(min_length=2, max_length=100)
    categories: tuple[Category, ...] = Field((), description="Empty: every category.")
    valid_from: date
    valid_to: date | None = None

    @model_validator(mode="after")
    def _dates_in_order(self) -> AgreementIn:
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        return self


class Agreement(AgreementIn):
    id: int


_UNIT_COLUMNS = ("code, name, kind, parent_code, province_code, ward_code, lat, lon, "
                 "active_from, active_to")


async def list_units(conn: asyncpg.Connection | asyncpg.Pool) -> list[Unit]:
    rows = await conn.fetch(f"SELECT {_UNIT_COLUMNS} FROM units ORDER BY code")
    return [Unit(**dict(row)) for row in rows]


async def create_unit(conn: asyncpg.Connection | asyncpg.Pool, unit: UnitIn) -> Unit:
    if unit.parent_code is not None and not await conn.fetchval(
        "SELECT 1 FROM units WHERE code = $1", unit.parent_code
    ):
        raise Unprocessable(f"unknown parent unit {unit.parent_code}", field="parent_code")
    row = await conn.fetchrow(
        f"""INSERT INTO units (code, name, kind, parent_code, province_code, ward_code, lat, lon)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (code) DO NOTHING
            RETURNING {_UNIT_COLUMNS}""",
        unit.code, unit.name, unit.kind, unit.parent_code, unit.province_code, unit.ward_code,
        unit.lat, unit.lon,
    )
    if row is None:
        raise Conflict(f"unit {unit.code} exists already", field="code")
    return Unit(**dict(row))


async def create_agreement(conn: asyncpg.Connection, agreement: AgreementIn) -> Agreement:
    unknown = set(agreement.parties) - {
        row["code"] for row in await conn.fetch(
            "SELECT code FROM units WHERE code = ANY($1::text[])", list(agreement.parties))
    }
    if unknown:
        raise Unprocessable(f"unknown unit(s): {', '.join(sorted(unknown))}", field="parties")
    async with conn.transaction():
        agreement_id = await conn.fetchval(
            """INSERT INTO agreements (title, categories, valid_from, valid_to)
               VALUES ($1, $2, $3, $4) ON CONFLICT (title) DO NOTHING RETURNING id""",
            agreement.title, [c.value for c in agreement.categories], agreement.valid_from,
            agreement.valid_to,
        )
        if agreement_id is None:
            raise Conflict(f"an agreement titled {agreement.title!r} exists already",
                           field="title")
        await conn.executemany(
            "INSERT INTO agreement_parties (agreement_id, unit_code) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING",
            [(agreement_id, code) for code in agreement.parties],
        )
    return Agreement(id=agreement_id, **agreement.model_dump())
