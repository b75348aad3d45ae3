"""The stream matcher through the real broker: cancellation, withdrawal and late hits."""

from datetime import UTC, datetime, timedelta

from tests.conftest import bearer, eventually
from tests.test_pipeline import SIGHTING, alerts, matcher_knows

CONTROL = {"category": "wanted_person", "full_name": "Lê Minh Tuấn", "birth_year": 1988,
           "national_id": "074088004455"}
CONTROL_SIGHTING = {**SIGHTING, "subject": {"national_id": "074088004455"}}


async def list_via_api(ingest, key, entry_id, body):
    response = await ingest.put(f"/v1/watchlist/{entry_id}", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text


async def alerts_on(notifier, key, entry_id):
    return [a for a in await alerts(notifier, key) if a["entry"]["entry_id"] == entry_id]


async def test_a_cancelled_entry_withdraws_its_alerts_and_stops_matching(
    directory, ingest, notifier, matcher
):
    owner, seer = directory["CA-30307"], directory["CA-31212"]
    await list_via_api(ingest, owner, "LX-77", {"category": "wanted_person",
                       "full_name": "Nguyễn Văn Hùng", "national_id": "089091004217"})
    await list_via_api(ingest, owner, "LX-CONTROL", CONTROL)
    await matcher_knows(matcher, 2)
    await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(seer))
    [alert] = await eventually(lambda: alerts_on(notifier, owner, "LX-77"), what="the alert")
    assert alert["status"] == "raised"

    cancel = await ingest.post("/v1/watchlist/LX-77/cancel", json={"reason": "arrested"},
                               headers=bearer(owner))
    assert cancel.status_code == 200

    async def withdrawn():
        [again] = await alerts_on(notifier, owner, "LX-77")
        return again["status"] == "withdrawn"

    await eventually(withdrawn, what="the open alert to be withdrawn")
    # Sighted again, then a control sighting from the same unit (same partition, later):
    await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(seer))
    await ingest.post("/v1/sightings", json=CONTROL_SIGHTING, headers=bearer(seer))
    await eventually(lambda: alerts_on(notifier, owner, "LX-CONTROL"), what="the control alert")
    assert len(await alerts_on(notifier, owner, "LX-77")) == 1  # nothing new after cancel


async def test_a_new_entry_raises_a_late_hit_for_yesterdays_sighting(
    directory, ingest, notifier, matcher
):
    owner, seer = directory["CA-30307"], directory["CA-31212"]
    await list_via_api(ingest, owner, "LX-CONTROL", CONTROL)
    await matcher_knows(matcher, 1)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    seen = await ingest.post("/v1/sightings", json={**SIGHTING, "occurred_at": yesterday},
                             headers=bearer(seer))
    await ingest.post("/v1/sightings", json=CONTROL_SIGHTING, headers=bearer(seer))
    await eventually(lambda: alerts_on(notifier, owner, "LX-CONTROL"), what="the control alert")
    assert await alerts_on(notifier, owner, "LX-78") == []

    await list_via_api(ingest, owner, "LX-78", {"category": "wanted_person",
                       "full_name": "Nguyễn Văn Hùng", "national_id": "089091004217"})
    [late] = await eventually(lambda: alerts_on(notifier, owner, "LX-78"), what="the late hit")
    assert late["late"] is True
    assert late["correlation_id"] == seen.json()["event_id"]
    assert late["seen_at"].startswith(yesterday[:10])

    # Updating the entry re-checks the past, but the same sighting raises nothing new.
    await list_via_api(ingest, owner, "LX-78", {"category": "wanted_person",
                       "full_name": "Nguyễn Văn Hùng", "national_id": "089091004217",
                       "birth_year": 1991})
    await ingest.post("/v1/sightings", json=CONTROL_SIGHTING, headers=bearer(seer))
    await eventually(lambda: _count(notifier, owner, "LX-CONTROL", 2), what="second control")
    assert len(await alerts_on(notifier, owner, "LX-78")) == 1


async def _count(notifier, key, entry_id, n):
    return len(await alerts_on(notifier, key, entry_id)) >= n
