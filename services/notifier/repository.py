"""The notifier's SQL: alerts, their deliveries (one per recipient unit) and history.

Nothing here decides anything: the service (`service.py`) calls these inside its
transactions, after the workflow rules (`workflow.py`) said yes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from services.notifier.workflow import OPEN, Escalation, StatusFilter

_ALERT_OWN_COLUMNS = """a.alert_id, a.hit_id, a.entry_id, a.entry_version, a.category,
    a.owner_unit, a.seen_unit, a.source_event_id, a.correlation_id, a.seen_at, a.score,
    a.late, a.status, a.raised_at, a.hit, a.urgency, a.confirm_by, a.escalation_level,
    a.acknowledged_at AS first_acknowledged_at, a.decided_at, a.decided_by, a.decision_note,
    a.closed_at, a.outcome, a.updated_at, a.units, a.kind,
    (SELECT i.hit FROM alerts i WHERE i.kind = 'incident'
        AND i.hit_id = (a.hit -> 'entry' ->> 'incident_id')::uuid) AS incident"""
"""An alert's own columns and, for a hit on an incident's hot list, the incident as it is
now (the hit may come before the incident: they travel on different topics)."""
_DELIVERY_COLUMNS = "d.unit_code, d.reasons, d.delivered_at, d.acknowledged_at"
"""What differs between the units an alert was sent to."""
ALERT_COLUMNS = f"{_ALERT_OWN_COLUMNS}, {_DELIVERY_COLUMNS}"
"""A unit's view of an alert: the alert's columns and the unit's delivery."""

_STATUS_FILTERS = {
    "all": "TRUE",
    "open": "a.status IN ('raised', 'acknowledged', 'confirmed', 'rejected')",
    "overdue": "a.status IN ('raised', 'acknowledged') "
               "AND (a.escalation_level > 0 OR a.confirm_by <= $3)",
    "closed": "a.status IN ('closed', 'withdrawn')",
}

ALERT_INSERT_COLUMNS = (
    "alert_id", "hit_id", "entry_id", "entry_version", "category", "owner_unit", "seen_unit",
    "source_event_id", "correlation_id", "seen_at", "score", "late", "hit", "urgency",
    "confirm_by", "units", "kind")


class AlertRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    # ------------------------------------------------------------------ raising

    @staticmethod
    async def insert_alerts(conn: asyncpg.Connection, columns: dict[str, list[object]],
                            now: datetime) -> set[UUID]:
        """Insert alerts given column-wise (`ALERT_INSERT_COLUMNS`); the hit ids inserted
        (a hit id already stored makes nothing)."""
        rows = await conn.fetch(
            f"""INSERT INTO alerts ({", ".join(ALERT_INSERT_COLUMNS)}, raised_at, updated_at)
                SELECT *, $18::timestamptz, $18::timestamptz FROM unnest(
                    $1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::text[], $6::text[],
                    $7::text[], $8::uuid[], $9::uuid[], $10::timestamptz[], $11::real[],
                    $12::bool[], $13::jsonb[], $14::text[], $15::timestamptz[], $16::jsonb[],
                    $17::text[])
                ON CONFLICT (hit_id) DO NOTHING
                RETURNING hit_id""",
            *(columns[name] for name in ALERT_INSERT_COLUMNS), now)
        return {row["hit_id"] for row in rows}

    @staticmethod
    async def insert_deliveries(
        conn: asyncpg.Connection,
        rows: Sequence[tuple[UUID, str, list[str], str | None, datetime]],
    ) -> None:
        """(alert id, unit, reasons, unit name, delivered at) rows, in one statement, each
        with its alert's figures for the review reports (migration 0008) copied here by a
        join: cheaper on the hot path than the trigger that fills them for other writers
        (1,500 deliveries: ~55 ms against ~75 ms, and ~65-110 ms one statement each).

        The join reads each alert without locking it, so the caller must hold every
        alert's row already: an alert inserted in the same transaction, or one locked
        FOR UPDATE (`incident_alert`, `claim_overdue`, `_locked`). An update of the alert
        committed meanwhile would otherwise not reach this delivery's copy (the trigger
        other writers go through locks the alert itself: migration 0009)."""
        if not rows:
            return
        await conn.execute(
            """WITH why AS (
                   SELECT n, array_agg(reason ORDER BY k) AS reasons
                     FROM unnest($4::int[], $5::text[]) WITH ORDINALITY AS r (n, reason, k)
                    GROUP BY n)
               INSERT INTO deliveries (alert_id, unit_code, reasons, unit_name, delivered_at,
                                       raised_at, sender, kind, category, late, decision,
                                       decided_at, outcome, escalation_level)
               SELECT d.alert_id, d.unit_code, coalesce(why.reasons, '{}'), d.unit_name,
                      d.delivered_at, a.raised_at,
                      CASE WHEN a.kind = 'incident' THEN a.owner_unit ELSE a.seen_unit END,
                      a.kind, a.category, a.late, a.decision, a.decided_at, a.outcome,
                      a.escalation_level
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $6::timestamptz[])
                      WITH ORDINALITY AS d (alert_id, unit_code, unit_name, delivered_at, n)
                 LEFT JOIN why USING (n)
                 LEFT JOIN alerts a ON a.alert_id = d.alert_id
                ORDER BY d.n""",
            [row[0] for row in rows], [row[1] for row in rows], [row[3] for row in rows],
            [n for n, row in enumerate(rows, 1) for _ in row[2]],
            [reason for row in rows for reason in row[2]], [row[4] for row in rows])

    @staticmethod
    async def add_raised_history(conn: asyncpg.Connection, alert_ids: list[UUID],
                                 details: list[str], now: datetime) -> None:
        await conn.execute(
            "INSERT INTO alert_history (alert_id, at, action, detail) "
            "SELECT a, $2, 'raised', d FROM unnest($1::uuid[], $3::text[]) AS x (a, d)",
            alert_ids, now, details)

    @staticmethod
    async def withdraw(conn: asyncpg.Connection, entry_id: str, now: datetime) -> list[UUID]:
        """Withdraw the entry's open alerts; the ids withdrawn."""
        rows = await conn.fetch(
            "UPDATE alerts SET status = 'withdrawn', updated_at = $3 "
            "WHERE entry_id = $1 AND status = ANY($2::text[]) RETURNING alert_id",
            entry_id, list(OPEN), now)
        return [row["alert_id"] for row in rows]

    # ------------------------------------------------------------------ incidents

    @staticmethod
    async def first_time(conn: asyncpg.Connection, event_id: UUID) -> bool:
        """Whether this incident event is handled now for the first time."""
        return await conn.fetchval(
            "INSERT INTO notifier_incident_events (event_id) VALUES ($1) "
            "ON CONFLICT DO NOTHING RETURNING true", event_id) is not None

    async def unhandled_incident_events(self, since: datetime,
                                        until: datetime) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT e.payload::text AS payload FROM ingest_incident_events e
                WHERE e.recorded_at >= $1 AND e.recorded_at < $2
                  AND NOT EXISTS (SELECT 1 FROM notifier_incident_events n
                                   WHERE n.event_id = e.event_id)
                ORDER BY e.recorded_at, e.event_id LIMIT 1000""", since, until)

    @staticmethod
    async def incident_alert(conn: asyncpg.Connection,
                             incident_id: UUID) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT alert_id, hit, status, units FROM alerts "
            "WHERE hit_id = $1 AND kind = 'incident' FOR UPDATE", incident_id)

    @staticmethod
    async def revise_incident(conn: asyncpg.Connection, alert_id: UUID, incident: dict,
                              units: dict[str, str], now: datetime) -> None:
        await conn.execute(
            "UPDATE alerts SET hit = $2, units = units || $3::jsonb, updated_at = $4 "
            "WHERE alert_id = $1", alert_id, incident, units, now)

    @classmethod
    async def add_deliveries(cls, conn: asyncpg.Connection, alert_id: UUID,
                             rows: list[tuple[str, list[str], str | None]],
                             now: datetime) -> list[str]:
        """New recipients of an alert (the caller holds the alert's lock); the units added
        (those it has already keep their delivery)."""
        existing = set(await cls.recipients(conn, alert_id))
        new = [row for row in rows if row[0] not in existing]
        await cls.insert_deliveries(conn, [(alert_id, unit, reasons, name, now)
                                           for unit, reasons, name in new])
        return [row[0] for row in new]

    @staticmethod
    async def close_incident_alerts(conn: asyncpg.Connection, incident_id: UUID,
                                    outcome: str, now: datetime) -> list[UUID]:
        """Close the incident's own alert and the open alerts on its hot list."""
        rows = await conn.fetch(
            """UPDATE alerts SET status = 'closed', outcome = $2, closed_at = $3,
                      updated_at = $3
                WHERE status = ANY($4::text[])
                  AND ((kind = 'incident' AND hit_id = $1)
                       OR (kind = 'hit' AND hit -> 'entry' ->> 'incident_id' = $1::text))
            RETURNING alert_id""", incident_id, outcome, now, list(OPEN))
        return [row["alert_id"] for row in rows]

    # ------------------------------------------------------------------ workflow

    @staticmethod
    async def lock(conn: asyncpg.Connection, alert_id: UUID,
                   unit_code: str) -> asyncpg.Record | None:
        """The alert's state and the unit's delivery, locked; None if not addressed to it."""
        return await conn.fetchrow(
            """SELECT a.status, a.owner_unit, a.seen_unit, a.urgency, a.raised_at, a.kind,
                      d.delivered_at, d.acknowledged_at
                 FROM alerts a JOIN deliveries d USING (alert_id)
                WHERE a.alert_id = $1 AND d.unit_code = $2
                  FOR UPDATE OF a""", alert_id, unit_code)

    @staticmethod
    async def acknowledge(conn: asyncpg.Connection, alert_id: UUID, unit_code: str,
                          now: datetime) -> bool:
        """Whether this acknowledged the delivery (False: it was already)."""
        done = await conn.execute(
            "UPDATE deliveries SET acknowledged_at = $3 "
            "WHERE alert_id = $1 AND unit_code = $2 AND acknowledged_at IS NULL",
            alert_id, unit_code, now)
        if done == "UPDATE 0":
            return False
        await conn.execute(
            """UPDATE alerts SET acknowledged_at = coalesce(acknowledged_at, $2),
                      status = CASE WHEN status = 'raised' THEN 'acknowledged'
                                    ELSE status END,
                      updated_at = $2
                WHERE alert_id = $1""", alert_id, now)
        return True

    @staticmethod
    async def decide(conn: asyncpg.Connection, alert_id: UUID, unit_code: str, status: str,
                     note: str | None, now: datetime) -> None:
        await conn.execute(
            """UPDATE alerts SET status = $2, decision = $2, decided_at = $3, decided_by = $4,
                      decision_note = $5, updated_at = $3,
                      acknowledged_at = coalesce(acknowledged_at, $3)
                WHERE alert_id = $1""", alert_id, status, now, unit_code, note)
        await conn.execute(
            "UPDATE deliveries SET acknowledged_at = coalesce(acknowledged_at, $3) "
            "WHERE alert_id = $1 AND unit_code = $2", alert_id, unit_code, now)

    @staticmethod
    async def close(conn: asyncpg.Connection, alert_id: UUID, outcome: str,
                    now: datetime) -> None:
        await conn.execute(
            "UPDATE alerts SET status = 'closed', outcome = $2, closed_at = $3, "
            "updated_at = $3 WHERE alert_id = $1", alert_id, outcome, now)

    @staticmethod
    async def claim_overdue(conn: asyncpg.Connection, now: datetime,
                            limit: int) -> list[asyncpg.Record]:
        """Unconfirmed alerts past their deadline, locked (SKIP LOCKED: once per miss)."""
        return await conn.fetch(
            """SELECT alert_id, owner_unit, urgency, escalation_level, units FROM alerts
                WHERE status IN ('raised', 'acknowledged') AND confirm_by <= $1
                ORDER BY confirm_by LIMIT $2 FOR UPDATE SKIP LOCKED""", now, limit)

    @staticmethod
    async def escalate(conn: asyncpg.Connection, alert_id: UUID, step: Escalation,
                       target_name: str | None, now: datetime) -> None:
        if step.target is not None:
            await conn.execute(
                """INSERT INTO deliveries (alert_id, unit_code, reasons, unit_name,
                                           delivered_at)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (alert_id, unit_code) DO UPDATE
                   SET reasons = deliveries.reasons || EXCLUDED.reasons""",
                alert_id, step.target, [step.reason], target_name, now)
        await conn.execute(
            """UPDATE alerts SET escalation_level = $2, confirm_by = $3,
                      updated_at = $4, units = units || $5::jsonb
                WHERE alert_id = $1""",
            alert_id, step.level, step.confirm_by, now,
            {step.target: target_name} if step.target else {})

    async def count_overdue(self, now: datetime) -> int:
        """Open alerts past their deadline or escalated, each half read through its own
        index (migrations 0002 and 0012), not every open alert."""
        return await self.pool.fetchval(
            """SELECT (SELECT count(*) FROM alerts
                        WHERE status IN ('raised', 'acknowledged') AND confirm_by <= $1)
                    + (SELECT count(*) FROM alerts
                        WHERE status IN ('raised', 'acknowledged') AND escalation_level > 0
                          AND (confirm_by > $1 OR confirm_by IS NULL))""", now)

    @staticmethod
    async def add_history(conn: asyncpg.Connection, alert_id: UUID, at: datetime, action: str,
                          unit_code: str | None, detail: str | None,
                          person_id: int | None = None, person_name: str | None = None,
                          note: str | None = None) -> None:
        """`detail`: the system's words (translated when read); `note`: somebody's own
        (shown as written)."""
        await conn.execute(
            "INSERT INTO alert_history (alert_id, at, action, unit_code, detail, person_id, "
            "person_name, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            alert_id, at, action, unit_code, detail, person_id, person_name, note)

    @staticmethod
    async def recipients(conn: asyncpg.Connection | asyncpg.Pool,
                         alert_id: UUID) -> tuple[str, ...]:
        rows = await conn.fetch(
            "SELECT unit_code FROM deliveries WHERE alert_id = $1 ORDER BY unit_code", alert_id)
        return tuple(row["unit_code"] for row in rows)

    # ------------------------------------------------------------------ reads

    async def alerts_for_unit(self, unit_code: str, limit: int, status: StatusFilter,
                              now: datetime) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"""SELECT {ALERT_COLUMNS}
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 AND {_STATUS_FILTERS[status]}
                 ORDER BY a.raised_at DESC LIMIT $2""",
            unit_code, limit, *([now] if status == "overdue" else []))

    async def alert_for_unit(self, alert_id: UUID, unit_code: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"""SELECT {ALERT_COLUMNS}
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 AND a.alert_id = $2""", unit_code, alert_id)

    async def alerts_and_deliveries(self, alert_ids: list[UUID], units: list[str]
                                    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """The alerts' own columns, once each, and their deliveries to any of `units`, read
        in one snapshot: what the views of the alerts for several units are made of,
        without reading an alert's columns again for each unit it was sent to."""
        async with self.pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            alerts = await conn.fetch(
                f"SELECT {_ALERT_OWN_COLUMNS} FROM alerts a "
                "WHERE a.alert_id = ANY($1::uuid[])", alert_ids)
            deliveries = await conn.fetch(
                f"SELECT d.alert_id, {_DELIVERY_COLUMNS} FROM deliveries d "
                "WHERE d.alert_id = ANY($1::uuid[]) AND d.unit_code = ANY($2::text[])",
                alert_ids, units)
        return alerts, deliveries

    async def feed_for_unit(self, unit_code: str, limit: int) -> list[asyncpg.Record]:
        """The unit's alerts, latest change first, each with all its recipients."""
        return await self.pool.fetch(
            f"""SELECT {ALERT_COLUMNS},
                       (SELECT array_agg(r.unit_code ORDER BY r.unit_code)
                          FROM deliveries r WHERE r.alert_id = a.alert_id) AS recipients
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 ORDER BY a.updated_at DESC LIMIT $2""",
            unit_code, limit)

    async def raised_since(self, since: datetime) -> list[asyncpg.Record]:
        """Alerts raised since `since`, each with its first recipients and their reasons."""
        return await self.pool.fetch(
            """SELECT a.alert_id, a.hit_id, a.entry_id, a.category, a.correlation_id,
                      a.raised_at, array_agg(d.unit_code ORDER BY d.unit_code) AS units,
                      array_agg(array_to_json(d.reasons)::text ORDER BY d.unit_code) AS reasons
                 FROM alerts a JOIN deliveries d USING (alert_id)
                WHERE a.raised_at >= $1 AND d.delivered_at = a.raised_at AND a.kind = 'hit'
                GROUP BY a.alert_id ORDER BY a.raised_at""", since)

    async def history(self, alert_id: UUID) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT at, action, unit_code, detail, note, person_name FROM alert_history "
            "WHERE alert_id = $1 "
            "ORDER BY id", alert_id)

    async def unit(self, code: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT code, name, kind, parent_code FROM units WHERE code = $1", code)


async def hit_times(conn: asyncpg.Connection | asyncpg.Pool, source_event_ids: list[UUID]
                    ) -> dict[UUID, tuple[datetime, datetime]]:
    """For each report's live alert: when the matcher found the hit and when the notifier
    began storing its alert (the later hops of `giapranh bench`'s latency budget)."""
    rows = await conn.fetch(
        """SELECT source_event_id, (hit ->> 'recorded_at')::timestamptz AS matched, raised_at
             FROM alerts WHERE source_event_id = ANY($1::uuid[]) AND NOT late
              AND kind = 'hit'""", source_event_ids)
    return {row["source_event_id"]: (row["matched"], row["raised_at"]) for row in rows}

