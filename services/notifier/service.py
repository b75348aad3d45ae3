"""The notifier's use cases: hits in, alerts raised and worked, each change fanned out.

Every change is written with its history row and handed to the delivery channels in the
same transaction (`channels.py`), so a channel hears of exactly the changes committed.
Who may do what and when is decided by `workflow.py`; the SQL is in `repository.py`;
what a unit reads is built by `models.py`. Times come from an injectable clock.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.notifier import workflow
from services.notifier.channels import AlertChange, Channel
from services.notifier.clock import Clock
from services.notifier.directory import Directory, DirectoryCache
from services.notifier.models import (
    AlertView,
    HistoryStep,
    alert_view,
    alert_view_json,
    history_step,
)
from services.notifier.repository import ALERT_INSERT_COLUMNS, AlertRepository
from services.notifier.targeting import choose_incident_recipients, choose_recipients
from services.notifier.workflow import Deadlines, Outcome, StatusFilter
from shared import audit, metrics
from shared.audit import Actor
from shared.errors import NotFound
from shared.events import (
    AlertRaised,
    HitFound,
    HitsWithdrawn,
    IncidentClosed,
    IncidentReported,
    IncidentUpdated,
    Recipient,
    Severity,
    Urgency,
    decode_event,
)
from shared.i18n import Language

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewAlert:
    alert_id: UUID
    hit: HitFound
    recipients: tuple[Recipient, ...]


@dataclass(frozen=True)
class _Planned:
    alert_id: UUID
    hit: HitFound
    recipients: list[Recipient]
    names: dict[str, str]


RAISED_VIEWS_KEPT = 10_000
"""New alerts' views kept for the live streams at most (those never shown, their
notification handled when no stream watched any more, go first)."""


def _as_real(value: float) -> float:
    """`value` as a PostgreSQL `real` (4 bytes) keeps it, and reads it back."""
    return struct.unpack("f", struct.pack("f", value))[0]  # type: ignore[no-any-return]


class AlertService:
    def __init__(self, pool: asyncpg.Pool, *, clock: Clock, channels: list[Channel],
                 deadlines: Deadlines, radius_km: float, pursuit_km: float = 30.0):
        self._repo = AlertRepository(pool)
        self._pursuit_km = pursuit_km
        self._clock = clock
        self._channels = channels
        self._deadlines = deadlines
        self._radius_km = radius_km
        self.directory = DirectoryCache(pool)
        self.watching: Callable[[Iterable[str]], bool] | None = None
        """Whether a live stream on this instance watches any of these units (the feed's
        `watches_any`): only then is a new alert's view kept (`_raised_views`)."""
        self._raised_views: OrderedDict[UUID, tuple[dict[str, Any], dict[str, dict[str, Any]]]]
        self._raised_views = OrderedDict()
        """Alerts this instance raised, as their views' columns (the alert's own, and each
        recipient's delivery) would be read back: the live streams show a new alert from
        them, not from a read of what was just written (`alert_views_json`)."""

    # ------------------------------------------------------------------ hits in

    async def store_hits(self, events: list[HitFound | HitsWithdrawn]) -> list[NewAlert]:
        """Apply hits and withdrawals in their order, in one transaction.

        A hit makes an alert with its deliveries unless its hit id was seen before; a
        withdrawal closes the entry's open alerts (status `withdrawn`). Consecutive hits
        are written together: a handful of statements per batch, not per hit.
        """
        created: list[NewAlert] = []
        now = self._clock.now()
        async with self._repo.transaction() as conn:
            directory = await self.directory.get(conn)
            run: list[HitFound] = []
            for event in events:
                if isinstance(event, HitsWithdrawn):
                    created += await self._raise(conn, run, directory, now)
                    run = []
                    await self._withdraw(conn, event, now)
                else:
                    run.append(event)
            created += await self._raise(conn, run, directory, now)
        return created

    def _plan(self, hits: list[HitFound], directory: Directory,
              now: datetime) -> dict[UUID, _Planned]:
        planned: dict[UUID, _Planned] = {}
        for hit in hits:
            if hit.hit_id in planned:
                continue  # the same hit twice in one batch
            recipients = choose_recipients(hit, directory, today=now.date(),
                                           radius_km=self._radius_km)
            names = {r.unit_code: directory.name(r.unit_code) for r in recipients}
            for code in (hit.entry.owner_unit, hit.place.unit_code):
                names.setdefault(code, directory.name(code))
            planned[hit.hit_id] = _Planned(uuid4(), hit, recipients, names)
        return planned

    async def _raise(self, conn: asyncpg.Connection, hits: list[HitFound],
                     directory: Directory, now: datetime) -> list[NewAlert]:
        if not hits:
            return []
        planned = self._plan(hits, directory, now)
        columns: dict[str, list[object]] = {name: [] for name in ALERT_INSERT_COLUMNS}
        for plan in planned.values():
            hit = plan.hit
            urgency = hit.entry.effective_urgency()
            for name, value in zip(ALERT_INSERT_COLUMNS, (
                    plan.alert_id, hit.hit_id, hit.entry.entry_id, hit.entry.version,
                    hit.entry.category.value, hit.entry.owner_unit, hit.place.unit_code,
                    hit.source_event_id, hit.correlation(), hit.seen_at, hit.score, hit.late,
                    hit.model_dump(mode="json"), urgency.value,
                    now + self._deadlines.of(urgency), plan.names, "hit"), strict=True):
                columns[name].append(value)
        inserted = await self._repo.insert_alerts(conn, columns, now)
        # Redelivered hits (their alert exists already) make nothing.
        fresh = [plan for hit_id, plan in planned.items() if hit_id in inserted]
        if not fresh:
            return []
        self._keep_raised_views(columns, fresh, now)
        await self._repo.insert_deliveries(conn, [
            (plan.alert_id, r.unit_code, list(r.reasons), plan.names.get(r.unit_code), now)
            for plan in fresh for r in plan.recipients])
        await self._repo.add_raised_history(
            conn, [plan.alert_id for plan in fresh],
            [workflow.raised_detail(len(plan.recipients), plan.hit.entry.effective_urgency(),
                                    self._deadlines) for plan in fresh], now)
        await self._publish(conn, [
            AlertChange(plan.alert_id, "raised", "raised",
                        tuple(r.unit_code for r in plan.recipients), plan.hit.reported_at)
            for plan in fresh], now)
        return [NewAlert(plan.alert_id, plan.hit, tuple(plan.recipients)) for plan in fresh]

    def _keep_raised_views(self, columns: dict[str, list[object]], fresh: list[_Planned],
                           now: datetime) -> None:
        """Keep the view columns of the new alerts a live stream here watches, exactly as
        `repository.ALERT_COLUMNS` would read them back once committed (the same types:
        times in UTC, the score as PostgreSQL's `real` keeps it, the hit as its JSON).
        Not for a hit on an incident's hot list: its view shows the incident as it is
        then, read from the database. tests/test_alert_stream.py compares the views."""
        if self.watching is None:
            return
        plans = {plan.hit.hit_id: plan for plan in fresh}
        for index, hit_id in enumerate(columns["hit_id"]):
            plan = plans.get(hit_id)  # type: ignore[call-overload]
            if plan is None:  # (not inserted: its alert existed already)
                continue
            if not self.watching(r.unit_code for r in plan.recipients):
                continue
            hit_json = columns["hit"][index]
            if hit_json["entry"].get("incident_id") is not None:  # type: ignore[index]
                continue
            own: dict[str, Any] = {name: columns[name][index] for name in ALERT_INSERT_COLUMNS}
            own.update(
                seen_at=plan.hit.seen_at.astimezone(UTC),
                score=_as_real(plan.hit.score), status="raised", raised_at=now,
                updated_at=now, escalation_level=0, first_acknowledged_at=None,
                decided_at=None, decided_by=None, decision_note=None, closed_at=None,
                outcome=None, incident=None)
            self._raised_views[plan.alert_id] = (own, {
                r.unit_code: {"unit_code": r.unit_code, "reasons": list(r.reasons),
                              "delivered_at": now, "acknowledged_at": None}
                for r in plan.recipients})
        while len(self._raised_views) > RAISED_VIEWS_KEPT:
            self._raised_views.popitem(last=False)  # (raised, never shown: nobody watched)

    async def _withdraw(self, conn: asyncpg.Connection, event: HitsWithdrawn,
                        now: datetime) -> None:
        for alert_id in await self._repo.withdraw(conn, event.entry_id, now):
            await self._repo.add_history(conn, alert_id, now, "withdrawn", event.owner_unit,
                                         event.reason)
            await self._publish(conn, [AlertChange(
                alert_id, "cancelled", "withdrawn",
                await self._repo.recipients(conn, alert_id))], now)
            metrics.ALERT_ACTIONS.labels(action="withdrawn").inc()

    # ------------------------------------------------------------------ incidents

    async def store_incident_events(
            self, events: list[IncidentReported | IncidentUpdated | IncidentClosed]
    ) -> list[UUID]:
        """Raise, update or close incident alerts, each event once (whether it came from
        the broker or from the replay of ingest's record), in one transaction; the ids of
        the incident alerts raised."""
        raised: list[UUID] = []
        now = self._clock.now()
        async with self._repo.transaction() as conn:
            directory = await self.directory.get(conn)
            for event in events:
                if (not isinstance(event, IncidentReported)
                        and await self._repo.incident_alert(conn, event.incident_id) is None):
                    # Its incident has not come yet (the broker lost it): the replay of
                    # ingest's record brings both, in order.
                    log.warning("%s of incident %s before the incident: left for the replay",
                                event.type, event.incident_id)
                    continue
                if not await self._repo.first_time(conn, event.event_id):
                    continue
                if isinstance(event, IncidentReported):
                    alert_id = await self._raise_incident(conn, event, directory, now)
                    if alert_id is not None:
                        raised.append(alert_id)
                elif isinstance(event, IncidentUpdated):
                    await self._update_incident(conn, event, directory, now)
                else:
                    await self._close_incident(conn, event, now)
        return raised

    def _incident_recipients(self, incident: IncidentReported, directory: Directory,
                             now: datetime, **flight: Any) -> list[Recipient]:
        return choose_incident_recipients(
            incident, directory, today=now.date(), radius_km=self._radius_km,
            pursuit_km=self._pursuit_km, **flight)

    async def _raise_incident(self, conn: asyncpg.Connection, incident: IncidentReported,
                              directory: Directory, now: datetime) -> UUID | None:
        recipients = self._incident_recipients(incident, directory, now)
        names = {r.unit_code: directory.name(r.unit_code) for r in recipients}
        names.setdefault(incident.place.unit_code, directory.name(incident.place.unit_code))
        owner = incident.producer_unit or incident.place.unit_code
        names.setdefault(owner, directory.name(owner))
        urgency = (Urgency.URGENT if incident.severity is Severity.IMMEDIATE
                   else Urgency.ROUTINE)
        alert_id = uuid4()
        values = (alert_id, incident.event_id, f"INC-{incident.event_id.hex}", 1, "incident",
                  owner, incident.place.unit_code, incident.event_id, incident.correlation(),
                  incident.occurred_at, 1.0, False, incident.model_dump(mode="json"),
                  urgency.value, None, names, "incident")
        inserted = await self._repo.insert_alerts(
            conn, {name: [value] for name, value in zip(ALERT_INSERT_COLUMNS, values,
                                                         strict=True)}, now)
        if not inserted:
            return None
        await self._repo.insert_deliveries(conn, [
            (alert_id, r.unit_code, list(r.reasons), names.get(r.unit_code), now)
            for r in recipients])
        await self._repo.add_raised_history(
            conn, [alert_id], [workflow.incident_raised_detail(
                len(recipients), incident.severity.value)], now)
        await self._publish(conn, [AlertChange(
            alert_id, "raised", "raised", tuple(r.unit_code for r in recipients),
            incident.recorded_at)], now)
        metrics.ALERTS_RAISED.inc()
        for recipient in recipients:
            metrics.ALERTS_BY_UNIT.labels(unit=recipient.unit_code).inc()
        return alert_id

    async def _update_incident(self, conn: asyncpg.Connection, update: IncidentUpdated,
                               directory: Directory, now: datetime) -> None:
        row = await self._repo.incident_alert(conn, update.incident_id)
        assert row is not None  # checked by the caller
        incident = IncidentReported.model_validate(row["hit"])
        revised = incident.model_copy(update={
            "suspects": (*incident.suspects, *update.suspects),
            "vehicles": (*incident.vehicles, *update.vehicles),
            "fled_towards": tuple(dict.fromkeys((*incident.fled_towards,
                                                 *update.fled_towards))),
            "fled_bearing": (update.fled_bearing if update.fled_bearing is not None
                             else incident.fled_bearing)})
        added: list[str] = []
        if update.fled_towards or update.fled_bearing is not None:
            recipients = self._incident_recipients(
                incident, directory, now, fled_towards=update.fled_towards,
                fled_bearing=update.fled_bearing)
            added = await self._repo.add_deliveries(conn, row["alert_id"], [
                (r.unit_code, list(r.reasons), directory.name(r.unit_code))
                for r in recipients], now)
        await self._repo.revise_incident(
            conn, row["alert_id"], revised.model_dump(mode="json"),
            {code: directory.name(code) for code in added}, now)
        detail = workflow.incident_update_detail(
            suspects=len(update.suspects), vehicles=len(update.vehicles),
            fled_towards=update.fled_towards, fled_bearing=update.fled_bearing, added=added)
        await self._repo.add_history(conn, row["alert_id"], now, "updated",
                                     update.producer_unit, detail, note=update.note)
        await self._publish(conn, [AlertChange(
            row["alert_id"], "updated", "updated",
            await self._repo.recipients(conn, row["alert_id"]))], now)

    async def _close_incident(self, conn: asyncpg.Connection, closing: IncidentClosed,
                              now: datetime) -> None:
        detail = closing.outcome.value + (f": {closing.note}" if closing.note else "")
        for alert_id in await self._repo.close_incident_alerts(
                conn, closing.incident_id, closing.outcome.value, now):
            await self._repo.add_history(conn, alert_id, now, "closed", closing.producer_unit,
                                         workflow.incident_closed_detail(detail))
            await self._publish(conn, [AlertChange(
                alert_id, "updated", "closed", await self._repo.recipients(conn, alert_id))],
                now)
            metrics.ALERT_ACTIONS.labels(action="closed").inc()

    # ------------------------------------------------------------------ workflow

    async def acknowledge(self, alert_id: UUID, unit_code: str,
                          actor: Actor | None = None) -> AlertView:
        """The unit's duty desk has seen the alert (repeating it changes nothing)."""
        now = self._clock.now()
        async with self._repo.transaction() as conn:
            row = await self._locked(conn, alert_id, unit_code)
            if row["acknowledged_at"] is None:
                workflow.check_acknowledgement(row["status"])
                # (the delivery's acknowledged_at read with the alert's lock may be older
                # than a concurrent acknowledgement's: the update itself tells)
                if await self._repo.acknowledge(conn, alert_id, unit_code, now):
                    await self._changed(conn, alert_id, "acknowledged", unit_code, None, now,
                                        actor)
                    metrics.TIME_TO_ACKNOWLEDGE.observe(
                        max(0.0, (now - row["delivered_at"]).total_seconds()))
        return await self.alert_for_unit(alert_id, unit_code)

    async def decide(self, alert_id: UUID, unit_code: str, confirmed: bool,
                     note: str | None, actor: Actor | None = None) -> AlertView:
        """The listing unit (or a unit above it) confirms the subject is still wanted, or
        rejects the hit."""
        now = self._clock.now()
        async with self._repo.transaction() as conn:
            row = await self._locked(conn, alert_id, unit_code)
            workflow.check_hit_alert(row["kind"])
            status = workflow.check_decision(
                unit_code, status=row["status"], owner=row["owner_unit"],
                directory=await self.directory.get(conn), confirmed=confirmed)
            await self._repo.decide(conn, alert_id, unit_code, status, note, now)
            await self._changed(conn, alert_id, status, unit_code, note, now, actor)
            metrics.TIME_TO_CONFIRM.labels(urgency=row["urgency"]).observe(
                max(0.0, (now - row["raised_at"]).total_seconds()))
        return await self.alert_for_unit(alert_id, unit_code)

    async def close(self, alert_id: UUID, unit_code: str, outcome: Outcome,
                    note: str | None, actor: Actor | None = None) -> AlertView:
        """Record how it ended; the seen unit, the listing unit or a unit above it may."""
        now = self._clock.now()
        async with self._repo.transaction() as conn:
            row = await self._locked(conn, alert_id, unit_code)
            workflow.check_hit_alert(row["kind"])
            workflow.check_closing(unit_code, status=row["status"], owner=row["owner_unit"],
                                   seen_unit=row["seen_unit"],
                                   directory=await self.directory.get(conn))
            await self._repo.close(conn, alert_id, outcome, now)
            await self._changed(conn, alert_id, "closed", unit_code,
                                outcome + (f": {note}" if note else ""), now, actor)
        return await self.alert_for_unit(alert_id, unit_code)

    async def escalate_overdue(self, limit: int = 100) -> list[UUID]:
        """Re-notify and escalate every alert whose confirmation deadline has passed.

        Safe in several instances at once: overdue rows are claimed with SKIP LOCKED and
        each escalation moves the deadline on, so one miss escalates once.
        """
        now = self._clock.now()
        escalated: list[UUID] = []
        async with self._repo.transaction() as conn:
            rows = await self._repo.claim_overdue(conn, now, limit)
            if rows:
                directory = await self.directory.get(conn)
            for row in rows:
                step = workflow.escalation(
                    owner=row["owner_unit"], level=row["escalation_level"],
                    urgency=row["urgency"], directory=directory, deadlines=self._deadlines,
                    now=now)
                target_name = directory.name(step.target) if step.target else None
                await self._repo.escalate(conn, row["alert_id"], step, target_name, now)
                if step.target is not None:
                    metrics.ALERTS_BY_UNIT.labels(unit=step.target).inc()
                await self._changed(conn, row["alert_id"], "escalated", step.target,
                                    step.detail, now)
                escalated.append(row["alert_id"])
        return escalated

    async def count_overdue(self) -> int:
        """Unconfirmed alerts that missed at least one deadline."""
        return await self._repo.count_overdue(self._clock.now())

    # ------------------------------------------------------------------ reads

    async def alerts_for_unit(self, unit_code: str, limit: int = 100,
                              status: StatusFilter = "all") -> list[AlertView]:
        rows = await self._repo.alerts_for_unit(unit_code, limit, status, self._clock.now())
        directory = await self.directory.get()
        return [self._view(row, unit_code, directory) for row in rows]

    async def alert_for_unit(self, alert_id: UUID, unit_code: str) -> AlertView:
        row = await self._repo.alert_for_unit(alert_id, unit_code)
        if row is None:
            raise _not_found(alert_id, unit_code)
        return self._view(row, unit_code, await self.directory.get())

    async def alert_views_json(
            self, wanted: Mapping[str, Iterable[UUID]], languages: Mapping[str, Iterable[str]],
            just_raised: Collection[UUID] = frozenset()
    ) -> dict[str, dict[UUID, dict[str, bytes]]]:
        """Each unit's views of the alerts wanted for it (those addressed to it), as JSON
        (UTF-8) by language (`languages[unit]`), by unit and alert id: the live streams'.

        An alert in `just_raised` (no change since its raising) that this instance raised
        is shown from what it wrote (`_keep_raised_views`); the others are read, in two
        queries for all the units whatever their number: each alert's columns once, then
        the units' deliveries (an alert goes to six units or more, each desk watching)."""
        pairs = {(unit, alert_id) for unit, alert_ids in wanted.items()
                 for alert_id in alert_ids}
        if not pairs:
            return {}
        kept = {alert_id: views for alert_id in just_raised
                if (views := self._raised_views.pop(alert_id, None)) is not None}
        rows: list[tuple[dict[str, Any], Mapping[str, Any]]] = [
            (own, deliveries[unit]) for alert_id, (own, deliveries) in kept.items()
            for unit in deliveries if (unit, alert_id) in pairs]
        unread = list({alert_id for _, alert_id in pairs if alert_id not in kept})
        if unread:
            alerts, deliveries = await self._repo.alerts_and_deliveries(unread, list(wanted))
            read = {row["alert_id"]: dict(row) for row in alerts}
            rows += [(read[delivery["alert_id"]], delivery) for delivery in deliveries
                     if (delivery["unit_code"], delivery["alert_id"]) in pairs
                     and delivery["alert_id"] in read]
        directory = await self.directory.get()
        now = self._clock.now()
        views: dict[str, dict[UUID, dict[str, bytes]]] = {}
        for own, delivery in rows:
            unit = delivery["unit_code"]
            views.setdefault(unit, {})[own["alert_id"]] = alert_view_json(
                own | dict(delivery), unit, now, directory, languages[unit])
        return views

    async def history(self, alert_id: UUID, unit_code: str,
                      language: Language = "en") -> list[HistoryStep]:
        await self.alert_for_unit(alert_id, unit_code)  # isolation
        return [history_step(row, language) for row in await self._repo.history(alert_id)]

    async def recipients(self, alert_id: UUID) -> list[str]:
        return list(await self._repo.recipients(self._repo.pool, alert_id))

    async def feed_for_unit(self, unit_code: str,
                            limit: int = 100) -> list[tuple[AlertView, list[str]]]:
        """The unit's alerts with their latest change, newest change first, each with all
        its recipients (Atom): one query, not one per alert."""
        rows = await self._repo.feed_for_unit(unit_code, limit)
        directory = await self.directory.get()
        return [(self._view(row, unit_code, directory), list(row["recipients"]))
                for row in rows]

    async def unhandled_incident_events(
            self, window: timedelta, settle: timedelta
    ) -> list[IncidentReported | IncidentUpdated | IncidentClosed]:
        """Incident events ingest recorded in the window that were never handled here (the
        broker lost them, or the notifier was down), oldest first; the last `settle` left
        to the broker."""
        now = self._clock.now()
        rows = await self._repo.unhandled_incident_events(now - window, now - settle)
        return [decode_event(row["payload"]) for row in rows]  # type: ignore[misc]

    async def raised_since(self, since: datetime) -> list[AlertRaised]:
        """The `AlertRaised` of every alert raised since `since`, rebuilt from the alerts
        and their first deliveries (to publish again after the broker lost them)."""
        return [AlertRaised(
            occurred_at=row["raised_at"], correlation_id=row["correlation_id"],
            alert_id=row["alert_id"], hit_id=row["hit_id"], entry_id=row["entry_id"],
            category=row["category"],
            recipients=tuple(Recipient(unit_code=unit, reasons=tuple(json.loads(reasons)))
                             for unit, reasons in zip(row["units"], row["reasons"],
                                                      strict=True)),
        ) for row in await self._repo.raised_since(since)]

    async def unit(self, code: str) -> asyncpg.Record | None:
        return await self._repo.unit(code)

    # ------------------------------------------------------------------ helpers

    async def _locked(self, conn: asyncpg.Connection, alert_id: UUID,
                      unit_code: str) -> asyncpg.Record:
        row = await self._repo.lock(conn, alert_id, unit_code)
        if row is None:
            raise _not_found(alert_id, unit_code)
        return row

    async def _changed(self, conn: asyncpg.Connection, alert_id: UUID, action: str,
                       unit_code: str | None, detail: str | None, now: datetime,
                       actor: Actor | None = None) -> None:
        """Record a workflow step: history (with the person who took it), every recipient
        told, the audit log (steps people take), counted."""
        await self._repo.add_history(conn, alert_id, now, action, unit_code, detail,
                                     actor.person_id if actor else None,
                                     actor.person_name if actor else None)
        await self._publish(conn, [AlertChange(
            alert_id, "updated", action, await self._repo.recipients(conn, alert_id))], now)
        if actor is not None:
            await audit.record(conn, actor, f"alert.{action}", subject=str(alert_id),
                               detail={"note": detail} if detail else None)
        metrics.ALERT_ACTIONS.labels(action=action).inc()

    async def _publish(self, conn: asyncpg.Connection, changes: list[AlertChange],
                       now: datetime) -> None:
        for change in changes:
            if change.kind != "raised":
                # Changed here: its raising is no longer shown as written, but read as it
                # is (an acknowledgement answered, then the alert streamed unacknowledged:
                # an attacking helper).
                self._raised_views.pop(change.alert_id, None)
        for channel in self._channels:
            await channel.enqueue(conn, changes, now)

    def _view(self, row: asyncpg.Record, unit_code: str, directory: Directory) -> AlertView:
        return alert_view(row, unit_code, self._clock.now(), directory)


def _not_found(alert_id: UUID, unit_code: str) -> NotFound:
    # Also for alerts that exist but were not addressed to this unit.
    return NotFound(f"no alert {alert_id} for unit {unit_code}", field="alert_id")
