"""The notifier API (`/v1`): a unit reads, follows and works the alerts addressed to it.

Every route answers only for alerts delivered to the calling unit (anything else is 404,
whether or not it exists); workflow steps are further limited to the units whose step it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import AnyHttpUrl, Field

from services.notifier.cap import render_atom, render_cap
from services.notifier.channels import register_webhook
from services.notifier.feed import AlertFeed
from services.notifier.store import AlertStore, Outcome, StatusFilter
from shared import metrics
from shared.errors import NotFound
from shared.events import Contract, LongText, utcnow
from shared.http import CurrentUnit

router = APIRouter(prefix="/v1")
CAP_MEDIA_TYPE = "application/cap+xml"
ATOM_MEDIA_TYPE = "application/atom+xml"
STREAM_BATCH = 500


def _store(request: Request) -> AlertStore:
    return request.app.state.store


Store = Annotated[AlertStore, Depends(_store)]


class Decision(Contract):
    note: LongText | None = Field(None, description="What the listing unit checked or why.")


class Rejection(Contract):
    note: LongText = Field(min_length=1, description="Why the hit is rejected (required).")


class Closing(Contract):
    outcome: Outcome
    note: LongText | None = None


class WebhookIn(Contract):
    url: AnyHttpUrl
    format: Literal["json", "cap"] = "json"


@router.get("/me")
async def who_am_i(unit: CurrentUnit, request: Request) -> dict[str, object]:
    """The calling unit, as the directory knows it (the desk page shows it)."""
    row = await request.app.state.pool.fetchrow(
        "SELECT code, name, kind, parent_code FROM units WHERE code = $1", unit.unit_code)
    return {**dict(row), "role": unit.role}


@router.get("/alerts")
async def list_alerts(
    unit: CurrentUnit, store: Store,
    status: Annotated[StatusFilter, Query(description="open, overdue, closed or all")] = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, object]]:
    """The alerts addressed to the calling unit, newest first, with why it received each."""
    return await store.alerts_for_unit(unit.unit_code, limit, status)


@router.get("/alerts/stream", response_class=EventSourceResponse)
async def stream_alerts(request: Request, unit: CurrentUnit, store: Store) -> AsyncIterable[ServerSentEvent]:
    """Server-sent events for the calling unit: `event: alert` for each new alert and
    `event: update` for each change of one (acknowledged, confirmed, escalated, withdrawn,
    ...); `id` is the alert id and `data` the alert as in `GET /v1/alerts/{id}`."""
    feed: AlertFeed = request.app.state.feed
    with feed.subscribe(unit.unit_code) as queue:
        while True:
            items = [await queue.get()]
            while not queue.empty() and len(items) < STREAM_BATCH:
                items.append(queue.get_nowait())
            closed = None in items
            changes = [item for item in items if item is not None]
            # Read the views of everything queued with one query, not one per alert.
            views = await store.alerts_by_id(unit.unit_code, [c.alert_id for c in changes])
            now = utcnow()
            for change in changes:
                view = views.get(str(change.alert_id))
                if view is None:
                    continue
                metrics.DELIVERIES.labels(channel="sse", result="ok").inc()
                if change.kind == "raised" and change.reported_at is not None:
                    metrics.SIGHTING_TO_DELIVERY.labels(channel="sse").observe(
                        max(0.0, (now - change.reported_at).total_seconds()))
                yield ServerSentEvent(data=view, id=str(change.alert_id),
                                      event="alert" if change.kind == "raised" else "update")
            if closed:
                return  # fell too far behind: the client reconnects and reloads


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: UUID, unit: CurrentUnit, store: Store) -> dict[str, object]:
    return await store.alert_for_unit(alert_id, unit.unit_code)


@router.get("/alerts/{alert_id}/history")
async def alert_history(alert_id: UUID, unit: CurrentUnit, store: Store) -> list[dict[str, object]]:
    """Every step of the alert, oldest first: raised, acknowledged, escalated, ..."""
    return await store.history(alert_id, unit.unit_code)


@router.get("/alerts/{alert_id}/cap", response_class=Response,
            responses={200: {"content": {CAP_MEDIA_TYPE: {}}}})
async def alert_cap(alert_id: UUID, unit: CurrentUnit, store: Store, request: Request) -> Response:
    """The alert's current state as an OASIS CAP 1.2 message (Alert, Update or Cancel)."""
    view = await store.alert_for_unit(alert_id, unit.unit_code)
    body = render_cap(view, sender=request.app.state.settings.cap_sender,
                      recipients=await store.recipients(alert_id))
    return Response(body, media_type=CAP_MEDIA_TYPE)


@router.get("/feeds/alerts.atom", response_class=Response,
            responses={200: {"content": {ATOM_MEDIA_TYPE: {}}}})
async def atom_feed(unit: CurrentUnit, store: Store, request: Request,
                    limit: Annotated[int, Query(ge=1, le=500)] = 100) -> Response:
    """The calling unit's alerts as an Atom feed, latest change first, each entry carrying
    its CAP message."""
    entries = await store.feed_for_unit(unit.unit_code, limit)
    name = await request.app.state.pool.fetchval(
        "SELECT name FROM units WHERE code = $1", unit.unit_code)
    body = render_atom(unit.unit_code, name or unit.unit_code, entries,
                       sender=request.app.state.settings.cap_sender,
                       base_url=str(request.base_url).rstrip("/"), now=utcnow())
    return Response(body, media_type=ATOM_MEDIA_TYPE)


@router.post("/alerts/{alert_id}/ack")
async def acknowledge_alert(alert_id: UUID, unit: CurrentUnit, store: Store) -> dict[str, object]:
    """Acknowledge receipt at the calling unit's duty desk (repeating it changes nothing)."""
    return await store.acknowledge(alert_id, unit.unit_code)


@router.post("/alerts/{alert_id}/confirm")
async def confirm_alert(alert_id: UUID, unit: CurrentUnit, store: Store,
                        body: Decision | None = None) -> dict[str, object]:
    """The listing unit (or a unit above it) confirms the subject is still wanted."""
    return await store.decide(alert_id, unit.unit_code, True, body.note if body else None)


@router.post("/alerts/{alert_id}/reject")
async def reject_alert(alert_id: UUID, body: Rejection, unit: CurrentUnit,
                       store: Store) -> dict[str, object]:
    """The listing unit (or a unit above it) rejects the hit, saying why."""
    return await store.decide(alert_id, unit.unit_code, False, body.note)


@router.post("/alerts/{alert_id}/close")
async def close_alert(alert_id: UUID, body: Closing, unit: CurrentUnit,
                      store: Store) -> dict[str, object]:
    """Record the outcome (detained, not_located, false_match) of a confirmed or rejected
    alert."""
    return await store.close(alert_id, unit.unit_code, body.outcome, body.note)


@router.get("/webhook")
async def get_webhook(unit: CurrentUnit, request: Request) -> dict[str, object]:
    row = await request.app.state.pool.fetchrow(
        "SELECT url, format, created_at FROM webhooks WHERE unit_code = $1", unit.unit_code)
    if row is None:
        raise NotFound(f"unit {unit.unit_code} has no webhook", field="unit")
    return dict(row)


@router.put("/webhook")
async def put_webhook(body: WebhookIn, unit: CurrentUnit, request: Request) -> dict[str, object]:
    """Register (or replace) the calling unit's webhook. The signing secret is returned
    once, here; each call issues a new one."""
    secret = await register_webhook(request.app.state.pool, unit.unit_code, str(body.url),
                                    body.format)
    return {"url": str(body.url), "format": body.format, "secret": secret}


@router.delete("/webhook", status_code=204)
async def delete_webhook(unit: CurrentUnit, request: Request) -> Response:
    await request.app.state.pool.execute("DELETE FROM webhooks WHERE unit_code = $1",
                                         unit.unit_code)
    return Response(status_code=204)
