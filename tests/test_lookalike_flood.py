"""One unit cannot hide another unit's wanted person by listing copies of him."""

from services.ingest.store import IngestStore
from shared.events import SharingScope, WatchlistEntry
from shared.settings import CommonSettings
from tests.conftest import bearer, eventually
from tests.test_matcher_stream import alerts_on, list_via_api
from tests.test_pipeline import SIGHTING, WANTED, alerts, matcher_knows

HOSTILE = "CA-31237"
COPY = {"category": "wanted_person", "full_name": WANTED.full_name,
        "birth_year": WANTED.birth_year, "national_id": WANTED.national_id,
        "sharing_scope": "owner_only"}


async def test_a_unit_may_list_only_a_few_lookalikes_and_is_told_the_limit(directory, ingest):
    key = directory[HOSTILE]
    for n in range(3):
        response = await ingest.put(f"/v1/watchlist/COPY-{n}", json=COPY, headers=bearer(key))
        assert response.status_code == 200, response.text
    refused = await ingest.put("/v1/watchlist/COPY-3", json=COPY, headers=bearer(key))
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "too_many_lookalikes" and error["field"] == "full_name"
    assert "GIAPRANH_MAX_LOOKALIKES_PER_UNIT" in error["message"]
    # The same id under another name is a look-alike too.
    other_name = {**COPY, "full_name": "Trần Văn Tư"}
    refused = await ingest.put("/v1/watchlist/COPY-4", json=other_name, headers=bearer(key))
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "national_id"
    # Cancelling one frees a place; another unit is not limited by this one's copies.
    await ingest.post("/v1/watchlist/COPY-0/cancel", json={"reason": "duplicate"},
                      headers=bearer(key))
    assert (await ingest.put("/v1/watchlist/COPY-3", json=COPY,
                             headers=bearer(key))).status_code == 200
    assert (await ingest.put("/v1/watchlist/REAL", json=COPY,
                             headers=bearer(directory["CA-30307"]))).status_code == 200


async def test_a_thousand_lookalikes_from_one_unit_do_not_hide_another_units_wanted_person(
    env, pool, directory, ingest, notifier, matcher
):
    """Even if 1,000 copies exist (the API refuses them; here they are written past it, as
    with a limit raised or old data), the real entry still alerts, by id and by name and
    birth year, and the copies raise no more than a few alerts per sighting."""
    store = IngestStore(pool, env.settings(CommonSettings), max_lookalikes=10**6)
    for n in range(1000):
        await store.upsert_watchlist_entry(WatchlistEntry(
            entry_id=f"COPY-{n}", owner_unit=HOSTILE, sharing_scope=SharingScope.OWNER_ONLY,
            **{k: v for k, v in COPY.items() if k != "sharing_scope"}), unit_code=HOSTILE)
    owner, seer = directory["CA-30307"], directory["CA-31212"]
    await list_via_api(ingest, owner, WANTED.entry_id, {
        "category": "wanted_person", "full_name": WANTED.full_name,
        "birth_year": WANTED.birth_year, "national_id": WANTED.national_id})
    await matcher_knows(matcher, 1001)

    by_id = {**SIGHTING, "subject": {"national_id": WANTED.national_id}}
    await ingest.post("/v1/sightings", json=by_id, headers=bearer(seer))
    [first] = await eventually(lambda: alerts_on(notifier, owner, WANTED.entry_id),
                               timeout=30, what="the real entry's alert, by id")

    by_name = {**SIGHTING, "subject": {"name": "NGUYEN VAN HUNG",
                                       "birth_year": WANTED.birth_year}}
    await ingest.post("/v1/sightings", json=by_name, headers=bearer(seer))

    async def second() -> bool:
        return len(await alerts_on(notifier, owner, WANTED.entry_id)) == 2

    await eventually(second, timeout=30, what="the real entry's alert, by name and year")
    # The seen unit's desk: the two real alerts and at most three copies per sighting.
    seen_desk = await alerts(notifier, seer)
    copies = [a for a in seen_desk if a["entry"]["entry_id"].startswith("COPY-")]
    assert len(seen_desk) - len(copies) == 2
    assert len(copies) <= 6


async def test_watchlist_writes_are_rate_limited_per_key_with_retry_after(env, directory):
    from services.ingest.app import create_app
    from services.ingest.settings import IngestSettings
    from tests.conftest import _serve

    settings = env.settings(IngestSettings, watchlist_writes_per_minute=5)
    async for ingest in _serve(create_app(settings)):
        key = directory["CA-30307"]
        entry = {"category": "stolen_vehicle", "plates": ["67B1-123.45"]}
        for n in range(5):
            response = await ingest.put(f"/v1/watchlist/V-{n}", json=entry | {
                "plates": [f"67B1-123.4{n}"]}, headers=bearer(key))
            assert response.status_code == 200, response.text
        refused = await ingest.put("/v1/watchlist/V-5", json=entry, headers=bearer(key))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 12
        # Another unit's key has its own budget; reading is not limited.
        other = await ingest.put("/v1/watchlist/V-6", json=entry,
                                 headers=bearer(directory["CA-31212"]))
        assert other.status_code == 200
        assert (await ingest.get("/v1/watchlist", headers=bearer(key))).status_code == 200
