"""The unit directory: units and coordination agreements, as the admin API and CLI edit it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import asyncpg
from pydantic import Field, model_validator

from shared.errors import Conflict, Unprocessable
from shared.events import Category, Contract, ShortText, UnitCode

UnitKind = Literal["commune_police", "province_police", "border_guard", "military", "ministry"]


class UnitIn(Contract):
    code: UnitCode
    name: ShortText
    kind: UnitKind
    parent_code: UnitCode | None = None
    province_code: int | None = Field(None, ge=1, le=99)
    ward_code: int | None = Field(None, ge=1, le=99_999)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class Unit(UnitIn):
    active_from: datetime
    active_to: datetime | None
    successor_code: UnitCode | None = None


class UnitChange(Contract):
    unit_code: UnitCode
    change: Literal["renamed", "reparented", "merged", "moved"]
    old_value: str | None
    new_value: str | None
    changed_at: datetime


class Adjacency(Contract):
    unit_a: UnitCode
    unit_b: UnitCode
    note: str | None = None


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
                 "active_from, active_to, successor_code")


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


async def _active_unit(conn: asyncpg.Connection, code: str, field: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT code, name, parent_code, active_to, successor_code "
                              "FROM units WHERE code = $1", code)
    if row is None:
        raise Unprocessable(f"unknown unit {code}", field=field)
    if row["active_to"] is not None:
        raise Conflict(f"unit {code} was merged into {row['successor_code']}", field=field)
    return row


async def _log_change(conn: asyncpg.Connection, code: str, change: str, old: str | None,
                      new: str | None) -> None:
    await conn.execute(
        "INSERT INTO unit_changes (unit_code, change, old_value, new_value) "
        "VALUES ($1, $2, $3, $4)", code, change, old, new)


async def rename_unit(conn: asyncpg.Connection, code: str, name: str) -> None:
    """A new name from now on; alerts raised before keep the old one."""
    async with conn.transaction():
        row = await _active_unit(conn, code, "code")
        if row["name"] == name:
            return
        await conn.execute("UPDATE units SET name = $2 WHERE code = $1", code, name)
        await _log_change(conn, code, "renamed", row["name"], name)


async def reparent_unit(conn: asyncpg.Connection, code: str, parent: str | None) -> None:
    """Move a unit under another parent (escalations go to the new parent from now on)."""
    async with conn.transaction():
        row = await _active_unit(conn, code, "code")
        if parent is not None:
            await _active_unit(conn, parent, "parent")
            ancestors = await conn.fetchval(
                """WITH RECURSIVE up(code) AS (
                       SELECT $1::text UNION SELECT u.parent_code FROM units u JOIN up
                       ON u.code = up.code WHERE u.parent_code IS NOT NULL)
                   SELECT array_agg(code) FROM up""", parent)
            if code in ancestors:
                raise Unprocessable(f"{parent} is {code} or below it: that would be a cycle",
                                    field="parent")
        if row["parent_code"] == parent:
            return
        await conn.execute("UPDATE units SET parent_code = $2 WHERE code = $1", code, parent)
        await _log_change(conn, code, "reparented", row["parent_code"], parent)


async def merge_unit(conn: asyncpg.Connection, code: str, into: str) -> None:
    """Unit `code` ends now and `into` takes over its territory: its adjacencies move to
    `into`, alerts that would have gone to it go to `into`, and its API keys stop working.
    Its past alerts, agreements and history stay as they were."""
    if code == into:
        raise Unprocessable("a unit cannot be merged into itself", field="into")
    async with conn.transaction():
        await _active_unit(conn, code, "code")
        await _active_unit(conn, into, "into")
        await conn.execute(
            "UPDATE units SET active_to = now(), successor_code = $2 WHERE code = $1", code, into)
        await conn.execute(
            "UPDATE units SET parent_code = $2 WHERE parent_code = $1 AND active_to IS NULL",
            code, into)
        neighbours = await conn.fetch(
            """SELECT CASE WHEN unit_a = $1 THEN unit_b ELSE unit_a END AS other, note
                 FROM adjacency WHERE unit_a = $1 OR unit_b = $1""", code)
        for row in neighbours:
            if row["other"] != into:
                await add_adjacency(conn, into, row["other"], row["note"])
        await conn.execute("UPDATE api_keys SET revoked_at = now() "
                           "WHERE unit_code = $1 AND revoked_at IS NULL", code)
        await _log_change(conn, code, "merged", code, into)


async def unit_history(conn: asyncpg.Connection | asyncpg.Pool, code: str) -> list[UnitChange]:
    rows = await conn.fetch(
        "SELECT unit_code, change, old_value, new_value, changed_at FROM unit_changes "
        "WHERE unit_code = $1 OR (change = 'merged' AND new_value = $1) ORDER BY id", code)
    return [UnitChange(**dict(row)) for row in rows]


async def add_adjacency(conn: asyncpg.Connection, a: str, b: str, note: str | None = None) -> bool:
    """Record that the territories of `a` and `b` touch; False if it was known already."""
    if a == b:
        raise Unprocessable("a unit is not adjacent to itself", field="unit_b")
    for code, field in ((a, "unit_a"), (b, "unit_b")):
        await _active_unit(conn, code, field)
    first, second = sorted((a, b))
    status = await conn.execute(
        "INSERT INTO adjacency (unit_a, unit_b, note) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING", first, second, note)
    return status == "INSERT 0 1"


async def remove_adjacency(conn: asyncpg.Connection, a: str, b: str) -> bool:
    first, second = sorted((a, b))
    status = await conn.execute(
        "DELETE FROM adjacency WHERE unit_a = $1 AND unit_b = $2", first, second)
    return status == "DELETE 1"


async def list_adjacency(conn: asyncpg.Connection | asyncpg.Pool,
                         unit: str | None = None) -> list[Adjacency]:
    rows = await conn.fetch(
        "SELECT unit_a, unit_b, note FROM adjacency "
        "WHERE $1::text IS NULL OR unit_a = $1 OR unit_b = $1 ORDER BY unit_a, unit_b", unit)
    return [Adjacency(**dict(row)) for row in rows]


async def list_agreements(conn: asyncpg.Connection | asyncpg.Pool) -> list[Agreement]:
    rows = await conn.fetch(
        """SELECT a.id, a.title, a.categories, a.valid_from, a.valid_to,
                  array_agg(p.unit_code ORDER BY p.unit_code) AS parties
             FROM agreements a JOIN agreement_parties p ON p.agreement_id = a.id
            GROUP BY a.id ORDER BY a.id""")
    return [Agreement(**{**dict(row), "categories": tuple(row["categories"]),
                         "parties": tuple(row["parties"])}) for row in rows]
