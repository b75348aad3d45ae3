"""The window of recent reports that late matching checks new entries against.

Like NCIC's delayed inquiry: a new or changed watchlist entry is checked against the
reports of the last days, so a subject sighted yesterday and listed today still raises an
alert (marked late; `hits.late_hits`).

`RecentReports` keeps the reports of the window in memory, oldest first, bounded in count,
as the bytes they arrived as: a hundred thousand decoded reports would be millions of
objects for Python's garbage collector to walk again and again (measured: 12 % of the
stream matcher's time). A check decodes them once per batch of entry changes (~6 µs a
report) and scores each against the entries (no retrieval): about a second for a window
of 100,000 reports.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import Field, TypeAdapter

from services.matcher.hits import Report

_reports = TypeAdapter(Annotated[Report, Field(discriminator="type")])


class RecentReports:
    def __init__(self, window: timedelta, max_reports: int):
        self.window = window
        self._reports: deque[tuple[datetime, bytes]] = deque(maxlen=max_reports)

    def __len__(self) -> int:
        return len(self._reports)

    def add(self, occurred_at: datetime, raw: bytes) -> None:
        """Keep a report (its JSON as received) for late matching."""
        self._reports.append((occurred_at, raw))

    def extend(self, reports: Iterable[tuple[datetime, bytes]]) -> None:
        self._reports.extend(reports)

    def within(self, now: datetime) -> list[Report]:
        """The reports of the window, decoded, oldest first."""
        oldest = now - self.window
        while self._reports and self._reports[0][0] < oldest:
            self._reports.popleft()
        return [_reports.validate_json(raw) for at, raw in list(self._reports) if at >= oldest]
