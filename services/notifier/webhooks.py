"""Webhooks: each unit may register one endpoint; every change of its alerts is queued for
it in the transaction that made the change, and posted by the dispatcher.

Each POST carries `X-Giapranh-Event`, `X-Giapranh-Delivery` and `X-Giapranh-Signature:
t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>` (`verify` checks one as a
receiver would). Failed posts are retried with exponential backoff and moved to `dead`
after `max_attempts`; `retry_dead` queues them again.

Destinations: a webhook must not turn the notifier into a proxy into its own network. A URL
whose host is, or resolves to, a loopback, link-local (169.254.169.254), private, shared,
reserved, multicast or unspecified address is refused, unless that address lies in an
allowed network (`GIAPRANH_WEBHOOK_ALLOWED_NETWORKS`); credentials in the URL and URLs over
`MAX_URL_LENGTH` are refused too. The check is made again at every delivery, and the POST
goes to the address that was checked (DNS rebinding cannot swap it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

import asyncpg
import httpx

from services.notifier.channels import AlertChange
from services.notifier.clock import Clock
from services.notifier.models import WebhookFormat, WebhookView
from shared import audit, metrics
from shared.audit import Actor
from shared.db import DATABASE_ERRORS, encode_json
from shared.errors import Unprocessable
from shared.kafka import stop_if_cancelled

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000


class Destination:
    """Where webhooks may go: public addresses, and the networks an operator allows."""

    def __init__(self, allowed: Sequence[str] = ()):
        self.allowed = [ipaddress.ip_network(network, strict=False) for network in allowed]

    def permits(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allowed):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            # An IPv4 address carried inside (6to4, Teredo) is where a relay takes it: it
            # must be public too; site-local (fec0::/10, deprecated) is a private network.
            # (Python 3.11's is_global does not cover these.)
            if ip.is_site_local:
                return False
            inner = [ip.sixtofour, *(ip.teredo or ())]
            if any(carried is not None and not self.permits(str(carried))
                   for carried in inner):
                return False
        return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback
                                     or ip.is_link_local or ip.is_private
                                     or ip.is_unspecified)

    def check_url(self, url: str) -> httpx.URL:
        """The URL, if its form is acceptable (scheme, no credentials, length)."""
        if len(url) > MAX_URL_LENGTH:
            raise Unprocessable(f"a webhook URL may have at most {MAX_URL_LENGTH} characters",
                                field="url")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise Unprocessable("a webhook URL must be http or https, with a host",
                                field="url")
        if parsed.userinfo:
            raise Unprocessable("a webhook URL must not carry credentials", field="url")
        return parsed

    async def resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses, or an empty list if it does not resolve."""
        try:
            ipaddress.ip_address(host.strip("[]"))
            return [host.strip("[]")]
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return []
        return list(dict.fromkeys(info[4][0] for info in infos))

    async def vet(self, url: str, *, at_registration: bool) -> tuple[httpx.URL, str | None]:
        """(URL, the address to connect to). Refuses a destination outside the permitted
        addresses; a name that does not resolve is accepted at registration (the delivery
        checks again) and refused at delivery."""
        parsed = self.check_url(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await self.resolve(parsed.host, port)
        if not addresses:
            if at_registration:
                return parsed, None
            raise Unprocessable(f"webhook host {parsed.host} does not resolve", field="url")
        refused = [a for a in addresses if not self.permits(a)]
        if refused:
            raise Unprocessable(
                f"webhook host {parsed.host} is, or resolves to, {refused[0]}, which is not a "
                "public address (an operator may allow a network with "
                "GIAPRANH_WEBHOOK_ALLOWED_NETWORKS)", field="url")
        return parsed, addresses[0]


class WebhookChannel:
    name = "webhook"

    async def enqueue(self, conn: asyncpg.Connection, changes: Sequence[AlertChange],
                      now: datetime) -> None:
        # One array element per change, its units joined by a control character no unit
        # code holds: the units with a webhook are few, the recipients of every change many
        # (one element per recipient cost the notifier ~4 % of its CPU at 1,000 alerts/s).
        await conn.execute(
            """INSERT INTO webhook_deliveries (unit_code, alert_id, kind, reported_at,
                                               next_attempt_at)
               SELECT u.unit_code, c.alert_id, c.kind, c.reported_at, $5
                 FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])
                      AS c (alert_id, kind, reported_at, units)
                CROSS JOIN LATERAL unnest(string_to_array(c.units, $6)) AS u (unit_code)
                 JOIN webhooks w ON w.unit_code = u.unit_code
                ORDER BY c.alert_id""",
            [change.alert_id for change in changes], [change.kind for change in changes],
            [change.reported_at for change in changes],
            [UNIT_SEPARATOR.join(change.units) for change in changes], now, UNIT_SEPARATOR,
        )


UNIT_SEPARATOR = "\x1f"
"""(ASCII's unit separator: no unit code holds a control character)"""


@dataclass(frozen=True)
class WebhookStats:
    unit_code: str
    url: str
    format: WebhookFormat
    pending: int
    delivered: int
    dead: int


class Webhooks:
    """The units' webhook registrations (the API and `giapranh webhooks` both use these)."""

    def __init__(self, db: asyncpg.Connection | asyncpg.Pool,
                 destination: Destination | None = None):
        self._db = db
        self._destination = destination or Destination()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn, conn.transaction():
                yield conn
        else:
            async with self._db.transaction():
                yield self._db

    async def register(self, unit_code: str, url: str, fmt: WebhookFormat, *,
                       actor: Actor | None = None) -> str:
        """Register (or replace) a unit's webhook; returns its new signing secret (shown
        once). A destination that is not public is refused (`Destination`). Audited."""
        await self._destination.vet(url, at_registration=True)
        secret = "whsec_" + secrets.token_urlsafe(32)
        async with self._transaction() as conn:
            await conn.execute(
                """INSERT INTO webhooks (unit_code, url, secret, format) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (unit_code) DO UPDATE SET url = EXCLUDED.url,
                       secret = EXCLUDED.secret, format = EXCLUDED.format, created_at = now()""",
                unit_code, url, secret, fmt)
            await audit.record(conn, actor or Actor.operator(), "webhook.set",
                               subject=unit_code, unit_code=unit_code,
                               detail={"url": url, "format": fmt})
        return secret

    async def of(self, unit_code: str) -> WebhookView | None:
        row = await self._db.fetchrow(
            "SELECT url, format, created_at FROM webhooks WHERE unit_code = $1", unit_code)
        return WebhookView(**dict(row)) if row else None

    async def remove(self, unit_code: str, *, actor: Actor | None = None) -> bool:
        """False if the unit had no webhook. Audited."""
        async with self._transaction() as conn:
            status = await conn.execute("DELETE FROM webhooks WHERE unit_code = $1", unit_code)
            if status == "DELETE 0":
                return False
            # (nothing would post them: dead, so that `giapranh webhooks retry` can send
            # them once the unit has a webhook again)
            await conn.execute(
                "UPDATE webhook_deliveries SET status = 'dead', finished_at = now(), "
                "last_error = 'webhook removed' WHERE unit_code = $1 AND status = 'pending'",
                unit_code)
            await audit.record(conn, actor or Actor.operator(), "webhook.remove",
                               subject=unit_code, unit_code=unit_code)
        return True

    async def stats(self) -> list[WebhookStats]:
        """Every webhook with its delivery counts."""
        rows = await self._db.fetch(
            """SELECT w.unit_code, w.url, w.format,
                      count(*) FILTER (WHERE d.status = 'pending') AS pending,
                      count(*) FILTER (WHERE d.status = 'delivered') AS delivered,
                      count(*) FILTER (WHERE d.status = 'dead') AS dead
                 FROM webhooks w LEFT JOIN webhook_deliveries d USING (unit_code)
                GROUP BY w.unit_code ORDER BY w.unit_code""")
        return [WebhookStats(**dict(row)) for row in rows]

    async def retry_dead(self, unit_code: str | None = None) -> int:
        """Queue dead deliveries (of one unit, or all) again; how many."""
        status = await self._db.execute(
            """UPDATE webhook_deliveries SET status = 'pending', attempts = 0,
                      next_attempt_at = now(), finished_at = NULL
                WHERE status = 'dead' AND ($1::text IS NULL OR unit_code = $1)""", unit_code)
        return int(status.split()[-1])


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


PER_UNIT_IN_FLIGHT = 4
"""Deliveries to one unit's receiver posted at once by one notifier instance: a slow or
hostile receiver holds at most these, never the others' turn."""
PENDING_GAUGE_SECONDS = 5.0
"""How often the pending deliveries are counted (a count of a large backlog costs a scan)."""


class WebhookDispatcher:
    """Posts queued webhook deliveries; safe to run in every notifier instance (rows are
    claimed with SKIP LOCKED and leased, so each attempt happens once).

    Attempts run side by side, `batch` at most and `PER_UNIT_IN_FLIGHT` per unit, each
    bounded as a whole by the timeout (a receiver that trickles its answer a byte at a
    time never times out a read): new deliveries are claimed as soon as a place frees,
    never after the slowest of a round. Each registered unit's oldest due deliveries are
    claimed (an index per unit): a backlog costs a few rows, and deliveries of a unit
    whose webhook was removed take no place."""

    def __init__(self, pool: asyncpg.Pool, render: Renderer, policy: WebhookPolicy,
                 clock: Clock, *, destination: Destination, poll_seconds: float = 0.5,
                 batch: int = 50, client: httpx.AsyncClient | None = None):
        self._pool = pool
        self._destination = destination
        self._render = render
        self._policy = policy
        self._clock = clock
        self._poll = poll_seconds
        self._batch = batch
        self._client = client
        self._in_flight: dict[asyncio.Task[None], tuple[str, int]] = {}
        self._next_count = 0.0
        # (an attempt outlasting its lease would be claimed again and posted twice; its
        # outcome is recorded only under the lease it was claimed with)
        self._lease = max(policy.lease_seconds, 2 * policy.timeout_seconds + 30)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self._policy.timeout_seconds) as client:
            self._client = self._client or client
            try:
                while True:
                    stop_if_cancelled()
                    try:
                        claimed = await self.dispatch_due()
                    except DATABASE_ERRORS as exc:
                        log.warning("webhook dispatch round failed: %r", exc)
                        claimed = 0
                    if claimed == 0 or len(self._in_flight) >= self._batch:
                        # Until a place frees or the next poll, whichever comes first.
                        sleeper = asyncio.ensure_future(asyncio.sleep(self._poll))
                        await asyncio.wait([*self._in_flight, sleeper],
                                           return_when=asyncio.FIRST_COMPLETED)
                        sleeper.cancel()
            finally:
                # Stopping: attempts under way get a few seconds to finish and be recorded
                # (cut short, a delivery its receiver took would be posted again).
                running = list(self._in_flight)
                if running:
                    await asyncio.wait(running, timeout=min(5.0, self._policy.timeout_seconds))
                for task in running:
                    task.cancel()
                if running:
                    await asyncio.gather(*running, return_exceptions=True)

    async def dispatch_due(self) -> int:
        """Claim what is due, as far as there are places, and start posting it; how many
        were claimed."""
        places = self._batch - len(self._in_flight)
        if places <= 0:
            return 0
        per_unit = Counter(unit for unit, _ in self._in_flight.values())
        now = self._clock.now()
        rows = await self._pool.fetch(
            """UPDATE webhook_deliveries d SET next_attempt_at = $2
                 FROM (SELECT c.id, c.next_attempt_at, w.url, w.secret, w.format
                         FROM webhooks w CROSS JOIN LATERAL (
                              SELECT id, next_attempt_at FROM webhook_deliveries x
                               WHERE x.unit_code = w.unit_code AND x.status = 'pending'
                                 AND x.next_attempt_at <= $1 AND x.id <> ALL($6::bigint[])
                               ORDER BY x.next_attempt_at
                               LIMIT greatest(0, $4 - coalesce(
                                   ($5::jsonb ->> w.unit_code)::int, 0))
                                 FOR UPDATE SKIP LOCKED) c
                        ORDER BY c.next_attempt_at LIMIT $3) claimed
                WHERE d.id = claimed.id
            RETURNING d.id, d.unit_code, d.alert_id, d.kind, d.attempts, d.reported_at,
                      d.next_attempt_at AS lease, claimed.url, claimed.secret, claimed.format""",
            now, now + timedelta(seconds=self._lease), places, PER_UNIT_IN_FLIGHT,
            encode_json(dict(per_unit)), [delivery for _, delivery in self._in_flight.values()],
        )
        for row in rows:
            task = asyncio.create_task(self._attempt(row))
            self._in_flight[task] = (row["unit_code"], row["id"])
            task.add_done_callback(self._in_flight.pop)
        if time.monotonic() >= self._next_count:
            self._next_count = time.monotonic() + PENDING_GAUGE_SECONDS
            try:
                metrics.WEBHOOK_PENDING.set(await self._pool.fetchval(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"))
            except DATABASE_ERRORS as exc:
                log.warning("counting the pending webhook deliveries failed: %r", exc)
        return len(rows)

    async def _attempt(self, row: asyncpg.Record) -> None:
        assert self._client is not None
        error: str | None = None
        timeout = self._policy.timeout_seconds
        try:
            async with asyncio.timeout(timeout):  # the whole attempt, not each read
                body = await self._render(row["alert_id"], row["unit_code"], row["kind"],
                                          row["format"])
                content_type = ("application/cap+xml" if row["format"] == "cap"
                                else "application/json")
                # Checked again now, and sent to the very address checked (no DNS
                # rebinding).
                url, address = await self._destination.vet(row["url"], at_registration=False)
                assert address is not None
                target = url.copy_with(host=address)
                extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
                response = await self._client.post(target, content=body, headers={
                    "Host": url.netloc.decode(),
                    "Content-Type": content_type,
                    "User-Agent": "giapranh-notifier",
                    "X-Giapranh-Delivery": str(row["id"]),
                    "X-Giapranh-Event": row["kind"],
                    "X-Giapranh-Signature": sign(row["secret"], int(time.time()), body),
                }, timeout=timeout, extensions=extensions, follow_redirects=False)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except Unprocessable as exc:
            error = f"destination refused: {exc.message}"[:500]
        except TimeoutError:
            error = f"no complete answer within {timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        except Exception as exc:
            log.exception("webhook %s could not be prepared", row["id"])
            error = f"{type(exc).__name__}: {exc}"[:500]
        try:
            await self._record(row, error)
        except DATABASE_ERRORS as exc:  # (its lease runs out and it is claimed again)
            log.warning("webhook delivery %s: its outcome could not be recorded: %r",
                        row["id"], exc)
        except Exception:
            log.exception("webhook delivery %s: its outcome could not be recorded", row["id"])

    async def _settled(self, sql: str, row: asyncpg.Record, attempts: int, value: object,
                       *more: object) -> bool:
        """Record an attempt's outcome under the lease it was claimed with: False if the
        lease ran out and the delivery was claimed again meanwhile (that claim's attempt
        records its own)."""
        status = await self._pool.execute(sql, row["id"], attempts, value, row["lease"], *more)
        if status.endswith(" 0"):
            log.warning("webhook delivery %s outlasted its lease and was claimed again: this "
                        "attempt's outcome is not recorded", row["id"])
            return False
        return True

    async def _record(self, row: asyncpg.Record, error: str | None) -> None:
        now = self._clock.now()
        attempts = row["attempts"] + 1
        if error is None:
            if not await self._settled(
                    "UPDATE webhook_deliveries SET status = 'delivered', attempts = $2, "
                    "finished_at = $3, last_error = NULL WHERE id = $1 AND next_attempt_at = $4",
                    row, attempts, now):
                return
            metrics.DELIVERIES.labels(channel="webhook", result="ok").inc()
            if row["kind"] == "raised" and row["reported_at"] is not None:
                metrics.SIGHTING_TO_DELIVERY.labels(channel="webhook").observe(
                    max(0.0, (now - row["reported_at"]).total_seconds()))
            return
        reason = ("http_status" if error.startswith("HTTP ")
                  else "destination" if error.startswith("destination refused") else "transport")
        metrics.WEBHOOK_FAILURES.labels(reason=reason).inc()
        if attempts >= self._policy.max_attempts:
            if not await self._settled(
                    "UPDATE webhook_deliveries SET status = 'dead', attempts = $2, "
                    "finished_at = $3, last_error = $5 WHERE id = $1 AND next_attempt_at = $4",
                    row, attempts, now, error):
                return
            metrics.DELIVERIES.labels(channel="webhook", result="dead").inc()
            log.error("webhook delivery %s to %s dead after %d attempts: %s",
                      row["id"], row["unit_code"], attempts, error,
                      extra={"alert_id": row["alert_id"]})
            return
        retry_at = now + timedelta(seconds=self._policy.backoff(attempts))
        if not await self._settled(
                "UPDATE webhook_deliveries SET attempts = $2, next_attempt_at = $3, "
                "last_error = $5 WHERE id = $1 AND next_attempt_at = $4",
                row, attempts, retry_at, error):
            return
        metrics.DELIVERIES.labels(channel="webhook", result="failed").inc()
        log.warning("webhook delivery %s to %s failed (attempt %d), retry at %s: %s",
                    row["id"], row["unit_code"], attempts, retry_at.isoformat(), error)
