"""Delivery channels behind one small interface.

Every change of an alert (raised, updated, cancelled) is handed to each channel *inside the
transaction that makes the change*, so a channel hears about exactly the changes that were
committed, and none is lost if the process dies right after:

- `SseChannel` sends a `pg_notify`; every notifier instance's `AlertFeed` pushes it to the
  desks connected to it (`GET /v1/alerts/stream`).
- `WebhookChannel` queues one row per unit that registered a webhook; the
  `WebhookDispatcher` posts them (HMAC-signed, retried with exponential backoff, moved to
  `dead` after `webhook_max_attempts` failures; `giapranh webhooks retry` re-queues).

CAP 1.2 and Atom (`services.notifier.cap`) are formats, served on request and used by
webhooks registered with `format=cap`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol
from uuid import UUID

import asyncpg
import httpx

from services.notifier.clock import Clock
from shared import metrics

log = logging.getLogger(__name__)

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


class WebhookChannel:
    name = "webhook"

    async def enqueue(self, conn: asyncpg.Connection, changes: Sequence[AlertChange],
                      now: datetime) -> None:
        rows = [(unit, change.alert_id, change.kind, change.reported_at)
                for change in changes for unit in change.units]
        await conn.execute(
            """INSERT INTO webhook_deliveries (unit_code, alert_id, kind, reported_at,
                                               next_attempt_at)
               SELECT c.unit_code, c.alert_id, c.kind, c.reported_at, $5
                 FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[])
                      AS c (unit_code, alert_id, kind, reported_at)
                 JOIN webhooks w ON w.unit_code = c.unit_code
                ORDER BY c.alert_id""",
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            [r[3] for r in rows], now,
        )


async def register_webhook(conn: asyncpg.Connection | asyncpg.Pool, unit_code: str, url: str,
                           fmt: str) -> str:
    """Register (or replace) a unit's webhook; returns its new signing secret (shown once)."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO webhooks (unit_code, url, secret, format) VALUES ($1, $2, $3, $4)
           ON CONFLICT (unit_code) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret,
               format = EXCLUDED.format, created_at = now()""",
        unit_code, url, secret, fmt)
    return secret


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>`, as in the README."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_seconds: int = 300,
           now: float | None = None) -> bool:
    """Check a signature header as a receiver would (used by tests and documented)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)



class Renderer(Protocol):
    async def __call__(self, alert_id: UUID, unit_code: str, kind: str, fmt: str) -> bytes: ...


@dataclass(frozen=True)
class WebhookPolicy:
    max_attempts: int
    base_seconds: float
    max_backoff_seconds: float
    timeout_seconds: float
    lease_seconds: float = 60.0

    def backoff(self, attempts: int) -> float:
        """Exponential with ±20 % jitter, so failing receivers are not hit in lockstep."""
        delay = min(self.base_seconds * 2 ** (attempts - 1), self.max_backoff_seconds)
        return delay * random.uniform(0.8, 1.2)


class WebhookDispatcher:
    """Posts queued webhook deliveries; safe to run in every notifier instance (rows are
    claimed with SKIP LOCKED and leased, so each attempt happens once)."""

    def __init__(self, pool: asyncpg.Pool, render: Renderer, policy: WebhookPolicy,
                 clock: Clock, *, poll_seconds: float = 0.5, batch: int = 50,
                 client: httpx.AsyncClient | None = None):
        self._pool = pool
        self._render = render
        self._policy = policy
        self._clock = clock
        self._poll = poll_seconds
        self._batch = batch
        self._client = client

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self._policy.timeout_seconds) as client:
            self._client = self._client or client
            while True:
                try:
                    sent = await self.dispatch_due()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("webhook dispatch round failed: %r", exc)
                    sent = 0
                if sent < self._batch:
                    await asyncio.sleep(self._poll)

    async def dispatch_due(self) -> int:
        now = self._clock.now()
        rows = await self._pool.fetch(
            """UPDATE webhook_deliveries d SET next_attempt_at = $2
                 FROM webhooks w
                WHERE w.unit_code = d.unit_code AND d.id IN (
                      SELECT id FROM webhook_deliveries
                       WHERE status = 'pending' AND next_attempt_at <= $1
                       ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
            RETURNING d.id, d.unit_code, d.alert_id, d.kind, d.attempts, d.reported_at,
                      w.url, w.secret, w.format""",
            now, now + timedelta(seconds=self._policy.lease_seconds), self._batch,
        )
        metrics.WEBHOOK_PENDING.set(await self._pool.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"))
        if rows:
            await asyncio.gather(*(self._attempt(row) for row in rows))
        return len(rows)

    async def _attempt(self, row: asyncpg.Record) -> None:
        assert self._client is not None
        error: str | None = None
        try:
            body = await self._render(row["alert_id"], row["unit_code"], row["kind"],
                                      row["format"])
            content_type = ("application/cap+xml" if row["format"] == "cap"
                            else "application/json")
            response = await self._client.post(row["url"], content=body, headers={
                "Content-Type": content_type,
                "User-Agent": "giapranh-notifier",
                "X-Giapranh-Delivery": str(row["id"]),
                "X-Giapranh-Event": row["kind"],
                "X-Giapranh-Signature": sign(row["secret"], int(time.time()), body),
            }, timeout=self._policy.timeout_seconds)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:
            log.exception("webhook %s could not be prepared", row["id"])
            error = f"{type(exc).__name__}: {exc}"[:500]
        await self._record(row, error)

    async def _record(self, row: asyncpg.Record, error: str | None) -> None:
        now = self._clock.now()
        attempts = row["attempts"] + 1
        if error is None:
            await self._pool.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = $2, "
                "finished_at = $3, last_error = NULL WHERE id = $1", row["id"], attempts, now)
            metrics.DELIVERIES.labels(channel="webhook", result="ok").inc()
            if row["kind"] == "raised" and row["reported_at"] is not None:
                metrics.SIGHTING_TO_DELIVERY.labels(channel="webhook").observe(
                    max(0.0, (now - row["reported_at"]).total_seconds()))
            return
        reason = "http_status" if error.startswith("HTTP ") else "transport"
        metrics.WEBHOOK_FAILURES.labels(reason=reason).inc()
        if attempts >= self._policy.max_attempts:
            await self._pool.execute(
                "UPDATE webhook_deliveries SET status = 'dead', attempts = $2, "
                "finished_at = $3, last_error = $4 WHERE id = $1",
                row["id"], attempts, now, error)
            metrics.DELIVERIES.labels(channel="webhook", result="dead").inc()
            log.error("webhook delivery %s to %s dead after %d attempts: %s",
                      row["id"], row["unit_code"], attempts, error,
                      extra={"alert_id": row["alert_id"]})
            return
        retry_at = now + timedelta(seconds=self._policy.backoff(attempts))
        await self._pool.execute(
            "UPDATE webhook_deliveries SET attempts = $2, next_attempt_at = $3, last_error = $4 "
            "WHERE id = $1", row["id"], attempts, retry_at, error)
        metrics.DELIVERIES.labels(channel="webhook", result="failed").inc()
        log.warning("webhook delivery %s to %s failed (attempt %d), retry at %s: %s",
                    row["id"], row["unit_code"], attempts, retry_at.isoformat(), error)
