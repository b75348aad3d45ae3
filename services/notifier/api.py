"""The notifier API (`/v1`): a unit reads and acknowledges the alerts addressed to it."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from collections.abc import AsyncIterable

from fastapi import APIRouter, Depends, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from services.notifier.feed import AlertFeed
from services.notifier.store import AlertStore
from shared import metrics
from shared.http import CurrentUnit

router = APIRouter(prefix="/v1")


def _store(request: Request) -> AlertStore:
    return request.app.state.store


Store = Annotated[AlertStore, Depends(_store)]


@router.get("/alerts")
async def list_alerts(
    unit: CurrentUnit, store: Store, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, object]]:
    """The alerts addressed to the calling unit, newest first, with why it received each."""
    return await store.alerts_for_unit(unit.unit_code, limit)


@router.get("/alerts/stream", response_class=EventSourceResponse)
async def stream_alerts(request: Request, unit: CurrentUnit, store: Store) -> AsyncIterable[ServerSentEvent]:
    """Server-sent events: each new alert addressed to the calling unit, as it is stored
    (`event: alert`, `id`: the alert id, `data`: the alert as in `GET /v1/alerts/{id}`)."""
    feed: AlertFeed = request.app.state.feed
    with feed.subscribe(unit.unit_code) as queue:
        while True:
            alert_id = await queue.get()
            if alert_id is None:
                return  # fell too far behind: the client reconnects and reloads
            view = await store.alert_for_unit(alert_id, unit.unit_code)
            metrics.DELIVERIES.labels(channel="sse", unit=unit.unit_code).inc()
            yield ServerSentEvent(data=view, event="alert", id=str(alert_id))


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: UUID, unit: CurrentUnit, store: Store) -> dict[str, object]:
    return await store.alert_for_unit(alert_id, unit.unit_code)


@router.post("/alerts/{alert_id}/ack")
async def acknowledge_alert(alert_id: UUID, unit: CurrentUnit, store: Store) -> dict[str, object]:
    """Acknowledge receipt at the calling unit's duty desk (repeating it changes nothing)."""
    await store.alert_for_unit(alert_id, unit.unit_code)
    return await store.acknowledge(alert_id, unit.unit_code)
