"""The late-matching window keeps reports as received and decodes them on demand."""

from datetime import UTC, datetime, timedelta

from services.matcher.late import RecentReports
from shared.events import (
    IncidentReported,
    Place,
    SightingReported,
    Subject,
    encode_event,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def sighting(hours_ago: float) -> SightingReported:
    return SightingReported(occurred_at=NOW - timedelta(hours=hours_ago),
                            subject=Subject(plate="65G1-45678"), place=Place(unit_code="CA-31212"))


def test_reports_come_back_decoded_in_order_and_old_ones_leave_the_window():
    recent = RecentReports(timedelta(days=5), max_reports=10)
    old, fresh = sighting(24 * 6), sighting(2)
    incident = IncidentReported(occurred_at=NOW - timedelta(hours=1), incident_type="assault",
                                place=Place(unit_code="CA-30307"))
    for report in (old, fresh, incident):
        recent.add(report.occurred_at, encode_event(report))
    assert recent.within(NOW) == [fresh, incident]
    assert len(recent) == 2  # the six-day-old one is gone for good


def test_the_window_is_bounded_in_count():
    recent = RecentReports(timedelta(days=5), max_reports=3)
    reports = [sighting(hours) for hours in (5, 4, 3, 2, 1)]
    recent.extend((r.occurred_at, encode_event(r)) for r in reports)
    assert recent.within(NOW) == reports[-3:]
