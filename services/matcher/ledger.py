"""The matcher's record of what it did, in its own tables (`migrations/`).

- `matcher_verdicts`: one row per report matched (how many hits), written once its hits
  were acknowledged; ingest verifies every published report against it.
- `matcher_hits`: every hit emitted, until an alert exists for it; the matcher's
  reconciliation publishes again those that never became an alert.
- `matcher_entries`: the newest version of each entry whose change was processed in full
  (late hits or withdrawal acknowledged); at start, what changed while the matcher was
  down is processed from the difference with the snapshot.

It reads other services only through their read-only views: `ingest_watchlist`,
`ingest_reports`, `notifier_alert_states`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from shared.events import HitFound

RECONCILE_LOCK_ID = 0x6A1A_0003
OPEN_STATUSES = ["raised", "acknowledged", "confirmed", "rejected"]


@dataclass(frozen=True)
class UnprocessedEntry:
    entry_id: str
    version: int
    entry_json: str
    cancelled: bool
    owner_unit: str
    cancel_reason: str | None


@dataclass(frozen=True)
class PendingHit:
    hit_id: UUID
    entry_id: str
    late: bool
    redriven: int
    delivered: bool
    report_json: str | None
    """The report the hit came from (None: no longer in ingest's record)."""


@dataclass(frozen=True)
class OpenAfterCancel:
    entry_id: str
    owner_unit: str
    version: int
    reason: str


def _hit_rows(hits: Iterable[HitFound]) -> tuple[list[UUID], list[UUID], list[str], list[bool]]:
    hits = list(hits)
    return ([h.hit_id for h in hits], [h.source_event_id for h in hits],
            [h.entry.entry_id for h in hits], [h.late for h in hits])


_INSERT_HITS = """INSERT INTO matcher_hits (hit_id, source_event_id, entry_id, late)
                  SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bool[])
                  ON CONFLICT (hit_id) DO NOTHING"""


class Ledger:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def record_reports(self, verdicts: list[tuple[UUID, int]],
                             hits: list[HitFound]) -> None:
        """Reports matched (event id, hits raised) and the hits, their hits acknowledged."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO matcher_verdicts (event_id, hits)
                   SELECT * FROM unnest($1::uuid[], $2::int[])
                   ON CONFLICT (event_id) DO NOTHING""",
                [event_id for event_id, _ in verdicts], [count for _, count in verdicts])
            if hits:
                await conn.execute(_INSERT_HITS, *_hit_rows(hits))

    async def record_entries(self, versions: dict[str, int], hits: list[HitFound]) -> None:
        """Entry changes processed (entry id -> version) and their late hits, acknowledged."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO matcher_entries (entry_id, version)
                   SELECT * FROM unnest($1::text[], $2::int[])
                   ON CONFLICT (entry_id) DO UPDATE
                   SET version = greatest(matcher_entries.version, EXCLUDED.version),
                       processed_at = now()""",
                list(versions), list(versions.values()))
            if hits:
                await conn.execute(_INSERT_HITS, *_hit_rows(hits))

    async def snapshot(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT entry::text, version, cancelled_at FROM ingest_watchlist")

    async def recent_reports(self, window: timedelta) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT occurred_at, payload::text FROM ingest_reports
                WHERE occurred_at >= now() - $1::interval ORDER BY occurred_at""", window)

    async def unprocessed_entries(self) -> list[UnprocessedEntry]:
        """Entries whose current version the matcher never processed (changed while no
        matcher ran)."""
        rows = await self.pool.fetch(
            """SELECT w.entry_id, w.version, w.entry::text AS entry,
                      w.cancelled_at IS NOT NULL AS cancelled, w.owner_unit, w.cancel_reason
                 FROM ingest_watchlist w LEFT JOIN matcher_entries m USING (entry_id)
                WHERE m.version IS NULL OR m.version < w.version
                ORDER BY w.updated_at""")
        return [UnprocessedEntry(r["entry_id"], r["version"], r["entry"], r["cancelled"],
                                 r["owner_unit"], r["cancel_reason"]) for r in rows]

    async def pending_hits(self, conn: asyncpg.Connection, older_than: datetime,
                           limit: int) -> list[PendingHit]:
        """Unresolved hits emitted before `older_than`, locked, with whether their alert
        exists (and, for those without one, the report they came from)."""
        rows = await conn.fetch(
            """SELECT h.hit_id, h.source_event_id, h.entry_id, h.late, h.redriven,
                      EXISTS (SELECT 1 FROM notifier_alert_states a
                               WHERE a.hit_id = h.hit_id) AS delivered
                 FROM matcher_hits h
                WHERE h.resolved_at IS NULL AND h.emitted_at < $1
                ORDER BY h.emitted_at LIMIT $2
                  FOR UPDATE OF h SKIP LOCKED""", older_than, limit)
        missing = [row["source_event_id"] for row in rows if not row["delivered"]]
        reports = {row["event_id"]: row["payload"] for row in await conn.fetch(
            "SELECT event_id, payload::text AS payload FROM ingest_reports "
            "WHERE event_id = ANY($1::uuid[])", missing)} if missing else {}
        return [PendingHit(r["hit_id"], r["entry_id"], r["late"], r["redriven"],
                           r["delivered"], reports.get(r["source_event_id"])) for r in rows]

    @staticmethod
    async def resolve(conn: asyncpg.Connection, hit_ids: list[UUID]) -> None:
        await conn.execute("UPDATE matcher_hits SET resolved_at = now() WHERE hit_id = ANY($1)",
                           hit_ids)

    @staticmethod
    async def redriven(conn: asyncpg.Connection, hit_ids: list[UUID]) -> None:
        await conn.execute(
            "UPDATE matcher_hits SET redriven = redriven + 1, emitted_at = now() "
            "WHERE hit_id = ANY($1)", hit_ids)

    async def undelivered(self, older_than: datetime, max_redrives: int) -> tuple[int, int]:
        """(waiting, stuck): unresolved hits older than the grace period."""
        row = await self.pool.fetchrow(
            """SELECT count(*) FILTER (WHERE redriven < $2) AS waiting,
                      count(*) FILTER (WHERE redriven >= $2) AS stuck
                 FROM matcher_hits WHERE resolved_at IS NULL AND emitted_at < $1""",
            older_than, max_redrives)
        return row["waiting"], row["stuck"]

    async def open_after_cancel(self, cancelled_before: datetime, since: datetime,
                                limit: int = 100) -> list[OpenAfterCancel]:
        """Processed cancellations whose entry still has open alerts."""
        rows = await self.pool.fetch(
            """SELECT w.entry_id, w.owner_unit, w.version,
                      coalesce(w.cancel_reason, 'cancelled') AS reason
                 FROM ingest_watchlist w JOIN matcher_entries m USING (entry_id)
                WHERE w.cancelled_at IS NOT NULL AND w.cancelled_at < $1
                  AND w.cancelled_at >= $2 AND m.version >= w.version
                  AND EXISTS (SELECT 1 FROM notifier_alert_states a
                               WHERE a.entry_id = w.entry_id AND a.status = ANY($3))
                LIMIT $4""", cancelled_before, since, OPEN_STATUSES, limit)
        return [OpenAfterCancel(r["entry_id"], r["owner_unit"], r["version"], r["reason"])
                for r in rows]

    async def forget_older_than(self, before: datetime) -> None:
        """Retention: verdicts and resolved hits older than `before`."""
        await self.pool.execute("DELETE FROM matcher_verdicts WHERE verdict_at < $1", before)
        await self.pool.execute(
            "DELETE FROM matcher_hits WHERE resolved_at IS NOT NULL AND resolved_at < $1",
            before)
