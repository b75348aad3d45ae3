"""The matcher makes sure what it emitted arrived, from its own record in PostgreSQL.

- **Hits that became no alert.** Every hit is recorded (`matcher_hits`) once the broker
  acknowledged it. A hit with no alert after `matcher_redrive_after_seconds` (the broker
  dropped it, or lost its log before the notifier read it) is rebuilt from the report in
  ingest's record and the current watchlist, and published again (same hit id: the
  notifier makes at most one alert), up to `matcher_max_redrives` times; then it counts as
  stuck (`giapranh_hits_stuck`). A hit whose entry no longer matches (cancelled, changed)
  is settled without an alert. When a stream notices the hits topic lost its log, every
  unresolved hit is published again at once.
- **Withdrawals that withdrew nothing.** A cancelled entry whose alerts are still open
  after the grace period has its `HitsWithdrawn` published again.
- **Changes made while no matcher ran** (`startup_changes`): entries created or changed
  meanwhile get their late check, entries cancelled meanwhile their withdrawal.

Several workers may run this at once: one holds a PostgreSQL advisory lock per round.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from services.matcher.engine import MatchingEngine
from services.matcher.hits import Report, build_hit, report_subjects
from services.matcher.ledger import RECONCILE_LOCK_ID, Ledger
from shared import metrics
from shared.events import HitFound, HitsWithdrawn, WatchlistEntry, utcnow
from shared.topics import HITS, TopicSpec

log = logging.getLogger(__name__)

ROUND_LIMIT = 10_000
Publish = Callable[[list[tuple[TopicSpec, Any]]], Awaitable[None]]
WITHDRAWAL_LOOKBACK = timedelta(days=7)
_reports: TypeAdapter[Report] = TypeAdapter(Annotated[Report, Field(discriminator="type")])


@dataclass(frozen=True)
class Policy:
    redrive_after: timedelta
    max_redrives: int


class HitReconciler:
    def __init__(self, engine: MatchingEngine, ledger: Ledger, policy: Policy):
        self._engine = engine
        self._ledger = ledger
        self._policy = policy
        self._withdrawals_sent: dict[str, int] = {}

    async def round(self, publish: Publish, *, everything: bool = False) -> bool:
        """One round: publish again what never arrived (a hit counts as published again
        only once `publish` returned); whether more is waiting (a full round). With
        `everything`, every unresolved hit is checked at once (the hits topic lost its
        log), not only those past the grace period."""
        now = utcnow()
        grace = self._policy.redrive_after
        again: list[tuple[TopicSpec, Any]] = []
        async with self._ledger.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                       RECONCILE_LOCK_ID):
                return False  # another worker is reconciling
            pending = await self._ledger.pending_hits(
                conn, now if everything else now - grace, ROUND_LIMIT)
            settled, rebuilt = [], []
            for hit in pending:
                if hit.delivered:
                    settled.append(hit.hit_id)
                    continue
                if hit.redriven >= self._policy.max_redrives and not everything:
                    continue  # stuck: counted below, checked again next round
                found = self._rebuild(hit.report_json, hit.entry_id, hit.late)
                if found is None:
                    log.info("hit %s: its entry %s no longer matches the report; settled "
                             "without an alert", hit.hit_id, hit.entry_id)
                    settled.append(hit.hit_id)
                    continue
                rebuilt.append(hit.hit_id)
                again.append((HITS, found))
            if settled:
                await self._ledger.resolve(conn, settled)
            if rebuilt:
                await publish(again)  # counted only once the broker acknowledged them
                await self._ledger.redriven(conn, rebuilt)
        if again:
            metrics.HITS_REDRIVEN.labels(reason="log_lost" if everything else "no_alert").inc(
                len(again))
            log.warning("%d hit(s) had no alert: published them again", len(again))
        withdrawals = await self._withdrawals(now)
        if withdrawals:
            await publish(withdrawals)
        waiting, stuck = await self._ledger.undelivered(now - grace, self._policy.max_redrives)
        metrics.HITS_UNDELIVERED.set(waiting + stuck)
        metrics.HITS_STUCK.set(stuck)
        if stuck:
            log.error("%d hit(s) still have no alert after %d attempts", stuck,
                      self._policy.max_redrives)
        return len(pending) >= ROUND_LIMIT

    def _rebuild(self, report_json: str | None, entry_id: str, late: bool) -> HitFound | None:
        if report_json is None:
            return None
        report = _reports.validate_json(report_json)
        for subject in report_subjects(report):
            match = self._engine.match_entry(subject, entry_id, at=report.occurred_at)
            if match is not None:
                return build_hit(report, subject, match, late=late)
        return None

    async def _withdrawals(self, now: Any) -> list[tuple[TopicSpec, Any]]:
        open_ = await self._ledger.open_after_cancel(now - self._policy.redrive_after,
                                                     now - WITHDRAWAL_LOOKBACK)
        again: list[tuple[TopicSpec, Any]] = []
        for entry in open_:
            sent = self._withdrawals_sent.get(entry.entry_id, 0)
            if sent >= self._policy.max_redrives:
                log.error("entry %s was cancelled but its alerts stay open after %d "
                          "withdrawals", entry.entry_id, sent)
                continue
            self._withdrawals_sent[entry.entry_id] = sent + 1
            again.append((HITS, HitsWithdrawn(
                occurred_at=now, entry_id=entry.entry_id, owner_unit=entry.owner_unit,
                version=entry.version, reason=entry.reason)))
        if again:
            metrics.WITHDRAWALS_REDRIVEN.inc(len(again))
            log.warning("%d cancelled entr(ies) still had open alerts: withdrawing again",
                        len(again))
        return again


async def startup_changes(ledger: Ledger) -> tuple[list[WatchlistEntry], list[HitsWithdrawn],
                                                    dict[str, int]]:
    """What changed while no matcher ran: (entries to check late, withdrawals to send, the
    versions that settles)."""
    entries, withdrawals, versions = [], [], {}
    now = utcnow()
    for change in await ledger.unprocessed_entries():
        versions[change.entry_id] = change.version
        if change.cancelled:
            withdrawals.append(HitsWithdrawn(
                occurred_at=now, entry_id=change.entry_id, owner_unit=change.owner_unit,
                version=change.version, reason=change.cancel_reason or "cancelled"))
        else:
            entries.append(WatchlistEntry.model_validate_json(change.entry_json))
    return entries, withdrawals, versions

