"""Ingest's writes: each accepted event and its outbox row in one PostgreSQL transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from shared.events import (
    Event,
    WatchlistEntry,
    WatchlistEntryCancelled,
    WatchlistEntryUpserted,
    encode_event,
    utcnow,
)
from shared.http import Conflict, Forbidden, NotFound
from shared.settings import CommonSettings
from shared.topics import WATCHLIST

OUTBOX_CHANNEL = "giapranh_outbox"


@dataclass(frozen=True)
class Accepted:
    event_id: UUID
    type: str
    recorded_at: datetime
    duplicate: bool
    """True when this was a retry of an event already accepted (nothing new was written)."""


def request_hash(canonical_body: str) -> bytes:
    return hashlib.sha256(canonical_body.encode()).digest()


class IngestStore:
    def __init__(self, pool: asyncpg.Pool, settings: CommonSettings):
        self._pool = pool
        self._settings = settings

    async def unit_exists(self, code: str) -> bool:
        return bool(await self._pool.fetchval("SELECT 1 FROM units WHERE code = $1", code))

    async def record(
        self, event: Event, *, topic: str, key: str, fingerprint: bytes
    ) -> Accepted:
        """Store `event` and its outbox row, or recognise a retry of the same request.

        A retry (same event id, same unit, same body fingerprint) returns the original
        acceptance and writes nothing; the same id with another body is a 409.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._record(conn, event, topic=topic, key=key, fingerprint=fingerprint)

    async def _record(
        self, conn: asyncpg.Connection, event: Event, *, topic: str, key: str, fingerprint: bytes
    ) -> Accepted:
        assert event.producer_unit is not None
        recorded_at = await conn.fetchval(
            """INSERT INTO events (event_id, type, unit_code, request_hash, occurred_at,
                                   recorded_at, payload)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (event_id) DO NOTHING
               RETURNING recorded_at""",
            event.event_id, event.type, event.producer_unit, fingerprint,
            event.occurred_at, event.recorded_at, event.model_dump(mode="json"),
        )
        if recorded_at is None:
            return await self._original(conn, event, fingerprint)
        await conn.execute(
            "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
            event.event_id, self._settings.topic(topic), key, encode_event(event),
        )
        await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
        return Accepted(event.event_id, event.type, recorded_at, duplicate=False)

    async def _original(
        self, conn: asyncpg.Connection, event: Event, fingerprint: bytes
    ) -> Accepted:
        row = await conn.fetchrow(
            "SELECT type, unit_code, request_hash, recorded_at FROM events WHERE event_id = $1",
            event.event_id,
        )
        same = (
            row["unit_code"] == event.producer_unit
            and row["type"] == event.type
            and row["request_hash"] == fingerprint
        )
        if not same:
            raise Conflict(
                f"event id {event.event_id} was already used for a different request",
                field="event_id",
            )
        return Accepted(event.event_id, row["type"], row["recorded_at"], duplicate=True)

    async def upsert_watchlist_entry(
        self, entry: WatchlistEntry, *, unit_code: str
    ) -> tuple[WatchlistEntry, Accepted | None]:
        """Create or update an entry owned by `unit_code`; the server assigns the version.

        Re-sending the current content changes nothing and returns (entry, None).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT owner_unit, version, entry, cancelled_at FROM watchlist_entries "
                "WHERE entry_id = $1 FOR UPDATE",
                entry.entry_id,
            )
            if current is not None and current["owner_unit"] != unit_code:
                raise Forbidden(
                    f"watchlist entry {entry.entry_id} belongs to unit {current['owner_unit']}",
                    field="entry_id",
                )
            version = 1 if current is None else current["version"] + 1
            if current is not None and current["cancelled_at"] is None:
                unchanged = entry.model_copy(update={"version": current["version"]})
                if unchanged.model_dump(mode="json") == current["entry"]:
                    return unchanged, None
            stored = entry.model_copy(update={"version": version, "owner_unit": unit_code})
            await conn.execute(
                """INSERT INTO watchlist_entries
                       (entry_id, owner_unit, category, version, entry, valid_until)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (entry_id) DO UPDATE SET
                       category = EXCLUDED.category, version = EXCLUDED.version,
                       entry = EXCLUDED.entry, valid_until = EXCLUDED.valid_until,
                       cancelled_at = NULL, cancel_reason = NULL, updated_at = now()""",
                stored.entry_id, unit_code, stored.category.value, version,
                stored.model_dump(mode="json"), stored.valid_until,
            )
            event = WatchlistEntryUpserted(
                occurred_at=utcnow(), producer_unit=unit_code, entry=stored
            )
            accepted = await self._record(
                conn, event, topic=WATCHLIST.name, key=stored.entry_id,
                fingerprint=request_hash(event.model_dump_json()),
            )
            return stored, accepted

    async def cancel_watchlist_entry(
        self, entry_id: str, *, unit_code: str, reason: str
    ) -> Accepted:
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT owner_unit, version, cancelled_at FROM watchlist_entries "
                "WHERE entry_id = $1 FOR UPDATE",
                entry_id,
            )
            if current is None:
                raise NotFound(f"no watchlist entry {entry_id}", field="entry_id")
            if current["owner_unit"] != unit_code:
                raise Forbidden(
                    f"watchlist entry {entry_id} belongs to unit {current['owner_unit']}",
                    field="entry_id",
                )
            if current["cancelled_at"] is not None:
                raise Conflict(f"watchlist entry {entry_id} is already cancelled")
            version = current["version"] + 1
            await conn.execute(
                """UPDATE watchlist_entries
                      SET version = $2, cancelled_at = now(), cancel_reason = $3,
                          updated_at = now()
                    WHERE entry_id = $1""",
                entry_id, version, reason,
            )
            event = WatchlistEntryCancelled(
                occurred_at=utcnow(), producer_unit=unit_code, entry_id=entry_id,
                owner_unit=unit_code, version=version, reason=reason,
            )
            return await self._record(
                conn, event, topic=WATCHLIST.name, key=entry_id,
                fingerprint=request_hash(event.model_dump_json()),
            )

    async def event_status(self, event_id: UUID, unit_code: str) -> dict[str, object]:
        row = await self._pool.fetchrow(
            """SELECT e.type, e.recorded_at, max(o.dispatched_at) AS dispatched_at,
                      bool_and(o.dispatched_at IS NOT NULL) AS relayed
                 FROM events e LEFT JOIN outbox o USING (event_id)
                WHERE e.event_id = $1 AND e.unit_code = $2
                GROUP BY e.type, e.recorded_at""",
            event_id, unit_code,
        )
        if row is None:
            raise NotFound(f"no event {event_id} from unit {unit_code}", field="event_id")
        return {
            "event_id": str(event_id),
            "type": row["type"],
            "status": "relayed" if row["relayed"] else "accepted",
            "recorded_at": row["recorded_at"],
            "relayed_at": row["dispatched_at"],
        }
