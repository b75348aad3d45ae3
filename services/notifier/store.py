"""The notifier's PostgreSQL side: alerts, deliveries and their workflow.

An alert's life: `raised` -> `acknowledged` (a recipient's duty desk saw it) -> `confirmed`
or `rejected` (the listing unit, or a unit above it, says whether the subject is still
wanted) -> `closed` with an outcome (`detained`, `not_located`, `false_match`). A cancelled
entry `withdraws` its open alerts. Confirmation is due `urgent_deadline` or
`routine_deadline` after raising; each missed deadline re-notifies every recipient and
adds the next unit up the listing unit's chain of command.

Every change is written with its history row and handed to the delivery channels in the
same transaction. Times come from an injectable clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID, uuid4

import asyncpg

from services.notifier.channels import AlertChange, Channel
from services.notifier.clock import Clock
from services.notifier.directory import Directory, DirectoryCache
from services.notifier.targeting import choose_recipients
from shared import metrics
from shared.errors import Forbidden, InvalidTransition, NotFound
from shared.events import HitFound, HitsWithdrawn, Recipient, Urgency

OPEN = ("raised", "acknowledged", "confirmed", "rejected")
AWAITING_CONFIRMATION = ("raised", "acknowledged")
Outcome = Literal["detained", "not_located", "false_match"]
StatusFilter = Literal["all", "open", "overdue", "closed"]


_ALERT_COLUMNS = """a.alert_id, a.hit_id, a.entry_id, a.entry_version, a.category,
    a.owner_unit, a.seen_unit, a.source_event_id, a.correlation_id, a.seen_at, a.score,
    a.late, a.status, a.raised_at, a.hit, a.urgency, a.confirm_by, a.escalation_level,
    a.acknowledged_at AS first_acknowledged_at, a.decided_at, a.decided_by, a.decision_note,
    a.closed_at, a.outcome, a.updated_at, a.units, d.unit_code, d.reasons, d.delivered_at,
    d.acknowledged_at"""

_STATUS_FILTERS = {
    "all": "TRUE",
    "open": "a.status IN ('raised', 'acknowledged', 'confirmed', 'rejected')",
    "overdue": "a.status IN ('raised', 'acknowledged') "
               "AND (a.escalation_level > 0 OR a.confirm_by <= $3)",
    "closed": "a.status IN ('closed', 'withdrawn')",
}


_ALERT_INSERT_COLUMNS = (
    "alert_id", "hit_id", "entry_id", "entry_version", "category", "owner_unit", "seen_unit",
    "source_event_id", "correlation_id", "seen_at", "score", "late", "hit", "urgency",
    "confirm_by", "units")


@dataclass(frozen=True)
class NewAlert:
    alert_id: UUID
    hit: HitFound
    recipients: tuple[Recipient, ...]


@dataclass(frozen=True)
class Deadlines:
    urgent: timedelta
    routine: timedelta

    def of(self, urgency: str) -> timedelta:
        return self.urgent if urgency == Urgency.URGENT else self.routine


class AlertStore:
    def __init__(self, pool: asyncpg.Pool, *, clock: Clock, channels: list[Channel],
                 deadlines: Deadlines, radius_km: float):
        self._pool = pool
        self._clock = clock
        self._channels = channels
        self._deadlines = deadlines
        self._radius_km = radius_km
        self.directory = DirectoryCache(pool)

    # ------------------------------------------------------------------ hits in

    async def store_hits(self, events: list[HitFound | HitsWithdrawn]) -> list[NewAlert]:
        """Apply hits and withdrawals in their order, in one transaction.

        A hit makes an alert with its deliveries unless its hit id was seen before; a
        withdrawal closes the entry's open alerts (status `withdrawn`). Consecutive hits
        are written together: a handful of statements per batch, not per hit.
        """
        created: list[NewAlert] = []
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            directory = await self.directory.get(conn)
            run: list[HitFound] = []
            for event in events:
                if isinstance(event, HitsWithdrawn):
                    created += await self._store_run(conn, run, directory, now)
                    run = []
                    await self._withdraw(conn, event, now)
                else:
                    run.append(event)
            created += await self._store_run(conn, run, directory, now)
        return created

    async def _store_run(self, conn: asyncpg.Connection, hits: list[HitFound],
                         directory: Directory, now: datetime) -> list[NewAlert]:
        if not hits:
            return []
        planned: dict[UUID, tuple[UUID, HitFound, list[Recipient], dict[str, str]]] = {}
        for hit in hits:
            if hit.hit_id in planned:
                continue  # the same hit twice in one batch
            recipients = choose_recipients(hit, directory, today=now.date(),
                                           radius_km=self._radius_km)
            names = {r.unit_code: directory.name(r.unit_code) for r in recipients}
            for code in (hit.entry.owner_unit, hit.place.unit_code):
                names.setdefault(code, directory.name(code))
            planned[hit.hit_id] = (uuid4(), hit, recipients, names)
        columns: dict[str, list[object]] = {name: [] for name in _ALERT_INSERT_COLUMNS}
        for alert_id, hit, _, names in planned.values():
            urgency = hit.entry.effective_urgency()
            for name, value in zip(_ALERT_INSERT_COLUMNS, (
                    alert_id, hit.hit_id, hit.entry.entry_id, hit.entry.version,
                    hit.entry.category.value, hit.entry.owner_unit, hit.place.unit_code,
                    hit.source_event_id, hit.correlation(), hit.seen_at, hit.score, hit.late,
                    hit.model_dump(mode="json"), urgency.value,
                    now + self._deadlines.of(urgency), names), strict=True):
                columns[name].append(value)
        inserted = {row["hit_id"] for row in await conn.fetch(
            f"""INSERT INTO alerts ({", ".join(_ALERT_INSERT_COLUMNS)}, raised_at, updated_at)
                SELECT *, $17::timestamptz, $17::timestamptz FROM unnest(
                    $1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::text[], $6::text[],
                    $7::text[], $8::uuid[], $9::uuid[], $10::timestamptz[], $11::real[],
                    $12::bool[], $13::jsonb[], $14::text[], $15::timestamptz[], $16::jsonb[])
                ON CONFLICT (hit_id) DO NOTHING
                RETURNING hit_id""",
            *columns.values(), now)}
        # Redelivered hits (their alert exists already) make nothing.
        fresh = [plan for hit_id, plan in planned.items() if hit_id in inserted]
        if not fresh:
            return []
        await conn.executemany(
            "INSERT INTO deliveries (alert_id, unit_code, reasons, unit_name, delivered_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(alert_id, r.unit_code, list(r.reasons), names.get(r.unit_code), now)
             for alert_id, _, recipients, names in fresh for r in recipients])
        await conn.execute(
            "INSERT INTO alert_history (alert_id, at, action, detail) "
            "SELECT a, $2, 'raised', d FROM unnest($1::uuid[], $3::text[]) AS x (a, d)",
            [alert_id for alert_id, *_ in fresh], now,
            [f"{len(recipients)} recipient(s), confirm within "
             f"{_minutes(self._deadlines.of(hit.entry.effective_urgency()))}"
             for _, hit, recipients, _ in fresh])
        await self._publish_all(conn, [
            AlertChange(alert_id, "raised", "raised", tuple(r.unit_code for r in recipients),
                        hit.reported_at)
            for alert_id, hit, recipients, _ in fresh], now)
        return [NewAlert(alert_id, hit, tuple(recipients))
                for alert_id, hit, recipients, _ in fresh]

    async def _withdraw(self, conn: asyncpg.Connection, event: HitsWithdrawn,
                        now: datetime) -> None:
        rows = await conn.fetch(
            "UPDATE alerts SET status = 'withdrawn', updated_at = $3 "
            "WHERE entry_id = $1 AND status = ANY($2::text[]) RETURNING alert_id",
            event.entry_id, list(OPEN), now,
        )
        for row in rows:
            await self._history(conn, row["alert_id"], now, "withdrawn", event.owner_unit,
                                event.reason)
            await self._publish(conn, AlertChange(
                row["alert_id"], "cancelled", "withdrawn",
                await self._recipients(conn, row["alert_id"])), now)
            metrics.ALERT_ACTIONS.labels(action="withdrawn").inc()

    # ------------------------------------------------------------------ workflow

    async def acknowledge(self, alert_id: UUID, unit_code: str) -> dict[str, object]:
        """The unit's duty desk has seen the alert (repeating it changes nothing)."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, alert_id, unit_code)
            if row["acknowledged_at"] is None:
                await conn.execute(
                    "UPDATE deliveries SET acknowledged_at = $3 "
                    "WHERE alert_id = $1 AND unit_code = $2", alert_id, unit_code, now)
                await conn.execute(
                    """UPDATE alerts SET acknowledged_at = coalesce(acknowledged_at, $2),
                              status = CASE WHEN status = 'raised' THEN 'acknowledged'
                                            ELSE status END,
                              updated_at = $2
                        WHERE alert_id = $1""", alert_id, now)
                await self._history(conn, alert_id, now, "acknowledged", unit_code, None)
                await self._publish(conn, AlertChange(
                    alert_id, "updated", "acknowledged",
                    await self._recipients(conn, alert_id)), now)
                metrics.ALERT_ACTIONS.labels(action="acknowledged").inc()
                metrics.TIME_TO_ACKNOWLEDGE.observe(
                    max(0.0, (now - row["delivered_at"]).total_seconds()))
        return await self.alert_for_unit(alert_id, unit_code)

    async def decide(self, alert_id: UUID, unit_code: str, confirmed: bool,
                     note: str | None) -> dict[str, object]:
        """The listing unit (or a unit above it) confirms the subject is still wanted, or
        rejects the hit."""
        now = self._clock.now()
        action = "confirmed" if confirmed else "rejected"
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, alert_id, unit_code)
            directory = await self.directory.get(conn)
            owner = row["owner_unit"]
            if unit_code not in deciders(directory, owner):
                raise Forbidden(f"only the listing unit {owner} or a unit above it can "
                                f"{action[:-1]} this alert", field="alert_id")
            if row["status"] not in AWAITING_CONFIRMATION:
                raise InvalidTransition(
                    f"alert is {row['status']}; only a raised or acknowledged alert can be "
                    f"{action}", field="status")
            await conn.execute(
                """UPDATE alerts SET status = $2, decided_at = $3, decided_by = $4,
                          decision_note = $5, updated_at = $3,
                          acknowledged_at = coalesce(acknowledged_at, $3)
                    WHERE alert_id = $1""", alert_id, action, now, unit_code, note)
            await conn.execute(
                "UPDATE deliveries SET acknowledged_at = coalesce(acknowledged_at, $3) "
                "WHERE alert_id = $1 AND unit_code = $2", alert_id, unit_code, now)
            await self._history(conn, alert_id, now, action, unit_code, note)
            await self._publish(conn, AlertChange(
                alert_id, "updated", action, await self._recipients(conn, alert_id)), now)
            metrics.ALERT_ACTIONS.labels(action=action).inc()
            metrics.TIME_TO_CONFIRM.labels(urgency=row["urgency"]).observe(
                max(0.0, (now - row["raised_at"]).total_seconds()))
        return await self.alert_for_unit(alert_id, unit_code)

    async def close(self, alert_id: UUID, unit_code: str, outcome: Outcome,
                    note: str | None) -> dict[str, object]:
        """Record how it ended; the seen unit, the listing unit or a unit above it may."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, alert_id, unit_code)
            directory = await self.directory.get(conn)
            owner = row["owner_unit"]
            allowed = deciders(directory, owner) | {directory.current(row["seen_unit"])}
            if unit_code not in allowed:
                raise Forbidden("only the unit where the subject was seen, the listing unit "
                                "or a unit above it can close this alert", field="alert_id")
            if row["status"] not in ("confirmed", "rejected"):
                raise InvalidTransition(
                    f"alert is {row['status']}; it must be confirmed or rejected by the "
                    "listing unit before it is closed", field="status")
            await conn.execute(
                "UPDATE alerts SET status = 'closed', outcome = $2, closed_at = $3, "
                "updated_at = $3 WHERE alert_id = $1", alert_id, outcome, now)
            await self._history(conn, alert_id, now, "closed", unit_code,
                                outcome + (f": {note}" if note else ""))
            await self._publish(conn, AlertChange(
                alert_id, "updated", "closed", await self._recipients(conn, alert_id)), now)
            metrics.ALERT_ACTIONS.labels(action="closed").inc()
        return await self.alert_for_unit(alert_id, unit_code)

    async def escalate_overdue(self, limit: int = 100) -> list[UUID]:
        """Re-notify and escalate every alert whose confirmation deadline has passed.

        Safe in several instances at once: overdue rows are claimed with SKIP LOCKED and
        each escalation moves the deadline on, so one miss escalates once.
        """
        now = self._clock.now()
        escalated: list[UUID] = []
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT alert_id, owner_unit, urgency, escalation_level, units FROM alerts
                    WHERE status IN ('raised', 'acknowledged') AND confirm_by <= $1
                    ORDER BY confirm_by LIMIT $2 FOR UPDATE SKIP LOCKED""", now, limit)
            if rows:
                directory = await self.directory.get(conn)
            for row in rows:
                period = self._deadlines.of(row["urgency"])
                level = row["escalation_level"] + 1
                chain = directory.ancestors(row["owner_unit"])
                target = chain[level - 1] if level <= len(chain) else None
                detail = (f"{row['owner_unit']} did not confirm within {_minutes(period)}"
                          f" (deadline {level})")
                if target is not None:
                    reason = f"escalated: {detail}"
                    await conn.execute(
                        """INSERT INTO deliveries (alert_id, unit_code, reasons, unit_name,
                                                   delivered_at)
                           VALUES ($1, $2, $3, $4, $5)
                           ON CONFLICT (alert_id, unit_code) DO UPDATE
                           SET reasons = deliveries.reasons || EXCLUDED.reasons""",
                        row["alert_id"], target, [reason], directory.name(target), now)
                    detail += f"; escalated to {target}"
                    metrics.ALERTS_BY_UNIT.labels(unit=target).inc()
                await conn.execute(
                    """UPDATE alerts SET escalation_level = $2, confirm_by = $3,
                              updated_at = $4, units = units || $5::jsonb
                        WHERE alert_id = $1""",
                    row["alert_id"], level, now + period, now,
                    {target: directory.name(target)} if target else {})
                await self._history(conn, row["alert_id"], now, "escalated", target, detail)
                await self._publish(conn, AlertChange(
                    row["alert_id"], "updated", "escalated",
                    await self._recipients(conn, row["alert_id"])), now)
                metrics.ALERT_ACTIONS.labels(action="escalated").inc()
                escalated.append(row["alert_id"])
        return escalated

    async def count_overdue(self) -> int:
        """Unconfirmed alerts that missed at least one deadline."""
        return await self._pool.fetchval(
            "SELECT count(*) FROM alerts WHERE status IN ('raised', 'acknowledged') "
            "AND (escalation_level > 0 OR confirm_by <= $1)", self._clock.now())

    # ------------------------------------------------------------------ reads

    async def alerts_for_unit(self, unit_code: str, limit: int = 100,
                              status: StatusFilter = "all") -> list[dict[str, object]]:
        rows = await self._pool.fetch(
            f"""SELECT {_ALERT_COLUMNS}
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 AND {_STATUS_FILTERS[status]}
                 ORDER BY a.raised_at DESC LIMIT $2""",
            unit_code, limit, *([self._clock.now()] if status == "overdue" else []),
        )
        directory = await self.directory.get()
        return [self._view(row, unit_code, directory) for row in rows]

    async def alert_for_unit(self, alert_id: UUID, unit_code: str) -> dict[str, object]:
        row = await self._pool.fetchrow(
            f"""SELECT {_ALERT_COLUMNS}
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 AND a.alert_id = $2""",
            unit_code, alert_id,
        )
        if row is None:
            raise _not_found(alert_id, unit_code)
        return self._view(row, unit_code, await self.directory.get())

    async def alerts_by_id(self, unit_code: str,
                           alert_ids: list[UUID]) -> dict[str, dict[str, object]]:
        """The unit's views of these alerts (those addressed to it), by alert id."""
        rows = await self._pool.fetch(
            f"""SELECT {_ALERT_COLUMNS}
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 AND a.alert_id = ANY($2::uuid[])""",
            unit_code, alert_ids)
        directory = await self.directory.get()
        return {str(row["alert_id"]): self._view(row, unit_code, directory) for row in rows}

    async def history(self, alert_id: UUID, unit_code: str) -> list[dict[str, object]]:
        await self.alert_for_unit(alert_id, unit_code)  # isolation
        rows = await self._pool.fetch(
            "SELECT at, action, unit_code, detail FROM alert_history WHERE alert_id = $1 "
            "ORDER BY id", alert_id)
        return [dict(row) for row in rows]

    async def recipients(self, alert_id: UUID) -> list[str]:
        async with self._pool.acquire() as conn:
            return list(await self._recipients(conn, alert_id))

    async def feed_for_unit(self, unit_code: str,
                            limit: int = 100) -> list[tuple[dict[str, object], list[str]]]:
        """The unit's alerts with their latest change, newest change first, each with all
        its recipients (Atom): one query, not one per alert."""
        rows = await self._pool.fetch(
            f"""SELECT {_ALERT_COLUMNS},
                       (SELECT array_agg(r.unit_code ORDER BY r.unit_code)
                          FROM deliveries r WHERE r.alert_id = a.alert_id) AS recipients
                  FROM deliveries d JOIN alerts a USING (alert_id)
                 WHERE d.unit_code = $1 ORDER BY a.updated_at DESC LIMIT $2""",
            unit_code, limit)
        directory = await self.directory.get()
        return [(self._view(row, unit_code, directory), list(row["recipients"]))
                for row in rows]

    # ------------------------------------------------------------------ helpers

    async def _locked(self, conn: asyncpg.Connection, alert_id: UUID,
                      unit_code: str) -> asyncpg.Record:
        row = await conn.fetchrow(
            """SELECT a.status, a.owner_unit, a.seen_unit, a.urgency, a.raised_at,
                      d.delivered_at, d.acknowledged_at
                 FROM alerts a JOIN deliveries d USING (alert_id)
                WHERE a.alert_id = $1 AND d.unit_code = $2
                  FOR UPDATE OF a""", alert_id, unit_code)
        if row is None:
            raise _not_found(alert_id, unit_code)
        return row

    @staticmethod
    async def _recipients(conn: asyncpg.Connection, alert_id: UUID) -> tuple[str, ...]:
        rows = await conn.fetch(
            "SELECT unit_code FROM deliveries WHERE alert_id = $1 ORDER BY unit_code", alert_id)
        return tuple(row["unit_code"] for row in rows)

    @staticmethod
    async def _history(conn: asyncpg.Connection, alert_id: UUID, at: datetime, action: str,
                       unit_code: str | None, detail: str | None) -> None:
        await conn.execute(
            "INSERT INTO alert_history (alert_id, at, action, unit_code, detail) "
            "VALUES ($1, $2, $3, $4, $5)", alert_id, at, action, unit_code, detail)

    async def _publish(self, conn: asyncpg.Connection, change: AlertChange,
                       now: datetime) -> None:
        await self._publish_all(conn, [change], now)

    async def _publish_all(self, conn: asyncpg.Connection, changes: list[AlertChange],
                           now: datetime) -> None:
        for channel in self._channels:
            await channel.enqueue(conn, changes, now)

    def _view(self, row: asyncpg.Record, unit_code: str,
              directory: Directory) -> dict[str, object]:
        return alert_view(row, unit_code, self._clock.now(), directory)


def _not_found(alert_id: UUID, unit_code: str) -> NotFound:
    # Also for alerts that exist but were not addressed to this unit.
    return NotFound(f"no alert {alert_id} for unit {unit_code}", field="alert_id")


def _minutes(period: timedelta) -> str:
    minutes = period.total_seconds() / 60
    return f"{minutes:g} min"


def deciders(directory: Directory, owner: str) -> set[str]:
    """Who may confirm or reject: the listing unit (or its successor) and the units above."""
    return {directory.current(owner), *directory.ancestors(owner)}


def alert_view(row: asyncpg.Record, unit_code: str, now: datetime,
               directory: Directory) -> dict[str, object]:
    hit = row["hit"]
    status = row["status"]
    awaiting = status in AWAITING_CONFIRMATION
    owner = row["owner_unit"]
    is_owner = unit_code in deciders(directory, owner)
    actions = []
    if status in OPEN and row["acknowledged_at"] is None:
        actions.append("acknowledge")
    if awaiting and is_owner:
        actions += ["confirm", "reject"]
    if status in ("confirmed", "rejected") and (
            is_owner or unit_code == directory.current(row["seen_unit"])):
        actions.append("close")
    return {
        "alert_id": str(row["alert_id"]),
        "hit_id": str(row["hit_id"]),
        "status": status,
        "raised_at": row["raised_at"],
        "updated_at": row["updated_at"],
        "category": row["category"],
        "urgency": row["urgency"],
        "confirm_by": row["confirm_by"] if awaiting else None,
        "overdue": awaiting and (row["escalation_level"] > 0 or row["confirm_by"] <= now),
        "escalation_level": row["escalation_level"],
        "entry": hit["entry"],
        "subject": hit["subject"],
        "place": hit["place"],
        "seen_at": row["seen_at"],
        "score": row["score"],
        "match_reasons": hit["reasons"],
        "late": row["late"],
        "owner_unit": owner,
        "seen_unit": row["seen_unit"],
        "unit_names": row["units"],
        "correlation_id": str(row["correlation_id"]),
        "why_you": list(row["reasons"]),
        "delivered_at": row["delivered_at"],
        "acknowledged_at": row["acknowledged_at"],
        "first_acknowledged_at": row["first_acknowledged_at"],
        "decided_at": row["decided_at"],
        "decided_by": row["decided_by"],
        "decision_note": row["decision_note"],
        "closed_at": row["closed_at"],
        "outcome": row["outcome"],
        "actions": actions,
    }
