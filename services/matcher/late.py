"""Late matching, like NCIC's delayed inquiry: a new or changed watchlist entry is checked
against the reports of the last days, so a subject sighted yesterday and listed today
still raises an alert (marked late).

`RecentReports` keeps the reports of the window in memory, oldest first, bounded in count.
A check scores each kept report against the one entry (no retrieval): a few microseconds a
report, so a window of 100,000 reports costs well under a second per entry change.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from services.matcher.engine import Match, MatchingEngine
from shared.events import HitFound, IncidentReported, SightingReported, Subject

Report = SightingReported | IncidentReported
HitBuilder = Callable[[Report, Subject, Match, bool], HitFound]


def report_subjects(report: Report) -> list[Subject]:
    if isinstance(report, SightingReported):
        return [report.subject]
    vehicles = [Subject(plate=v.plate, description=v.description) for v in report.vehicles]
    return [*report.suspects, *vehicles]


class RecentReports:
    def __init__(self, window: timedelta, max_reports: int):
        self.window = window
        self._reports: deque[Report] = deque(maxlen=max_reports)

    def __len__(self) -> int:
        return len(self._reports)

    def add(self, report: Report) -> None:
        self._reports.append(report)

    def extend(self, reports: Iterable[Report]) -> None:
        self._reports.extend(reports)

    def within(self, now: datetime) -> list[Report]:
        oldest = now - self.window
        while self._reports and self._reports[0].occurred_at < oldest:
            self._reports.popleft()
        return [r for r in self._reports if r.occurred_at >= oldest]


def late_hits(engine: MatchingEngine, entry_id: str, reports: Iterable[Report],
              build: HitBuilder) -> list[HitFound]:
    """Hits of `entry_id` among `reports`, built by `build(report, subject, match, late)`."""
    found = []
    for report in reports:
        for subject in report_subjects(report):
            match = engine.match_entry(subject, entry_id, at=report.occurred_at)
            if match is not None:
                found.append(build(report, subject, match, True))
                break
    return found
