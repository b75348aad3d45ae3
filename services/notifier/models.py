"""What the notifier's API answers with: typed response models, and the alert view built
from a stored row for the unit asking."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel, Field

from services.notifier.directory import Directory
from services.notifier.workflow import Action, Outcome, Status, actions, is_overdue
from shared.events import (
    Category,
    Caution,
    IncidentOutcome,
    IncidentReported,
    MatchReason,
    Place,
    RequiredAction,
    Subject,
    Urgency,
    WatchlistEntry,
)
from shared.i18n import Language, translate, translate_all

WebhookFormat = Literal["json", "cap"]


class AlertView(BaseModel):
    """An alert as one recipient unit sees it: the hit, its state, and what it may do."""

    alert_id: UUID
    hit_id: UUID = Field(description="The hit's id; for an incident alert, the incident's.")
    kind: Literal["hit", "incident"] = Field(
        "hit", description="`hit`: a reported subject matched a listed one; `incident`: an "
        "incident the unit is concerned by (no entry, subject or score).")
    status: Status
    raised_at: datetime
    updated_at: datetime
    category: Category | Literal["incident"]
    urgency: Urgency
    confirm_by: datetime | None = Field(description="Confirmation deadline while awaited.")
    overdue: bool
    escalation_level: int
    entry: WatchlistEntry | None = Field(
        description="The listed entry, as it was when it hit (none on an incident alert).")
    subject: Subject | None = Field(
        description="The subject as the reporting officer typed it (none on an incident "
        "alert).")
    incident: IncidentReported | None = Field(
        None, description="The incident: of an incident alert, or of the hot list a hit "
        "alert's entry belongs to (with its later suspects, vehicles and direction).")
    action: RequiredAction | None = Field(
        None, description="What the listing unit asks for on a hit (shown first).")
    cautions: list[Caution] = Field(
        default_factory=list, description="Officer-safety flags (shown first).")
    place: Place
    seen_at: datetime
    score: float
    match_reasons: list[MatchReason]
    late: bool = Field(description="Found by re-checking an earlier report against a new "
                       "or changed entry.")
    owner_unit: str
    seen_unit: str
    unit_names: dict[str, str] = Field(description="Unit names as they were when raised.")
    correlation_id: UUID
    why_you: list[str] = Field(description="Why this unit received the alert.")
    delivered_at: datetime
    acknowledged_at: datetime | None = Field(description="When this unit acknowledged it.")
    first_acknowledged_at: datetime | None
    decided_at: datetime | None
    decided_by: str | None
    decision_note: str | None
    closed_at: datetime | None
    outcome: Outcome | IncidentOutcome | None = Field(
        description="How it ended (an incident alert, and a hit on its hot list, take the "
        "incident's outcome: caught, lost, false_report).")
    actions: list[Action] = Field(description="The steps this unit may take now.")


class HistoryStep(BaseModel):
    at: datetime
    action: str
    label: str = Field("", description="The step in the reader's language (`action` is "
                       "its code).")
    unit_code: str | None
    detail: str | None
    person_name: str | None = Field(None, description="Who took the step (steps the "
                                    "system takes, such as raising and escalating, have none).")


class UnitView(BaseModel):
    """The calling unit, as the directory knows it."""

    code: str
    name: str
    kind: str
    parent_code: str | None
    role: str = Field(description="The key's role: reporter, desk, unit_admin or "
                      "province_admin.")
    person_name: str | None = Field(None, description="Whose key it is.")


class WebhookView(BaseModel):
    url: str
    format: WebhookFormat
    created_at: datetime


class WebhookCreated(BaseModel):
    url: str
    format: WebhookFormat
    secret: str = Field(description="The signing secret; shown this once only.")


def alert_view(row: Any, unit_code: str, now: datetime, directory: Directory) -> AlertView:
    """The view of a stored alert (a row of `repository.ALERT_COLUMNS`) for `unit_code`."""
    return AlertView.model_validate(alert_view_data(row, unit_code, now, directory))


def alert_view_json(row: Any, unit_code: str, now: datetime, directory: Directory,
                    languages: Iterable[str]) -> dict[str, bytes]:
    """`alert_view` as JSON (UTF-8), by language, for the live streams: written straight
    from the stored row (validated when it was stored), not through the model, which took
    a sixth of the notifier's time at a thousand alerts a second. The same JSON as the
    API's (tests/test_alert_stream.py compares them)."""
    data = alert_view_data(row, unit_code, now, directory)
    # (orjson writes datetimes and UUIDs as pydantic does, UTC as `Z`)
    return {language: orjson.dumps(localized_json(data, language),  # type: ignore[arg-type]
                                   default=_uuid_text, option=orjson.OPT_UTC_Z)
            for language in languages}


def _uuid_text(value: object) -> str:
    if isinstance(value, UUID) or type(value).__name__ == "UUID":  # (asyncpg's own UUID)
        return str(value)
    raise TypeError(f"{type(value).__name__} in an alert view")


def alert_view_data(row: Any, unit_code: str, now: datetime,
                    directory: Directory) -> dict[str, Any]:
    """The fields of `AlertView` for a stored alert, as stored."""
    hit = row["hit"]
    status = row["status"]
    kind = row["kind"]
    if kind == "incident":
        incident = hit
        hit = {"entry": None, "subject": None, "place": incident["place"], "reasons": []}
        action, cautions = None, []
    else:
        incident = row["incident"]
        action, cautions = hit["entry"].get("action"), hit["entry"].get("cautions", [])
    return {
        "alert_id": row["alert_id"],
        "hit_id": row["hit_id"],
        "kind": kind,
        "incident": incident,
        "action": action,
        "cautions": cautions,
        "status": status,
        "raised_at": row["raised_at"],
        "updated_at": row["updated_at"],
        "category": row["category"],
        "urgency": row["urgency"],
        "confirm_by": row["confirm_by"] if status in ("raised", "acknowledged") else None,
        "overdue": is_overdue(status, row["escalation_level"], row["confirm_by"], now),
        "escalation_level": row["escalation_level"],
        "entry": hit["entry"],
        "subject": hit["subject"],
        "place": hit["place"],
        "seen_at": row["seen_at"],
        "score": row["score"],
        "match_reasons": hit["reasons"],
        "late": row["late"],
        "owner_unit": row["owner_unit"],
        "seen_unit": row["seen_unit"],
        "unit_names": row["units"],
        "correlation_id": row["correlation_id"],
        "why_you": list(row["reasons"]),
        "delivered_at": row["delivered_at"],
        "acknowledged_at": row["acknowledged_at"],
        "first_acknowledged_at": row["first_acknowledged_at"],
        "decided_at": row["decided_at"],
        "decided_by": row["decided_by"],
        "decision_note": row["decision_note"],
        "closed_at": row["closed_at"],
        "outcome": row["outcome"],
        "actions": actions(unit_code, status=status,
                           acknowledged=row["acknowledged_at"] is not None,
                           owner=row["owner_unit"], seen_unit=row["seen_unit"],
                           directory=directory, kind=kind),
    }


def localized(view: AlertView, language: Language) -> AlertView:
    """The view with its texts for people (match reasons, why you) in `language`."""
    if language == "en":
        return view
    return view.model_copy(update={
        "match_reasons": [reason.model_copy(update={"detail": translate(reason.detail,
                                                                        language)})
                          for reason in view.match_reasons],
        "why_you": translate_all(view.why_you, language)})


def localized_json(view: dict[str, Any], language: Language) -> dict[str, Any]:
    """`localized` for a view already dumped to JSON-ready data (the stream's)."""
    if language == "en":
        return view
    return {**view,
            "match_reasons": [{**reason, "detail": translate(reason["detail"], language)}
                              for reason in view.get("match_reasons") or ()],
            "why_you": translate_all(view.get("why_you") or (), language)}


_NOTE_ACTIONS = frozenset({"confirmed", "rejected", "withdrawn"})
"""History steps whose detail is only somebody's own words (a note; the reason the listing
unit gave for cancelling its entry)."""
_INCIDENT_CLOSED = "incident closed: "


def history_detail(action: str, detail: str, language: Language) -> str:
    """A history step's detail in `language`: the system's words translated, somebody's
    own words (a note when confirming, rejecting or closing: `<outcome>: <note>`; the
    listing unit's reason for cancelling) left as written."""
    if language == "en" or (action in _NOTE_ACTIONS and detail != "cancelled"):
        return detail  # ("cancelled": the code's word when the unit gave no reason)
    if action == "closed":
        incident = detail.startswith(_INCIDENT_CLOSED)
        head, sep, note = detail.removeprefix(_INCIDENT_CLOSED).partition(": ")
        head = translate(_INCIDENT_CLOSED + head if incident else head, language)
        return head + sep + note
    return translate(detail, language)


def history_step(row: Any, language: Language) -> HistoryStep:
    detail = row["detail"]
    if detail:
        detail = history_detail(row["action"], detail, language)
    if row["note"]:  # (somebody's own words, after the system's, as written)
        detail = "; ".join(part for part in (detail, row["note"]) if part)
    return HistoryStep(at=row["at"], action=row["action"],
                       label=translate(row["action"], language) if language != "en"
                       else row["action"], unit_code=row["unit_code"], detail=detail,
                       person_name=row["person_name"])
