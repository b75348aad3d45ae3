"""Check now: an officer checks a person, id or plate against every list and gets the
matches, with their reasons, what to do and how dangerous, in the response.

Ingest authenticates, audits and counts the check; the matching itself is the matcher's
(its engine holds every list in memory): ingest asks one worker over its internal
endpoint (`GIAPRANH_MATCHER_URL`, `/internal/check`, a token derived from the key pepper).
What a check may show is what a sighting of the same subject on the unit's territory would
alert the unit to (the unit where a subject is seen always receives its alerts), so a
check reveals nothing a report would not. `record: true` also files it as a sighting.
"""

from __future__ import annotations

import time
from datetime import datetime

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator

from services.ingest.api import (
    ClientEventId,
    EventAccepted,
    SightingIn,
    _check_reports,
    _publish,
    _sighting,
)
from services.ingest.deps import CurrentUnit, Settings, Store
from shared import audit, metrics
from shared.audit import Actor
from shared.auth import internal_token
from shared.errors import ServiceUnavailable
from shared.events import (
    Caution,
    Contract,
    MatchReason,
    Place,
    RequiredAction,
    Subject,
    Timestamp,
    WatchlistEntry,
    utcnow,
)
from shared.http import AnswerLanguage, KeyFirstRoute, error_responses
from shared.i18n import translate
from shared.topics import SIGHTINGS

router = APIRouter(prefix="/v1", responses=error_responses(401, 429),
                   route_class=KeyFirstRoute)


class CheckIn(Contract):
    subject: Subject
    record: bool = Field(False, description="Also file the check as a sighting (needs `place`).")
    place: Place | None = Field(None, description="Where the officer is (for `record`).")
    occurred_at: Timestamp | None = Field(None, description="When (default: now).")
    event_id: ClientEventId = None

    @model_validator(mode="after")
    def _checkable(self) -> CheckIn:
        if self.subject.is_empty():
            raise ValueError("a check needs a name, a national_id or a plate")
        if self.record and self.place is None:
            raise ValueError("place is needed to record the check as a sighting")
        return self

    model_config = {"json_schema_extra": {"examples": [{
        "subject": {"name": "NGUYEN VAN HUNG", "national_id": "089 091 004 217"}}]}}


class CheckMatch(BaseModel):
    """A listed subject the check matched: what to do and beware of first."""

    cautions: list[Caution]
    action: RequiredAction | None
    score: float
    reasons: list[MatchReason]
    entry: WatchlistEntry


class CheckResult(BaseModel):
    checked_at: datetime
    watchlist_entries: int = Field(description="Entries the answer was checked against.")
    matches: list[CheckMatch] = Field(description="Best first; empty: no listed subject.")
    recorded: EventAccepted | None = Field(
        None, description="The sighting filed with `record: true`.")


@router.post("/checks", response_model=CheckResult, responses=error_responses(409, 503))
async def check(body: CheckIn, unit: CurrentUnit, store: Store, settings: Settings,
                request: Request, language: AnswerLanguage = "en") -> CheckResult:
    """Check a person, id or plate against every list now. The answer carries each match's
    reasons, the action its listing unit asks for and its officer-safety flags. Counted
    and audited; with `record: true`, also filed as a sighting (then alerts follow as for
    any sighting)."""
    started = time.perf_counter()
    at = body.occurred_at or utcnow()
    client: httpx.AsyncClient = request.app.state.matcher_client
    try:
        response = await client.post(
            "/internal/check", json={"subject": body.subject.model_dump(mode="json"),
                                     "at": at.isoformat()},
            headers={"x-giapranh-internal": internal_token(
                settings.api_key_pepper.get_secret_value())})
    except httpx.HTTPError as exc:
        metrics.CHECKS.labels(result="unavailable").inc()
        raise ServiceUnavailable(f"the matcher cannot be reached ({type(exc).__name__}); "
                                 "try again shortly") from None
    if response.status_code != 200:
        metrics.CHECKS.labels(result="unavailable").inc()
        raise ServiceUnavailable(f"the matcher cannot answer now ({response.status_code}); "
                                 "try again shortly")
    answer = response.json()
    matches = [CheckMatch(cautions=m["entry"].get("cautions", []),
                          action=m["entry"].get("action"), score=m["score"],
                          reasons=[{**r, "detail": translate(r["detail"], language)}
                                   for r in m["reasons"]],
                          entry=m["entry"]) for m in answer["matches"]]
    recorded = None
    if body.record:
        sighting = SightingIn(event_id=body.event_id, occurred_at=at, subject=body.subject,
                              place=body.place)  # type: ignore[arg-type]
        await _check_reports([sighting], store, settings)
        recorded = await _publish(_sighting(sighting, unit.unit_code, utcnow()), sighting,
                                  store, SIGHTINGS, unit.person_id,
                                  settings.ingest_write_timeout_seconds)
    async with store.pool.acquire() as conn, conn.transaction():
        await audit.record(conn, Actor.of(unit), "check", detail={
            "matches": [m.entry.entry_id for m in matches],
            "recorded": str(recorded.event_id) if recorded else None})
    metrics.CHECKS.labels(result="hit" if matches else "clear").inc()
    metrics.CHECK_SECONDS.observe(time.perf_counter() - started)
    return CheckResult(checked_at=at, watchlist_entries=answer["watchlist_entries"],
                       matches=matches, recorded=recorded)
