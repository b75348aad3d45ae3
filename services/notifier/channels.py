"""Delivery channels behind one small interface.

Every change of an alert (raised, updated, cancelled) is handed to each channel *inside the
transaction that makes the change*, so a channel hears about exactly the changes that were
committed, and none is lost if the process dies right after:

- `SseChannel` sends a `pg_notify`; every notifier instance's `AlertFeed` pushes it to the
  desks connected to it (`GET /v1/alerts/stream`).
- `WebhookChannel` (`webhooks.py`) queues one row per unit that registered a webhook; the
  `WebhookDispatcher` posts them (HMAC-signed, retried with exponential backoff, moved to
  `dead` after `webhook_max_attempts` failures; `giapranh webhooks retry` re-queues).

CAP 1.2 and Atom (`services.notifier.cap`) are formats, served on request and used by
webhooks registered with `format=cap`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol
from uuid import UUID

import asyncpg

ALERTS_CHANNEL = "giapranh_alerts"
MAX_NOTIFY_UNITS = 200  # beyond this the feed looks recipients up (pg_notify caps at 8 kB)

ChangeKind = Literal["raised", "updated", "cancelled"]


@dataclass(frozen=True)
class AlertChange:
    """What happened to an alert and who is to hear about it."""

    alert_id: UUID
    kind: ChangeKind
    action: str  # raised, acknowledged, confirmed, rejected, closed, withdrawn, escalated
    units: tuple[str, ...]
    reported_at: datetime | None = None  # the source report's ingest time, for new alerts


class Channel(Protocol):
    name: str

    async def enqueue(self, conn: asyncpg.Connection, changes: Sequence[AlertChange],
                      now: datetime) -> None:
        """Record the changes for delivery, in the caller's transaction."""


class SseChannel:
    name = "sse"

    async def enqueue(self, conn: asyncpg.Connection, changes: Sequence[AlertChange],
                      now: datetime) -> None:
        await conn.execute("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n",
                           ALERTS_CHANNEL, [notification(change) for change in changes])


def notification(change: AlertChange) -> str:
    units = list(change.units) if len(change.units) <= MAX_NOTIFY_UNITS else None
    return json.dumps({
        "alert_id": str(change.alert_id), "kind": change.kind, "action": change.action,
        "units": units,
        "reported_at": change.reported_at.isoformat() if change.reported_at else None,
    })
