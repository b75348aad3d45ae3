"""The chaos run in small: every expected alert exists exactly once, with its deliveries,
after each service is killed with SIGKILL and the broker restarted twice (for less and for
longer than the producers' request timeout). The services run as processes on their own
embedded stack (`giapranh.chaos`); `giapranh chaos` runs the same with 10,000 sightings."""

import pytest

from giapranh.chaos import ChaosOptions, render, run


@pytest.mark.timeout(300)
async def test_no_alert_is_lost_or_duplicated_through_kills_and_broker_restarts(tmp_path):
    options = ChaosOptions(sightings=1000, rate=50, hit_ratio=0.5, service_outage=3,
                           short_broker_outage=2, long_broker_outage=6, request_timeout=4,
                           settle_timeout=150, grace=5)
    report = await run(options, tmp_path)
    text = render(report)
    assert [fault.target for fault, _, _ in sorted(report.faults, key=lambda f: f[1])] == [
        "ingest", "matcher", "notifier", "broker", "broker"], text
    assert report.sent == report.accepted == 1000, text
    assert report.expected == 500, text
    assert (report.found, report.missing, report.duplicates) == (500, 0, 0), text
    assert report.without_deliveries == 0 and report.unpublished == 0, text
