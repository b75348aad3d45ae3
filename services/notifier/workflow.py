"""The alert workflow: states, transitions, who may take each step, deadlines (no I/O).

An alert's life: `raised` -> `acknowledged` (a recipient's duty desk saw it) -> `confirmed`
or `rejected` (the listing unit, or a unit above it, says whether the subject is still
wanted) -> `closed` with an outcome (`detained`, `not_located`, `false_match`). A cancelled
entry `withdraws` its open alerts. Confirmation is due `urgent` or `routine` after raising
(NCIC: 10 minutes, 1 hour); each missed deadline re-notifies every recipient and adds the
next unit up the listing unit's chain of command.

Every rule here is a plain function of the alert's state, the unit asking and the
directory, so the service, the views (`actions`) and the tests share one answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from services.notifier.directory import Directory
from shared.errors import Forbidden, InvalidTransition
from shared.events import Urgency
from shared.i18n import N_

Status = Literal["raised", "acknowledged", "confirmed", "rejected", "closed", "withdrawn"]
OPEN: tuple[Status, ...] = ("raised", "acknowledged", "confirmed", "rejected")
AWAITING_CONFIRMATION: tuple[Status, ...] = ("raised", "acknowledged")
DECIDED: tuple[Status, ...] = ("confirmed", "rejected")
Outcome = Literal["detained", "not_located", "false_match"]
StatusFilter = Literal["all", "open", "overdue", "closed"]
Action = Literal["acknowledge", "confirm", "reject", "close"]


@dataclass(frozen=True)
class Deadlines:
    urgent: timedelta
    routine: timedelta

    def of(self, urgency: str) -> timedelta:
        return self.urgent if urgency == Urgency.URGENT else self.routine


def minutes(period: timedelta) -> str:
    return N_("{minutes:g} min").format(minutes=period.total_seconds() / 60)


def deciders(directory: Directory, owner: str) -> set[str]:
    """Who may confirm or reject: the listing unit (or its successor) and the units above."""
    return {directory.current(owner), *directory.ancestors(owner)}


def closers(directory: Directory, owner: str, seen_unit: str) -> set[str]:
    """Who may close: the deciders and the unit where the subject was seen."""
    return deciders(directory, owner) | {directory.current(seen_unit)}


def is_overdue(status: str, escalation_level: int, confirm_by: datetime | None,
               now: datetime) -> bool:
    return status in AWAITING_CONFIRMATION and (
        escalation_level > 0 or (confirm_by is not None and confirm_by <= now))


def actions(unit: str, *, status: str, acknowledged: bool, owner: str, seen_unit: str,
            directory: Directory, kind: str = "hit") -> list[Action]:
    """The steps `unit` may take on an alert now (the desk shows them as buttons). An
    incident alert is only acknowledged: it closes with its incident."""
    found: list[Action] = []
    if kind == "incident":
        return ["acknowledge"] if status in OPEN and not acknowledged else []
    may_decide = unit in deciders(directory, owner)
    if status in OPEN and not acknowledged:
        found.append("acknowledge")
    if status in AWAITING_CONFIRMATION and may_decide:
        found += ["confirm", "reject"]
    if status in DECIDED and (may_decide or unit == directory.current(seen_unit)):
        found.append("close")
    return found


def check_decision(unit: str, *, status: str, owner: str, directory: Directory,
                   confirmed: bool) -> Status:
    """The status a confirmation or rejection by `unit` leads to, or why it may not."""
    action: Status = "confirmed" if confirmed else "rejected"
    if unit not in deciders(directory, owner):
        raise Forbidden(f"only the listing unit {owner} or a unit above it can "
                        f"{action[:-1]} this alert", field="alert_id")
    if status not in AWAITING_CONFIRMATION:
        raise InvalidTransition(
            f"alert is {status}; only a raised or acknowledged alert can be {action}",
            field="status")
    return action


def check_acknowledgement(status: str) -> None:
    """A unit acknowledges an open alert (one closed or withdrawn before it did: 409)."""
    if status not in OPEN:
        raise InvalidTransition(f"alert is {status}; only an open alert can be acknowledged",
                                field="status")


def check_closing(unit: str, *, status: str, owner: str, seen_unit: str,
                  directory: Directory) -> None:
    if unit not in closers(directory, owner, seen_unit):
        raise Forbidden("only the unit where the subject was seen, the listing unit "
                        "or a unit above it can close this alert", field="alert_id")
    if status not in DECIDED:
        raise InvalidTransition(
            f"alert is {status}; it must be confirmed or rejected by the "
            "listing unit before it is closed", field="status")


@dataclass(frozen=True)
class Escalation:
    level: int
    target: str | None
    """The next unit up the listing unit's chain, added as a recipient; None at the top."""
    detail: str
    reason: str | None
    """Why the target receives the alert (its `why_you`)."""
    confirm_by: datetime


def escalation(*, owner: str, level: int, urgency: str, directory: Directory,
               deadlines: Deadlines, now: datetime) -> Escalation:
    """What a missed confirmation deadline does: the next level, the unit it reaches, and
    a new deadline."""
    period = deadlines.of(urgency)
    level += 1
    chain = directory.ancestors(owner)
    target = chain[level - 1] if level <= len(chain) else None
    detail = N_("{owner} did not confirm within {minutes} (deadline {level})").format(
        owner=owner, minutes=minutes(period), level=level)
    reason = N_("escalated: {detail}").format(detail=detail) if target is not None else None
    if target is not None:
        detail += "; " + N_("escalated to {target}").format(target=target)
    return Escalation(level, target, detail, reason, now + period)


def raised_detail(recipients: int, urgency: str, deadlines: Deadlines) -> str:
    return N_("{recipients} recipient(s), confirm within {minutes}").format(
        recipients=recipients, minutes=minutes(deadlines.of(urgency)))


def incident_raised_detail(count: int, severity: str) -> str:
    return N_("incident alert to {count} unit(s), {severity}").format(
        count=count, severity=severity)


def incident_update_detail(*, suspects: int, vehicles: int, fled_towards: Sequence[str],
                           fled_bearing: int | None, added: Sequence[str]) -> str:
    """What an update of an incident changed, in its history (the reporter's note is kept
    apart: `alert_history.note`)."""
    return "; ".join(part for part in (
        N_("{count} suspect(s) added").format(count=suspects) if suspects else "",
        N_("{count} vehicle(s) added").format(count=vehicles) if vehicles else "",
        N_("fled towards {units}").format(units=", ".join(fled_towards))
        if fled_towards else "",
        N_("direction of flight {bearing}°").format(bearing=fled_bearing)
        if fled_bearing is not None else "",
        N_("now also to {units}").format(units=", ".join(added)) if added else "",
        ) if part)


def incident_closed_detail(detail: str) -> str:
    return N_("incident closed: {detail}").format(detail=detail)


def check_hit_alert(kind: str) -> None:
    """Confirming, rejecting and closing are for hit alerts; an incident alert follows its
    incident."""
    if kind != "hit":
        raise InvalidTransition(
            "an incident alert is acknowledged only; the reporting unit closes the incident "
            "(POST /v1/incidents/{id}/close on ingest) and its alerts close with it",
            field="alert_id")
