"""Every published report and watchlist change reaches the matcher, or someone hears of it.

The matcher records a verdict for each report it matched and the newest version of each
entry whose change it processed (its read-only views `matcher_report_verdicts` and
`matcher_processed_entries`). The reconciler checks every outbox row published more than
`reconcile_after_seconds` ago against them:
- verified: marked so, and never looked at again;
- not verified: published again from PostgreSQL (the relay sends it with its original
  event id, so a report that was merely slow is matched twice and its hits, with the same
  hit ids, make no second alert), with the waits doubling each time, up to
  `reconcile_max_redrives` times;
- still not verified after that: left alone and counted as stuck: the metrics
  (`giapranh_reports_without_verdict`, `..._oldest_age_seconds`, `giapranh_reports_stuck`)
  and `/readyz` show it until it is verified or an operator replays it.

Safe in several ingest instances at once: rows are claimed with SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.ingest.settings import IngestSettings
from services.ingest.store import OUTBOX_CHANNEL
from shared import metrics
from shared.db import DATABASE_ERRORS
from shared.events import utcnow
from shared.kafka import stop_if_cancelled

log = logging.getLogger(__name__)

ROUND_LIMIT = 20_000
STUCK_PASS_EVERY = 12
"""Rows past the redrive limit are still checked (they heal when the matcher gets to
them), but only every this many rounds."""

_DONE = """CASE WHEN e.type IN ('SightingReported', 'IncidentReported') THEN EXISTS (
                    SELECT 1 FROM matcher_report_verdicts v WHERE v.event_id = o.event_id)
                WHEN e.type = 'WatchlistEntryUpserted' THEN EXISTS (
                    SELECT 1 FROM matcher_processed_entries m
                     WHERE m.entry_id = e.payload -> 'entry' ->> 'entry_id'
                       AND m.version >= (e.payload -> 'entry' ->> 'version')::int)
                WHEN e.type = 'WatchlistEntryCancelled' THEN EXISTS (
                    SELECT 1 FROM matcher_processed_entries m
                     WHERE m.entry_id = e.payload ->> 'entry_id'
                       AND m.version >= (e.payload ->> 'version')::int)
                ELSE TRUE END"""
"""Whether the matcher has done with outbox row `o` of event `e`."""

_CHECK = f"""
    SELECT o.id, o.redriven, o.dispatched_at, {_DONE} AS done
      FROM outbox o JOIN events e USING (event_id)
     WHERE o.verified_at IS NULL AND o.dispatched_at IS NOT NULL
       AND o.dispatched_at < $1 AND (o.redriven < $2) = $3
     ORDER BY o.dispatched_at LIMIT $4
       FOR UPDATE OF o SKIP LOCKED"""


async def redrive_unconfirmed(pool: asyncpg.Pool) -> int:
    """The broker lost its log: queue every published row the matcher has not confirmed
    yet for publishing again (those it confirmed are marked verified instead)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"""SELECT o.id, {_DONE} AS done FROM outbox o JOIN events e USING (event_id)
                 WHERE o.verified_at IS NULL AND o.dispatched_at IS NOT NULL
                   FOR UPDATE OF o SKIP LOCKED""")
        confirmed = [row["id"] for row in rows if row["done"]]
        lost = [row["id"] for row in rows if not row["done"]]
        if confirmed:
            await conn.execute("UPDATE outbox SET verified_at = now() WHERE id = ANY($1)",
                               confirmed)
        if lost:
            await conn.execute("UPDATE outbox SET dispatched_at = NULL WHERE id = ANY($1)",
                               lost)
            await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return len(lost)


@dataclass(frozen=True)
class Backlog:
    """Published rows with no verdict after the grace period."""

    waiting: int
    stuck: int
    oldest: datetime | None

    def oldest_age(self, now: datetime) -> float:
        return max(0.0, (now - self.oldest).total_seconds()) if self.oldest else 0.0


@dataclass(frozen=True)
class Round:
    verified: int
    redriven: int
    backlog: Backlog


class Reconciler:
    def __init__(self, pool: asyncpg.Pool, settings: IngestSettings):
        self._pool = pool
        self._settings = settings
        self._rounds = 0
        self.backlog = Backlog(0, 0, None)

    def healthy(self) -> bool:
        """No report has waited for its verdict longer than `reconcile_alarm_seconds`, and
        none is stuck (`/readyz`)."""
        return (self.backlog.stuck == 0 and self.backlog.oldest_age(utcnow())
                <= self._settings.reconcile_alarm_seconds)

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            full = False
            try:
                result = await self.reconcile_once()
                full = result.verified + result.redriven >= ROUND_LIMIT
            except DATABASE_ERRORS as exc:
                log.warning("reconciliation round failed, retrying: %r", exc)
            except Exception:  # a bug must not end reconciliation for good: say it, go on
                log.exception("reconciliation round failed")
            if not full:
                await asyncio.sleep(self._settings.reconcile_interval_seconds)

    async def reconcile_once(self) -> Round:
        settings = self._settings
        now = utcnow()
        grace = settings.reconcile_after_seconds
        self._rounds += 1
        stuck_pass = self._rounds % STUCK_PASS_EVERY == 0
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CHECK, now - _seconds(grace),
                                    settings.reconcile_max_redrives, not stuck_pass,
                                    ROUND_LIMIT)
            verified = [row["id"] for row in rows if row["done"]]
            # Waits double with each redrive: a matcher that is merely slow or down is not
            # flooded with copies; a report the broker lost goes out again within seconds.
            due = [row["id"] for row in rows if not row["done"] and not stuck_pass
                   and row["dispatched_at"] <= now - _seconds(grace * 2 ** row["redriven"])]
            if verified:
                await conn.execute("UPDATE outbox SET verified_at = $2 WHERE id = ANY($1)",
                                   verified, now)
            if due:
                await conn.execute(
                    "UPDATE outbox SET dispatched_at = NULL, redriven = redriven + 1 "
                    "WHERE id = ANY($1)", due)
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            backlog = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE redriven < $2) AS waiting,
                          count(*) FILTER (WHERE redriven >= $2) AS stuck,
                          min(dispatched_at) AS oldest
                     FROM outbox WHERE verified_at IS NULL AND dispatched_at IS NOT NULL
                      AND dispatched_at < $1""",
                now - _seconds(grace), settings.reconcile_max_redrives)
        self.backlog = Backlog(backlog["waiting"], backlog["stuck"], backlog["oldest"])
        if due:
            metrics.OUTBOX_REDRIVEN.labels(reason="no_verdict").inc(len(due))
            log.warning("%d published event(s) had no matcher verdict after %g s: "
                        "publishing them again", len(due), grace)
        if self.backlog.stuck:
            log.error("%d published event(s) still have no matcher verdict after %d "
                      "attempts; see `giapranh replay`", self.backlog.stuck,
                      settings.reconcile_max_redrives)
        metrics.REPORTS_WITHOUT_VERDICT.set(self.backlog.waiting + self.backlog.stuck)
        metrics.REPORTS_STUCK.set(self.backlog.stuck)
        metrics.REPORTS_WITHOUT_VERDICT_AGE.set(self.backlog.oldest_age(now))
        return Round(len(verified), len(due), self.backlog)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


async def replay(pool: asyncpg.Pool, since: datetime, until: datetime | None = None,
                 types: list[str] | None = None) -> int:
    """Publish again, from PostgreSQL, every event accepted in [since, until) (of these
    event types, or all): `giapranh replay`. Consumers are idempotent, so a replay is
    harmless; the relay of a running ingest does the publishing."""
    status = await pool.execute(
        """UPDATE outbox o SET dispatched_at = NULL, verified_at = NULL
             FROM events e
            WHERE e.event_id = o.event_id AND o.created_at >= $1
              AND ($2::timestamptz IS NULL OR o.created_at < $2)
              AND ($3::text[] IS NULL OR e.type = ANY($3))""", since, until, types)
    await pool.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return int(status.split()[-1])


async def replay_pending(pool: asyncpg.Pool, since: datetime,
                         until: datetime | None = None) -> int:
    """Events accepted in [since, until) not published (again) yet."""
    return await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL AND created_at >= $1 "
        "AND ($2::timestamptz IS NULL OR created_at < $2)", since, until)


async def unpublished(pool: asyncpg.Pool) -> int:
    """Accepted events not published (again) yet."""
    return await pool.fetchval("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
