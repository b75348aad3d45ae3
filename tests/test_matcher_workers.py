"""Two matcher workers share the report partitions; each holds the whole watchlist."""

from giapranh.embedded import free_port
from tests.conftest import MatcherProcess, bearer, eventually
from tests.test_matcher_stream import list_via_api
from tests.test_pipeline import SIGHTING, alerts, matcher_knows

REPORTERS = ["CA-31212", "CA-31237", "CA-31207", "CA-30301", "CA-30682", "QS-30307"]


async def test_two_workers_and_a_restart_match_every_sighting_once(
    env, topics, directory, ingest, notifier
):
    first, second = MatcherProcess(env, free_port()), MatcherProcess(env, free_port())
    try:
        await first.wait_ready()
        await second.wait_ready()
        owner = directory["CA-30307"]
        await list_via_api(ingest, owner, "LX-90", {"category": "wanted_person",
                           "full_name": "Nguyễn Văn Hùng", "national_id": "089091004217"})
        await matcher_knows(first, 1)
        await matcher_knows(second, 1)
        for unit in REPORTERS:  # keyed by unit: spread over both workers' partitions
            body = {**SIGHTING, "place": {"unit_code": unit}}
            assert (await ingest.post("/v1/sightings", json=body,
                                      headers=bearer(directory[unit]))).status_code == 202
        await eventually(lambda: _n_alerts(notifier, owner, len(REPORTERS)), timeout=30,
                         what="one alert per sighting")

        first.stop()  # the survivor takes over its partitions after the session timeout
        for unit in REPORTERS[:3]:
            body = {**SIGHTING, "place": {"unit_code": unit}}
            await ingest.post("/v1/sightings", json=body, headers=bearer(directory[unit]))
        await eventually(lambda: _n_alerts(notifier, owner, len(REPORTERS) + 3), timeout=45,
                         what="the survivor to match the later sightings")
        assert len(await alerts(notifier, owner)) == len(REPORTERS) + 3  # no duplicates
    finally:
        first.stop()
        second.stop()


async def _n_alerts(notifier, key, n):
    return len(await alerts(notifier, key)) >= n
