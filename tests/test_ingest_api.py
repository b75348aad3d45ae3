"""The ingest API through the real database and broker."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.events import decode_event
from tests.conftest import bearer, eventually, read_topic

SIGHTING = {
    "occurred_at": "2026-11-20T21:14:00+07:00",
    "subject": {"name": "NGUYEN VAN HUNG", "national_id": "089 091 004 217"},
    "place": {"unit_code": "CA-31212", "address": "bến phà Thốt Nốt"},
}


async def test_a_sighting_without_credentials_is_401(ingest, directory):
    response = await ingest.post("/v1/sightings", json=SIGHTING)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_sighting_with_an_unknown_key_is_401(ingest, directory):
    response = await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer("gpk_nope"))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "unknown or revoked API key"


async def test_a_bad_national_id_is_422_naming_the_field(ingest, directory):
    body = {**SIGHTING, "subject": {"national_id": "12345"}}
    response = await ingest.post("/v1/sightings", json=body, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "subject.national_id"
    assert "12 digits" in error["message"]


async def test_an_unknown_unit_code_is_422(ingest, directory):
    body = {**SIGHTING, "place": {"unit_code": "CA-99999"}}
    response = await ingest.post("/v1/sightings", json=body, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "place.unit_code"


async def test_a_time_far_in_the_future_is_422(ingest, directory):
    body = {**SIGHTING, "occurred_at": (datetime.now(UTC) + timedelta(hours=2)).isoformat()}
    response = await ingest.post("/v1/sightings", json=body, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "occurred_at"


async def test_a_retry_with_the_same_event_id_is_accepted_once(ingest, directory, pool):
    body = {**SIGHTING, "event_id": str(uuid.uuid4())}
    headers = bearer(directory["CA-31212"])
    first = await ingest.post("/v1/sightings", json=body, headers=headers)
    again = await ingest.post("/v1/sightings", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["event_id"] == again.json()["event_id"] == body["event_id"]
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_the_same_event_id_with_another_body_is_409(ingest, directory):
    event_id = str(uuid.uuid4())
    headers = bearer(directory["CA-31212"])
    await ingest.post("/v1/sightings", json={**SIGHTING, "event_id": event_id}, headers=headers)
    other = {**SIGHTING, "event_id": event_id, "subject": {"name": "LE VAN A"}}
    response = await ingest.post("/v1/sightings", json=other, headers=headers)
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "event_id"


async def test_a_unit_cannot_change_another_units_entry(ingest, directory):
    entry = {"category": "wanted_person", "full_name": "Nguyễn Văn Hùng"}
    created = await ingest.put("/v1/watchlist/E-1", json=entry, headers=bearer(directory["CA-30307"]))
    assert created.status_code == 200
    assert created.json()["entry"]["owner_unit"] == "CA-30307"
    response = await ingest.put("/v1/watchlist/E-1", json=entry, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 403
    cancel = await ingest.post("/v1/watchlist/E-1/cancel", json={"reason": "arrested"},
                               headers=bearer(directory["CA-31212"]))
    assert cancel.status_code == 403


async def test_watchlist_versions_grow_and_resending_changes_nothing(ingest, directory):
    headers = bearer(directory["CA-30307"])
    entry = {"category": "wanted_person", "full_name": "Nguyễn Văn Hùng"}
    first = (await ingest.put("/v1/watchlist/E-2", json=entry, headers=headers)).json()
    same = (await ingest.put("/v1/watchlist/E-2", json=entry, headers=headers)).json()
    changed = (await ingest.put("/v1/watchlist/E-2", json={**entry, "birth_year": 1991},
                                headers=headers)).json()
    assert [first["entry"]["version"], same["entry"]["version"], changed["entry"]["version"]] == [1, 1, 2]
    assert same["event_id"] is None


async def test_accepted_events_are_relayed_to_their_topic(ingest, directory, env):
    headers = bearer(directory["CA-31212"])
    sent = [(await ingest.post("/v1/sightings", json=SIGHTING, headers=headers)).json()["event_id"]
            for _ in range(5)]

    async def relayed():
        status = await ingest.get(f"/v1/events/{sent[-1]}", headers=headers)
        return status.json()["status"] == "relayed"

    await eventually(relayed, what="the outbox relay")
    records = await read_topic(env, f"{env.topic_prefix}sightings", len(sent))
    received = [str(decode_event(record.value).event_id) for record in records]
    assert sorted(received) == sorted(sent)


async def test_a_unit_cannot_read_another_units_event_status(ingest, directory):
    accepted = await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(directory["CA-31212"]))
    other = await ingest.get(f"/v1/events/{accepted.json()['event_id']}",
                             headers=bearer(directory["CA-30307"]))
    assert other.status_code == 404


async def test_a_sighting_without_name_id_or_plate_is_422_not_500(ingest, directory):
    body = {**SIGHTING, "subject": {"description": "áo khoác đen"}}
    response = await ingest.post("/v1/sightings", json=body, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 422
    assert "at least a name, a national_id or a plate" in response.json()["error"]["message"]


@pytest.mark.parametrize(("change", "field"), [
    ({"subject": {"name": "A", "birth_date": "1990-02-30"}}, "subject.birth_date"),
    ({"occurred_at": "2026-13-01T10:00:00+07:00"}, "occurred_at"),
    ({"occurred_at": "2026-11-20T21:14:00"}, "occurred_at"),
    ({"place": {"unit_code": "CA-31212", "lat": 95.0, "lon": 105.5}}, "place.lat"),
    ({"place": {"unit_code": "CA-31212", "lat": 10.2, "lon": 181.0}}, "place.lon"),
    ({"place": {"unit_code": "ca 31212"}}, "place.unit_code"),
    ({"subject": {"name": "A", "birth_year": 1850}}, "subject.birth_year"),
])
async def test_impossible_values_are_422_naming_the_field(ingest, directory, change, field):
    response = await ingest.post("/v1/sightings", json={**SIGHTING, **change},
                                 headers=bearer(directory["CA-31212"]))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
