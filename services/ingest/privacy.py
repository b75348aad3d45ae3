"""Privacy: a sighting that matched nothing is kept only for a retention period.

After `GIAPRANH_SIGHTING_RETENTION_DAYS` (by when it happened), a sighting that raised no
alert loses its subject (name, id number, birth date, plate, description): the event keeps
who reported it, where and when, and is marked `redacted_at`; its outbox row, which holds
the published copy, is deleted (so `giapranh replay` cannot publish it again). Sightings that
raised an alert, incidents, watchlist entries, alerts and the audit log are kept. An event
the relay has not published yet is left alone (it is a fault to look at, not to erase).

Ingest runs it every `GIAPRANH_PURGE_INTERVAL_SECONDS`; `giapranh purge` runs it at once.
The broker holds sightings for its own retention (set the report topics' `retention.ms`
below this period in production).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from shared import metrics
from shared.db import DATABASE_ERRORS
from shared.events import utcnow
from shared.kafka import stop_if_cancelled

log = logging.getLogger("giapranh.ingest.privacy")

_DUE = """
    FROM events e
   WHERE e.type = 'SightingReported' AND e.redacted_at IS NULL AND e.occurred_at < $1
     AND NOT EXISTS (SELECT 1 FROM notifier_report_alerts a WHERE a.source_event_id = e.event_id)
     AND NOT EXISTS (SELECT 1 FROM outbox o
                      WHERE o.event_id = e.event_id AND o.dispatched_at IS NULL)"""


async def due(pool: asyncpg.Pool, before: datetime) -> int:
    """How many sightings a purge of those that happened before `before` would redact."""
    return await pool.fetchval(f"SELECT count(*) {_DUE}", before)


async def purge(pool: asyncpg.Pool, before: datetime, *, batch: int = 1000,
                progress: Callable[[int], None] | None = None) -> int:
    """Redact unmatched sightings that happened before `before`, `batch` per transaction;
    returns how many."""
    done = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            ids = [row["event_id"] for row in await conn.fetch(
                f"SELECT e.event_id {_DUE} ORDER BY e.occurred_at LIMIT $2 "
                "FOR UPDATE OF e SKIP LOCKED", before, batch)]
            if not ids:
                return done
            await conn.execute(
                """UPDATE events SET redacted_at = now(),
                          payload = (payload - 'subject') || '{"subject": {"redacted": true}}'
                    WHERE event_id = ANY($1::uuid[])""", ids)
            await conn.execute("DELETE FROM outbox WHERE event_id = ANY($1::uuid[])", ids)
        done += len(ids)
        metrics.SIGHTINGS_PURGED.inc(len(ids))
        if progress is not None:
            progress(done)


async def run_purges(pool: asyncpg.Pool, retention_days: float, interval: float) -> None:
    """Purge now and then every `interval` seconds (ingest's background task)."""
    while True:
        stop_if_cancelled()
        try:
            count = await purge(pool, utcnow() - timedelta(days=retention_days))
            if count:
                log.info("redacted %d unmatched sighting(s) older than %g days",
                         count, retention_days)
        except DATABASE_ERRORS as exc:
            log.warning("purge of old sightings failed, trying again later: %s", exc)
        await asyncio.sleep(interval)
