"""Hits: what a match of a report against a listed entry becomes (pure, no I/O).

Used alike by the report stream (live hits) and by late matching (new or changed entries
checked against recent reports), so both name a hit the same way and a repeat is dropped
downstream by its id.
"""

from __future__ import annotations

import logging
import time
from uuid import NAMESPACE_URL, UUID, uuid5

from services.matcher.engine import COPIES_PER_OWNER, Match, MatchingEngine
from shared import metrics
from shared.events import (
    HitFound,
    IncidentReported,
    SightingReported,
    Subject,
    WatchlistEntry,
    utcnow,
)

log = logging.getLogger(__name__)
Report = SightingReported | IncidentReported
HIT_NAMESPACE = uuid5(NAMESPACE_URL, "https://giapranh.example/hits")


def hit_id(source_event_id: UUID, entry_id: str) -> UUID:
    """One id per report and entry, whatever the entry's version: a redelivered report, or
    an updated entry re-checked by late matching, repeats the id and downstream drops it."""
    return uuid5(HIT_NAMESPACE, f"{source_event_id}:{entry_id}")


def report_subjects(report: Report) -> list[Subject]:
    """Who a report is about: a sighting's subject, an incident's suspects and vehicles."""
    if isinstance(report, SightingReported):
        return [report.subject]
    vehicles = [Subject(plate=v.plate, description=v.description) for v in report.vehicles]
    return [*report.suspects, *vehicles]


def build_hit(report: Report, subject: Subject, match: Match, *, late: bool) -> HitFound:
    return HitFound(
        occurred_at=utcnow(),
        correlation_id=report.correlation(),
        hit_id=hit_id(report.event_id, match.entry.entry_id),
        entry=match.entry,
        source_event_id=report.event_id,
        source_type=report.type,
        subject=subject,
        place=report.place,
        seen_at=report.occurred_at,
        reported_at=report.recorded_at,
        score=match.score,
        reasons=match.reasons,
        late=late,
        reported_by=report.producer_unit,
    )


def own_hot_list(report: Report, entry: WatchlistEntry) -> bool:
    """An incident's own suspects and vehicles, listed from it: not a hit on itself."""
    return entry.incident_id is not None and entry.incident_id == report.event_id


HITS_PER_SUBJECT_AND_OWNER = COPIES_PER_OWNER
"""Hits one reported subject may raise on copies (entries alike in every identifying
field) of one listing unit. A unit may list only a few look-alikes (ingest refuses more);
should more exist (a limit raised, old data), a few alert and the rest are counted and
logged, so that copies cannot bury the desks."""


_last_crowd_log = 0.0


def _crowded(engine: MatchingEngine, report: Report) -> None:
    """Count the crowds (index buckets past the engine's size) a report met; log it, at
    most once a minute, since a flood of look-alikes would otherwise flood the log."""
    global _last_crowd_log
    metrics.OVERSIZED_BUCKETS.inc(len(engine.last_crowds))
    now = time.monotonic()
    if now - _last_crowd_log >= 60:
        _last_crowd_log = now
        log.warning("report %s met %d oversized index bucket(s) of %s entries (look-alikes "
                    "listed many times?); %d copies left out", report.event_id,
                    len(engine.last_crowds), ", ".join(map(str, engine.last_crowds)),
                    engine.last_omitted)


def capped(hits: list[HitFound]) -> tuple[list[HitFound], int]:
    """For late hits (live ones come capped from the engine's `match`; late matching of a
    few entries scores each against every report with `match_entry`, past that cap): at most `HITS_PER_SUBJECT_AND_OWNER` hits per report, subject and copies of one
    listing unit (entries alike in every identifying field), the best-scoring first; and
    how many were left out."""
    kept: list[HitFound] = []
    seen: dict[tuple[object, ...], int] = {}
    left_out = 0
    for hit in sorted(hits, key=lambda h: (-h.score, h.entry.entry_id)):
        entry = hit.entry
        alike = (entry.full_name, entry.aliases, entry.birth_year, entry.birth_date,
                 entry.national_id, entry.plates, entry.valid_until)
        key = (hit.source_event_id, entry.owner_unit, hit.subject.model_dump_json(), alike)
        if seen.get(key, 0) >= HITS_PER_SUBJECT_AND_OWNER:
            left_out += 1
            continue
        seen[key] = seen.get(key, 0) + 1
        kept.append(hit)
    return kept, left_out


def hits_for(engine: MatchingEngine, report: Report) -> list[HitFound]:
    """The live hits of a report: one per listed entry, however many of its subjects match
    (the engine takes no more than `COPIES_PER_OWNER` copies per subject and listing
    unit; what it left out is counted here)."""
    hits: dict[str, HitFound] = {}
    for subject in report_subjects(report):
        started = time.perf_counter()
        matches = engine.match(subject, at=report.occurred_at)
        metrics.MATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.MATCH_CANDIDATES.observe(engine.last_candidates)
        if engine.last_omitted:
            metrics.HITS_CAPPED.labels(mode="live").inc(engine.last_omitted)
        if engine.last_crowds:
            _crowded(engine, report)
        for match in matches:
            if match.entry.entry_id not in hits and not own_hot_list(report, match.entry):
                hits[match.entry.entry_id] = build_hit(report, subject, match, late=False)
    return list(hits.values())


RETRIEVE_LATE_FROM = 20
"""From this many entries changed at once, late matching retrieves instead of scoring
each entry against every report: one `match` per report instead of one score per report
and entry, so a bulk import of a million entries costs as much as a dozen."""


def late_hits_of(engine: MatchingEngine, entry_ids: list[str],
                 reports: list[Report]) -> list[HitFound]:
    """The hits of these entries among earlier `reports` (NCIC's delayed inquiry)."""
    if len(entry_ids) < RETRIEVE_LATE_FROM:
        return [hit for entry_id in entry_ids for hit in late_hits(engine, entry_id, reports)]
    wanted = set(entry_ids)
    found: dict[tuple[UUID, str], HitFound] = {}
    for report in reports:
        for subject in report_subjects(report):
            for match in engine.match(subject, at=report.occurred_at):
                key = (report.event_id, match.entry.entry_id)
                if (match.entry.entry_id in wanted and key not in found
                        and not own_hot_list(report, match.entry)):
                    found[key] = build_hit(report, subject, match, late=True)
    return list(found.values())


def late_hits(engine: MatchingEngine, entry_id: str, reports: list[Report]) -> list[HitFound]:
    """The hits of `entry_id` among earlier `reports` (NCIC's delayed inquiry)."""
    found = []
    for report in reports:
        for subject in report_subjects(report):
            match = engine.match_entry(subject, entry_id, at=report.occurred_at)
            if match is not None and not own_hot_list(report, match.entry):
                found.append(build_hit(report, subject, match, late=True))
                break
    return found
