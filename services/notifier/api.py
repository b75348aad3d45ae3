"""The notifier API (`/v1`): a unit reads, follows and works the alerts addressed to it.

Every route answers only for alerts delivered to the calling unit (anything else is 404,
whether or not it exists); workflow steps are further limited to the units whose step it is.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AnyHttpUrl, Field, field_validator

from services.notifier.cap import render_atom, render_cap
from services.notifier.deps import Alerts, CurrentUnit, Feed, Settings, UnitWebhooks
from services.notifier.feed import EventStream
from services.notifier.models import (
    AlertView,
    HistoryStep,
    UnitView,
    WebhookCreated,
    WebhookFormat,
    WebhookView,
    localized,
)
from services.notifier.webhooks import MAX_URL_LENGTH
from services.notifier.workflow import Outcome, StatusFilter
from shared.audit import Actor
from shared.auth import Principal
from shared.errors import NotFound, TooManyRequests
from shared.events import Contract, LongText, utcnow
from shared.http import AnswerLanguage, DeskKey, KeyFirstRoute, UnitAdminKey, error_responses

router = APIRouter(prefix="/v1", responses=error_responses(401, 429),
                   route_class=KeyFirstRoute)
CAP_MEDIA_TYPE = "application/cap+xml"
ATOM_MEDIA_TYPE = "application/atom+xml"


class Decision(Contract):
    note: LongText | None = Field(None, description="What the listing unit checked or why.")


class Rejection(Contract):
    note: LongText = Field(min_length=1, description="Why the hit is rejected (required).")


class Closing(Contract):
    outcome: Outcome
    note: LongText | None = None


class WebhookIn(Contract):
    url: AnyHttpUrl = Field(description="Where to POST: http or https, a public address "
                            "(or one in GIAPRANH_WEBHOOK_ALLOWED_NETWORKS), no credentials, "
                            "at most 2,000 characters.")

    @field_validator("url", mode="before")
    @classmethod
    def _bounded(cls, value: object) -> object:
        if isinstance(value, str) and len(value) > MAX_URL_LENGTH:
            raise ValueError(f"a webhook URL may have at most {MAX_URL_LENGTH} characters")
        return value
    format: WebhookFormat = "json"


@router.get("/me", response_model=UnitView, responses=error_responses(404))
async def who_am_i(unit: CurrentUnit, alerts: Alerts) -> UnitView:
    """The calling unit, as the directory knows it (the desk page shows it)."""
    row = await alerts.unit(unit.unit_code)
    if row is None:
        raise NotFound(f"no unit {unit.unit_code}", field="unit")
    return UnitView(**dict(row), role=unit.role, person_name=unit.person_name)


@router.get("/alerts", response_model=list[AlertView])
async def list_alerts(
    unit: CurrentUnit, alerts: Alerts,
    status: Annotated[StatusFilter, Query(description="open, overdue, closed or all")] = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, language: AnswerLanguage = "en",
) -> list[AlertView]:
    """The alerts addressed to the calling unit, newest first, with why it received each."""
    return [localized(view, language)
            for view in await alerts.alerts_for_unit(unit.unit_code, limit, status)]


async def _stream_allowed(unit: CurrentUnit, feed: Feed) -> Principal:
    """Refuse (429) before the stream starts when the key holds its cap of streams."""
    if feed.streams_of(unit.key_id) >= feed.max_streams:
        raise TooManyRequests(
            f"this key has {feed.max_streams} open streams already "
            "(GIAPRANH_NOTIFIER_MAX_STREAMS_PER_KEY); close one", retry_after=5)
    cap = feed.max_unit_streams
    if cap is not None and feed.streams_of_unit(unit.unit_code) >= cap:
        raise TooManyRequests(
            f"unit {unit.unit_code} has {cap} open streams already, all its keys together "
            "(GIAPRANH_NOTIFIER_MAX_STREAMS_PER_UNIT); close one", retry_after=5)
    return unit


@router.get("/alerts/stream", response_class=EventStream, status_code=200, responses={200: {
    "description": "A stream of server-sent events that does not end by itself: "
                   "`event: alert` (a new alert) or `event: update` (a change of one), `id` "
                   "the alert id, `data` the alert as JSON (`AlertView`); `: ping` comment "
                   "lines when idle.",
    # Each event as schemathesis (and any SSE client) reads one: its fields, all text.
    "content": {"text/event-stream": {"schema": {
        "type": "object", "properties": {
            "event": {"type": "string", "enum": ["alert", "update"]},
            "id": {"type": "string", "format": "uuid"},
            "data": {"type": "string", "description": "The alert as JSON (`AlertView`)."}},
        "required": ["data"]}}}}})
async def stream_alerts(
    unit: Annotated[Principal, Depends(_stream_allowed)], feed: Feed,
    language: AnswerLanguage = "en",
) -> EventStream:
    """Server-sent events for the calling unit: `event: alert` for each new alert and
    `event: update` for each change of one (acknowledged, confirmed, escalated, withdrawn,
    ...); `id` is the alert id and `data` the alert as in `GET /v1/alerts/{id}`; a comment
    line (`: ping`) when nothing happened for 15 s. The stream ends when the key is revoked
    or expires. Texts for people in the language of `Accept-Language`."""
    return EventStream(feed, unit, language)


@router.get("/alerts/{alert_id}", response_model=AlertView, responses=error_responses(404))
async def get_alert(alert_id: UUID, unit: CurrentUnit, alerts: Alerts,
                    language: AnswerLanguage = "en") -> AlertView:
    return localized(await alerts.alert_for_unit(alert_id, unit.unit_code), language)


@router.get("/alerts/{alert_id}/history", response_model=list[HistoryStep],
            responses=error_responses(404))
async def alert_history(alert_id: UUID, unit: CurrentUnit, alerts: Alerts,
                        language: AnswerLanguage = "en") -> list[HistoryStep]:
    """Every step of the alert, oldest first: raised, acknowledged, escalated, ..."""
    return await alerts.history(alert_id, unit.unit_code, language)


@router.get("/alerts/{alert_id}/cap", response_class=Response,
            responses={200: {"content": {CAP_MEDIA_TYPE: {}}}, **error_responses(404)})
async def alert_cap(alert_id: UUID, unit: CurrentUnit, alerts: Alerts,
                    settings: Settings) -> Response:
    """The alert's current state as an OASIS CAP 1.2 message (Alert, Update or Cancel)."""
    view = await alerts.alert_for_unit(alert_id, unit.unit_code)
    body = render_cap(view.model_dump(), sender=settings.cap_sender,
                      recipients=await alerts.recipients(alert_id))
    return Response(body, media_type=CAP_MEDIA_TYPE)


@router.get("/feeds/alerts.atom", response_class=Response,
            responses={200: {"content": {ATOM_MEDIA_TYPE: {}}}})
async def atom_feed(unit: CurrentUnit, alerts: Alerts, settings: Settings, request: Request,
                    limit: Annotated[int, Query(ge=1, le=500)] = 100) -> Response:
    """The calling unit's alerts as an Atom feed, latest change first, each entry carrying
    its CAP message."""
    entries = await alerts.feed_for_unit(unit.unit_code, limit)
    row = await alerts.unit(unit.unit_code)
    body = render_atom(unit.unit_code, row["name"] if row else unit.unit_code,
                       [(view.model_dump(), recipients) for view, recipients in entries],
                       sender=settings.cap_sender,
                       base_url=(settings.notifier_public_url
                                 or str(request.base_url)).rstrip("/"), now=utcnow())
    return Response(body, media_type=ATOM_MEDIA_TYPE)


@router.post("/alerts/{alert_id}/ack", response_model=AlertView,
             responses=error_responses(403, 404, 409))
async def acknowledge_alert(alert_id: UUID, unit: DeskKey, alerts: Alerts,
                            language: AnswerLanguage = "en") -> AlertView:
    """Acknowledge receipt at the calling unit's duty desk (repeating it changes nothing;
    an alert closed or withdrawn before the desk acknowledged it: 409). Desk keys and
    above."""
    return localized(await alerts.acknowledge(alert_id, unit.unit_code, Actor.of(unit)),
                     language)


@router.post("/alerts/{alert_id}/confirm", response_model=AlertView,
             responses=error_responses(403, 404, 409))
async def confirm_alert(alert_id: UUID, unit: DeskKey, alerts: Alerts,
                        body: Decision | None = None,
                        language: AnswerLanguage = "en") -> AlertView:
    """The listing unit (or a unit above it) confirms the subject is still wanted."""
    return localized(await alerts.decide(alert_id, unit.unit_code, True,
                                         body.note if body else None, Actor.of(unit)),
                     language)


@router.post("/alerts/{alert_id}/reject", response_model=AlertView,
             responses=error_responses(403, 404, 409))
async def reject_alert(alert_id: UUID, body: Rejection, unit: DeskKey,
                       alerts: Alerts, language: AnswerLanguage = "en") -> AlertView:
    """The listing unit (or a unit above it) rejects the hit, saying why."""
    return localized(await alerts.decide(alert_id, unit.unit_code, False, body.note,
                                         Actor.of(unit)), language)


@router.post("/alerts/{alert_id}/close", response_model=AlertView,
             responses=error_responses(403, 404, 409))
async def close_alert(alert_id: UUID, body: Closing, unit: DeskKey,
                      alerts: Alerts, language: AnswerLanguage = "en") -> AlertView:
    """Record the outcome (detained, not_located, false_match) of a confirmed or rejected
    alert."""
    return localized(await alerts.close(alert_id, unit.unit_code, body.outcome, body.note,
                                        Actor.of(unit)), language)


@router.get("/webhook", response_model=WebhookView, responses=error_responses(403, 404))
async def get_webhook(unit: UnitAdminKey, webhooks: UnitWebhooks) -> WebhookView:
    """The calling unit's webhook (unit admins)."""
    hook = await webhooks.of(unit.unit_code)
    if hook is None:
        raise NotFound(f"unit {unit.unit_code} has no webhook", field="unit")
    return hook


@router.put("/webhook", response_model=WebhookCreated, responses=error_responses(403))
async def put_webhook(body: WebhookIn, unit: UnitAdminKey,
                      webhooks: UnitWebhooks) -> WebhookCreated:
    """Register (or replace) the calling unit's webhook (unit admins). The signing secret
    is returned once, here; each call issues a new one."""
    secret = await webhooks.register(unit.unit_code, str(body.url), body.format,
                                     actor=Actor.of(unit))
    return WebhookCreated(url=str(body.url), format=body.format, secret=secret)


@router.delete("/webhook", status_code=204, responses=error_responses(403))
async def delete_webhook(unit: UnitAdminKey, webhooks: UnitWebhooks) -> Response:
    """Remove the calling unit's webhook (unit admins)."""
    await webhooks.remove(unit.unit_code, actor=Actor.of(unit))
    return Response(status_code=204)
