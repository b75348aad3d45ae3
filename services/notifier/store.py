"""The notifier's PostgreSQL side: alerts, deliveries and the directory look-ups."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg

from services.notifier.feed import ALERTS_CHANNEL, notification
from services.notifier.targeting import choose_recipients
from shared.events import HitFound, HitsWithdrawn, Recipient
from shared.http import NotFound

_PARTNERS = """
SELECT DISTINCT other.unit_code
  FROM agreement_parties mine
  JOIN agreements a ON a.id = mine.agreement_id
  JOIN agreement_parties other ON other.agreement_id = a.id
 WHERE mine.unit_code = $1 AND other.unit_code <> $1
   AND a.valid_from <= current_date AND (a.valid_to IS NULL OR a.valid_to >= current_date)
   AND (cardinality(a.categories) = 0 OR $2 = ANY (a.categories))
 ORDER BY other.unit_code
"""

_ALERT_COLUMNS = """a.alert_id, a.hit_id, a.entry_id, a.entry_version, a.category,
    a.owner_unit, a.seen_unit, a.source_event_id, a.correlation_id, a.seen_at, a.score,
    a.late, a.status, a.raised_at, a.hit, d.reasons, d.delivered_at, d.acknowledged_at"""


@dataclass(frozen=True)
class NewAlert:
    alert_id: UUID
    hit: HitFound
    recipients: tuple[Recipient, ...]


class AlertStore:
    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def store_hits(self, events: list[HitFound | HitsWithdrawn]) -> list[NewAlert]:
        """Apply hits and withdrawals in their order, in one transaction.

        A hit makes an alert with its deliveries unless its hit id was seen before; a
        withdrawal closes the entry's open alerts (status `withdrawn`).
        """
        created: list[NewAlert] = []
        async with self._pool.acquire() as conn, conn.transaction():
            for event in events:
                if isinstance(event, HitsWithdrawn):
                    await conn.execute(
                        "UPDATE alerts SET status = 'withdrawn' "
                        "WHERE entry_id = $1 AND status = 'raised'",
                        event.entry_id,
                    )
                    continue
                alert = await self._store_hit(conn, event)
                if alert is not None:
                    created.append(alert)
        return created

    async def _store_hit(self, conn: asyncpg.Connection, hit: HitFound) -> NewAlert | None:
        alert_id = await conn.fetchval(
            """INSERT INTO alerts (alert_id, hit_id, entry_id, entry_version, category,
                   owner_unit, seen_unit, source_event_id, correlation_id, seen_at, score,
                   late, hit)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
               ON CONFLICT (hit_id) DO NOTHING
               RETURNING alert_id""",
            uuid4(), hit.hit_id, hit.entry.entry_id, hit.entry.version,
            hit.entry.category.value, hit.entry.owner_unit, hit.place.unit_code,
            hit.source_event_id, hit.correlation(), hit.seen_at, hit.score, hit.late,
            hit.model_dump(mode="json"),
        )
        if alert_id is None:
            return None  # a redelivered hit: its alert exists already
        partners = [
            row["unit_code"]
            for row in await conn.fetch(_PARTNERS, hit.place.unit_code, hit.entry.category.value)
        ]
        recipients = choose_recipients(hit, partners)
        await conn.executemany(
            "INSERT INTO deliveries (alert_id, unit_code, reasons) VALUES ($1, $2, $3)",
            [(alert_id, r.unit_code, list(r.reasons)) for r in recipients],
        )
        # Delivered on commit, to every notifier instance's live feed.
        await conn.execute("SELECT pg_notify($1, $2)", ALERTS_CHANNEL,
                           notification(alert_id, [r.unit_code for r in recipients]))
        return NewAlert(alert_id, hit, tuple(recipients))

    async def alerts_for_unit(self, unit_code: str, limit: int = 100) -> list[dict[str, object]]:
        rows = await self._pool.fetch(
            f"""SELECT {_ALERT_COLUMNS}
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1
                 ORDER BY a.raised_at DESC LIMIT $2""",
            unit_code, limit,
        )
        return [_alert_view(row) for row in rows]

    async def alert_for_unit(self, alert_id: UUID, unit_code: str) -> dict[str, object]:
        row = await self._pool.fetchrow(
            f"""SELECT {_ALERT_COLUMNS}
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 AND a.alert_id = $2""",
            unit_code, alert_id,
        )
        if row is None:
            # Also for alerts that exist but were not addressed to this unit.
            raise NotFound(f"no alert {alert_id} for unit {unit_code}", field="alert_id")
        return _alert_view(row)

    async def acknowledge(self, alert_id: UUID, unit_code: str) -> dict[str, object]:
        await self._pool.execute(
            """UPDATE deliveries SET acknowledged_at = coalesce(acknowledged_at, now())
                WHERE alert_id = $1 AND unit_code = $2""",
            alert_id, unit_code,
        )
        return await self.alert_for_unit(alert_id, unit_code)


def _alert_view(row: asyncpg.Record) -> dict[str, object]:
    hit = row["hit"]
    return {
        "alert_id": str(row["alert_id"]),
        "hit_id": str(row["hit_id"]),
        "status": row["status"],
        "raised_at": row["raised_at"],
        "category": row["category"],
        "entry": hit["entry"],
        "subject": hit["subject"],
        "place": hit["place"],
        "seen_at": row["seen_at"],
        "score": row["score"],
        "match_reasons": hit["reasons"],
        "late": row["late"],
        "owner_unit": row["owner_unit"],
        "seen_unit": row["seen_unit"],
        "correlation_id": str(row["correlation_id"]),
        "why_you": list(row["reasons"]),
        "delivered_at": row["delivered_at"],
        "acknowledged_at": row["acknowledged_at"],
    }
