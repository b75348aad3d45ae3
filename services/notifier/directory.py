"""The notifier's in-memory copy of the unit directory, for targeting and escalation.

Loaded whole (units, adjacency, agreements: thousands of rows, a few MB) and reloaded when
the `directory_version` sequence, bumped by a trigger on every directory change, has moved:
one cheap query per batch of hits instead of several per hit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

import asyncpg

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class UnitInfo:
    code: str
    name: str
    parent_code: str | None
    lat: float | None
    lon: float | None
    active: bool
    successor_code: str | None


@dataclass(frozen=True)
class AgreementInfo:
    title: str
    categories: frozenset[str]
    valid_from: date
    valid_to: date | None
    parties: tuple[str, ...]

    def covers(self, category: str | None, today: date) -> bool:
        """In force today and covering the category (None: any category)."""
        return (self.valid_from <= today and (self.valid_to is None or today <= self.valid_to)
                and (category is None or not self.categories or category in self.categories))


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing from the first point to the second, degrees from north."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.degrees(math.atan2(x, y)) + 360) % 360


@dataclass
class Directory:
    units: dict[str, UnitInfo] = field(default_factory=dict)
    adjacency: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    agreements: dict[str, list[AgreementInfo]] = field(default_factory=lambda: defaultdict(list))
    version: int = 0

    def current(self, code: str) -> str:
        """The unit that answers for `code` today: itself, or what it was merged into."""
        seen = set()
        while (unit := self.units.get(code)) is not None and not unit.active \
                and unit.successor_code and code not in seen:
            seen.add(code)
            code = unit.successor_code
        return code

    def name(self, code: str) -> str:
        unit = self.units.get(code)
        return unit.name if unit else code

    def ancestors(self, code: str) -> list[str]:
        """Parent, grandparent, ... of the unit that answers for `code`."""
        chain: list[str] = []
        unit = self.units.get(self.current(code))
        while unit is not None and unit.parent_code and unit.parent_code not in chain:
            chain.append(unit.parent_code)
            unit = self.units.get(unit.parent_code)
        return chain

    def partners(self, code: str, category: str | None, today: date) -> list[tuple[str, str]]:
        """(partner, agreement title) for the agreements `code` is party to that cover the
        category today (None: every agreement in force)."""
        found: list[tuple[str, str]] = []
        for agreement in self.agreements.get(code, ()):
            if agreement.covers(category, today):
                found += [(p, agreement.title) for p in agreement.parties if p != code]
        return found

    def adjacent(self, code: str) -> list[str]:
        return sorted(self.adjacency.get(code, ()))

    def within(self, lat: float, lon: float, radius_km: float) -> list[tuple[str, float]]:
        """Active units whose location lies within `radius_km`, nearest first."""
        # A cheap latitude band first: one degree of latitude is ~111 km.
        band = radius_km / 111.0
        found = []
        for unit in self.units.values():
            if unit.lat is None or unit.lon is None or not unit.active:
                continue
            if abs(unit.lat - lat) > band:
                continue
            d = distance_km(lat, lon, unit.lat, unit.lon)
            if d <= radius_km:
                found.append((unit.code, d))
        return sorted(found, key=lambda item: (item[1], item[0]))

    def position(self, code: str) -> tuple[float, float] | None:
        unit = self.units.get(self.current(code))
        if unit is None or unit.lat is None or unit.lon is None:
            return None
        return unit.lat, unit.lon

    def towards(self, lat: float, lon: float, bearing: float, within_km: float,
                spread: float = 45) -> list[tuple[str, float, float]]:
        """(unit, distance km, its bearing) of active units lying within `spread` degrees
        either side of `bearing` from the point and within `within_km`, nearest first."""
        found = []
        for code, distance in self.within(lat, lon, within_km):
            unit = self.units[code]
            if distance < 0.05:
                continue
            heading = bearing_deg(lat, lon, unit.lat, unit.lon)  # type: ignore[arg-type]
            if abs((heading - bearing + 180) % 360 - 180) <= spread:
                found.append((code, distance, heading))
        return found

    def active_units(self) -> list[str]:
        return sorted(code for code, unit in self.units.items() if unit.active)


async def load_directory(conn: asyncpg.Connection | asyncpg.Pool) -> Directory:
    directory = Directory()
    directory.version = await conn.fetchval("SELECT last_value + is_called::int FROM directory_version")
    for row in await conn.fetch(
            "SELECT code, name, parent_code, lat, lon, active_to IS NULL AS active, "
            "successor_code FROM units"):
        directory.units[row["code"]] = UnitInfo(**dict(row))
    for row in await conn.fetch("SELECT unit_a, unit_b FROM adjacency"):
        directory.adjacency[row["unit_a"]].add(row["unit_b"])
        directory.adjacency[row["unit_b"]].add(row["unit_a"])
    for row in await conn.fetch(
            """SELECT a.title, a.categories, a.valid_from, a.valid_to,
                      array_agg(p.unit_code ORDER BY p.unit_code) AS parties
                 FROM agreements a JOIN agreement_parties p ON p.agreement_id = a.id
                GROUP BY a.id"""):
        agreement = AgreementInfo(row["title"], frozenset(row["categories"]), row["valid_from"],
                                  row["valid_to"], tuple(row["parties"]))
        for party in agreement.parties:
            directory.agreements[party].append(agreement)
    return directory


class DirectoryCache:
    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        self._directory: Directory | None = None

    async def get(self, conn: asyncpg.Connection | None = None) -> Directory:
        source = conn or self._pool
        version = await source.fetchval("SELECT last_value + is_called::int FROM directory_version")
        if self._directory is None or self._directory.version != version:
            self._directory = await load_directory(source)
        return self._directory
