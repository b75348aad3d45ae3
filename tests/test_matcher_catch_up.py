"""Changes made while no matcher runs are applied in full when one starts, and what the
matcher emitted but the broker dropped is published again from PostgreSQL."""

import asyncio
from datetime import UTC, datetime, timedelta

from giapranh.embedded import free_port
from tests.conftest import MatcherProcess, bearer, eventually
from tests.test_matcher_stream import CONTROL, CONTROL_SIGHTING, alerts_on, list_via_api
from tests.test_pipeline import SIGHTING, matcher_knows

HUNG = {"category": "wanted_person", "full_name": "Nguyễn Văn Hùng",
        "national_id": "089091004217"}


async def test_an_entry_created_and_one_cancelled_while_the_matcher_is_down_get_their_late_hit_and_withdrawal(  # noqa: E501
    env, pool, topics, directory, ingest, notifier
):
    owner, seer = directory["CA-30307"], directory["CA-31212"]
    first = MatcherProcess(env, free_port())
    try:
        await first.wait_ready()
        await list_via_api(ingest, owner, "LX-CONTROL", CONTROL)
        await matcher_knows(first, 1)
        yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        seen = await ingest.post("/v1/sightings", json={**SIGHTING, "occurred_at": yesterday},
                                 headers=bearer(seer))
        await ingest.post("/v1/sightings", json=CONTROL_SIGHTING, headers=bearer(seer))
        [control] = await eventually(lambda: alerts_on(notifier, owner, "LX-CONTROL"),
                                     what="the control alert")
        assert control["status"] == "raised"
    finally:
        first.stop()

    # While no matcher runs: Hùng is listed (he was sighted yesterday), the control
    # subject is cancelled (his alert is open).
    await list_via_api(ingest, owner, "LX-HUNG", HUNG)
    cancel = await ingest.post("/v1/watchlist/LX-CONTROL/cancel", json={"reason": "arrested"},
                               headers=bearer(owner))
    assert cancel.status_code == 200

    async def relayed() -> bool:
        return await pool.fetchval("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL") == 0

    await eventually(relayed, what="the changes to reach the broker")
    await asyncio.sleep(0.5)

    second = MatcherProcess(env, free_port())
    try:
        await second.wait_ready()
        [late] = await eventually(lambda: alerts_on(notifier, owner, "LX-HUNG"), timeout=30,
                                  what="the late hit of the entry listed while down")
        assert late["late"] is True
        assert late["correlation_id"] == seen.json()["event_id"]

        async def withdrawn() -> bool:
            [again] = await alerts_on(notifier, owner, "LX-CONTROL")
            return again["status"] == "withdrawn"

        await eventually(withdrawn, timeout=30, what="the cancelled entry's alert withdrawn")
        # Once, not again on the topic's replay: restart and check nothing new appears.
        second.stop()
        third = MatcherProcess(env, free_port())
        try:
            await third.wait_ready()
            await ingest.post("/v1/sightings", json={**SIGHTING, "event_id":
                              "6b0e6a52-3d0c-4a8e-9d43-0f6f7f6c2a12"}, headers=bearer(seer))
            await eventually(lambda: _count(notifier, owner, "LX-HUNG", 2),
                             what="a fresh sighting's alert after the restart")
            hung = await alerts_on(notifier, owner, "LX-HUNG")
            assert sorted(a["late"] for a in hung) == [False, True]
        finally:
            third.stop()
    finally:
        second.stop()


async def _count(notifier, key, entry_id, n):
    return len(await alerts_on(notifier, key, entry_id)) >= n


async def test_a_hit_the_broker_dropped_is_published_again_from_the_matchers_record(
    env, pool, topics, directory, ingest, notifier
):
    """The notifier never receives a hit (the broker acknowledged it and dropped it): the
    matcher finds no alert for it after the grace period and publishes it again."""
    owner, seer = directory["CA-30307"], directory["CA-31212"]
    matcher = MatcherProcess(env, free_port(), GIAPRANH_MATCHER_REDRIVE_AFTER_SECONDS="2",
                             GIAPRANH_MATCHER_RECONCILE_SECONDS="0.5")
    try:
        await matcher.wait_ready()
        await list_via_api(ingest, owner, "LX-HUNG", HUNG)
        await matcher_knows(matcher, 1)
        # A hit recorded as emitted, whose message never reached the notifier: as if the
        # broker dropped it. (Recorded by hand; the report is real.)
        accepted = await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(seer))
        event_id = accepted.json()["event_id"]
        [first] = await eventually(lambda: alerts_on(notifier, owner, "LX-HUNG"),
                                   what="the first alert")
        await pool.execute("DELETE FROM deliveries WHERE alert_id = $1::uuid",
                           first["alert_id"])
        await pool.execute("DELETE FROM alert_history WHERE alert_id = $1::uuid",
                           first["alert_id"])
        await pool.execute("DELETE FROM alerts WHERE alert_id = $1::uuid", first["alert_id"])
        await pool.execute("UPDATE matcher_hits SET resolved_at = NULL, "
                           "emitted_at = now() - interval '1 minute'")
        [again] = await eventually(lambda: alerts_on(notifier, owner, "LX-HUNG"), timeout=30,
                                   what="the hit published again")
        assert again["hit_id"] == first["hit_id"]
        assert again["correlation_id"] == event_id
        assert await pool.fetchval("SELECT redriven FROM matcher_hits") == 1
    finally:
        matcher.stop()


async def test_a_report_published_but_never_matched_is_published_again_and_alerts(
    env, pool, topics, directory, notifier, matcher
):
    """Ingest published a sighting the broker then lost (marked dispatched, never on the
    topic): with no verdict after the grace period it is published again, and alerts;
    meanwhile /readyz says so."""
    from services.ingest.app import create_app
    from services.ingest.settings import IngestSettings
    from services.ingest.store import IngestStore
    from shared.events import Place, SightingReported, Subject
    from shared.topics import SIGHTINGS
    from tests.conftest import _serve

    owner = directory["CA-30307"]
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2,
                            reconcile_after_seconds=1, reconcile_interval_seconds=0.2,
                            reconcile_alarm_seconds=1)
    store = IngestStore(pool, settings)
    await store.upsert_watchlist_entry(
        _entry("LX-HUNG", "CA-30307"), unit_code="CA-30307")
    lost = SightingReported(occurred_at=datetime.now(UTC), producer_unit="CA-31212",
                            subject=Subject(national_id="089091004217"),
                            place=Place(unit_code="CA-31212"))
    await store.record(lost, spec=SIGHTINGS, fingerprint=b"x")
    await pool.execute("UPDATE outbox SET dispatched_at = now() - interval '5 seconds' "
                       "WHERE event_id = $1", lost.event_id)
    async for ingest in _serve(create_app(settings)):
        [alert] = await eventually(lambda: alerts_on(notifier, owner, "LX-HUNG"), timeout=30,
                                   what="the lost sighting's alert")
        assert alert["correlation_id"] == str(lost.event_id)
        assert await pool.fetchval("SELECT redriven FROM outbox WHERE event_id = $1",
                                   lost.event_id) == 1

        async def verified() -> bool:
            return await pool.fetchval(
                "SELECT verified_at IS NOT NULL FROM outbox WHERE event_id = $1", lost.event_id)

        await eventually(verified, what="the sighting verified")
        ready = await ingest.get("/readyz")
        assert ready.json()["checks"]["verdicts"] is True


def _entry(entry_id, owner):
    from shared.events import WatchlistEntry

    return WatchlistEntry(entry_id=entry_id, owner_unit=owner, **HUNG)


async def test_readiness_fails_while_a_published_report_waits_for_its_verdict(
    env, pool, topics, directory
):
    from services.ingest.app import create_app
    from services.ingest.settings import IngestSettings
    from tests.conftest import _serve

    settings = env.settings(IngestSettings, relay_idle_seconds=0.2, reconcile_after_seconds=1,
                            reconcile_interval_seconds=0.2, reconcile_alarm_seconds=2,
                            reconcile_max_redrives=1)
    async for ingest in _serve(create_app(settings)):  # and no matcher at all
        await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(directory["CA-31212"]))

        async def alarmed() -> bool:
            response = await ingest.get("/readyz")
            return response.status_code == 503 and response.json()["checks"]["verdicts"] is False

        await eventually(alarmed, timeout=20, what="/readyz to report the missing verdict")
        metrics = (await ingest.get("/metrics")).text
        assert "giapranh_reports_without_verdict 1.0" in metrics
