"""Whatever a client sends, the answer is a 4xx naming the field, never a 500; and nothing
it sends can make another unit's CAP message or Atom feed invalid."""

import json

import pytest

from tests.conftest import bearer
from tests.test_ingest_api import SIGHTING

SEER = "CA-31212"


@pytest.mark.parametrize(("body", "field"), [
    ({**SIGHTING, "subject": {"name": "Nguyễn\u0000Văn Hùng"}}, "subject.name"),
    ({**SIGHTING, "subject": {"name": "Nguyễn\u0001Văn"}}, "subject.name"),
    ({**SIGHTING, "subject": {"name": "Hùng\ud800"}}, "subject.name"),
    ({**SIGHTING, "subject": {"plate": "51F\u0000123"}}, "subject.plate"),
    ({**SIGHTING, "subject": {"national_id": "089091004217", "description": "x\u000by"}},
     "subject.description"),
    ({**SIGHTING, "place": {"unit_code": SEER, "address": "bến\u000bphà"}}, "place.address"),
    ({**SIGHTING, "occurred_at": "0001-01-01T00:00:00+07:00"}, "occurred_at"),
    ({**SIGHTING, "occurred_at": "9999-12-31T23:59:59-05:00"}, "occurred_at"),
], ids=["nul", "control", "surrogate", "nul-plate", "vertical-tab", "address", "year-1",
        "year-9999"])
async def test_hostile_text_and_times_in_a_sighting_are_422_naming_the_field(
    ingest, directory, body, field
):
    # Sent as JSON text with escapes, as a hostile client would (a lone surrogate cannot
    # even be encoded as UTF-8).
    response = await ingest.post("/v1/sightings", content=json.dumps(body).encode(),
                                 headers={**bearer(directory[SEER]),
                                          "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_multiline_text_keeps_its_newlines_and_tabs(ingest, directory):
    body = {**SIGHTING, "place": {"unit_code": SEER, "address": "bến phà\nThốt Nốt\tcổng 2"}}
    response = await ingest.post("/v1/sightings", json=body, headers=bearer(directory[SEER]))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(("body", "field"), [
    ({"category": "wanted_person", "full_name": "A\u0000B"}, "full_name"),
    ({"category": "wanted_person", "full_name": "Lê Văn Tám",
      "valid_until": "0001-01-01T00:00:00+07:00"}, "valid_until"),
    ({"category": "stolen_vehicle", "plates": ["51F\u0007123"]}, "plates.0"),
    ({"category": "wanted_person", "full_name": "Lê Văn Tám", "aliases": ["T\u001bám"]},
     "aliases.0"),
])
async def test_hostile_watchlist_entries_are_422_naming_the_field(ingest, directory, body, field):
    response = await ingest.put("/v1/watchlist/X-1", json=body,
                                headers=bearer(directory["CA-30307"]))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/watchlist?offset=9223372036854775808", "offset"),
    ("/v1/watchlist?limit=99999999999999999999", "limit"),
])
async def test_huge_numbers_in_queries_are_422(ingest, directory, path, field):
    response = await ingest.get(path, headers=bearer(directory["CA-30307"]))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_a_huge_ward_code_is_422(ingest, env, directory, pool):
    from shared.auth import issue_api_key

    admin = await issue_api_key(pool, "CAT-91", "dev-only-api-key-pepper", role="province_admin")
    response = await ingest.post("/v1/admin/units", headers=bearer(admin), json={
        "code": "CA-99999", "name": "x", "kind": "commune_police", "ward_code": 2147483648})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "ward_code"


@pytest.mark.parametrize("content", [
    b"\x80 not UTF-8", b'{"occurred_at": ', b"[" * 100_000, b'{"n": ' + b"9" * 5000 + b"}",
], ids=["not-utf8", "truncated", "nested-too-deeply", "number-too-long"])
async def test_a_body_that_is_not_json_is_422_naming_the_body(ingest, directory, content):
    headers = {**bearer(directory[SEER]), "Content-Type": "application/json"}
    for path in ("/v1/sightings", "/v1/sightings/batch"):
        response = await ingest.post(path, content=content, headers=headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["field"] == "body", (path, response.text)


async def test_a_chunked_body_over_the_limit_is_413_on_every_endpoint(ingest, directory):
    headers = {**bearer(directory[SEER]), "Content-Type": "application/json"}

    async def chunks():
        yield b'{"sightings": ['
        for _ in range(3000):
            yield b'{"occurred_at": "2026-11-20T21:14:00+07:00", "subject": {"name": "' \
                  + b"x" * 900 + b'"}, "place": {"unit_code": "CA-31212"}},'
        yield b"{}]}"

    for path in ("/v1/sightings/batch", "/v1/sightings"):
        response = await ingest.post(path, content=chunks(), headers=headers)
        assert response.status_code == 413, (path, response.text)


def test_a_control_character_stored_before_validation_cannot_break_cap_or_atom():
    """Ingest refuses control characters now; an alert stored before must still render."""
    from datetime import UTC, datetime

    from lxml import etree

    from services.notifier.cap import render_atom, render_cap

    now = datetime(2026, 11, 20, 14, tzinfo=UTC)
    alert = {
        "alert_id": "c2d3e4f5-0a1b-4c2d-8e3f-4a5b6c7d8e77", "status": "raised",
        "raised_at": now, "updated_at": now, "seen_at": now, "confirm_by": None,
        "category": "wanted_person", "urgency": "urgent", "score": 0.95,
        "correlation_id": "5b0e6a52-3d0c-4a8e-9d43-0f6f7f6c2a11", "owner_unit": "CA-30307",
        "seen_unit": "CA-31212", "unit_names": {}, "outcome": None,
        "decision_note": "bad\u0001note",
        "subject": {"name": "Nguyễn\u0001Văn\u000bHùng"},
        "entry": {"entry_id": "E1", "description": "x\u0000y"},
        "match_reasons": [{"feature": "name", "detail": "a\u001fb"}],
        "place": {"unit_code": "CA-31212", "address": "bến\u000bphà", "lat": None},
    }
    cap = render_cap(alert, sender="giapranh", recipients=["CA-30307"])
    etree.fromstring(cap)  # parses: no invalid character left
    atom = render_atom("CA-30307", "x", [(alert, ["CA-30307"])], sender="giapranh",
                       base_url="http://test", now=now)
    etree.fromstring(atom)
    assert "Nguyễn\ufffdVăn\ufffdHùng".encode() in cap


async def test_every_key_is_rate_limited_with_retry_after(env, directory):
    from services.ingest.app import create_app
    from services.ingest.settings import IngestSettings
    from tests.conftest import _serve

    settings = env.settings(IngestSettings, requests_per_minute_per_key=60)  # bursts of 6
    async for ingest in _serve(create_app(settings)):
        key = directory["CA-30307"]
        codes = [(await ingest.get("/v1/watchlist", headers=bearer(key))).status_code
                 for _ in range(8)]
        assert codes[:6] == [200] * 6 and codes[6:] == [429, 429]
        refused = await ingest.get("/v1/watchlist", headers=bearer(key))
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        # Another key is not slowed by this one.
        other = await ingest.get("/v1/watchlist", headers=bearer(directory["CA-31212"]))
        assert other.status_code == 200


async def test_pages_carry_a_content_security_policy_and_every_answer_security_headers(
    notifier, ingest, directory
):
    page = await notifier.get("/desk")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    for response in (page, await ingest.get("/v1/watchlist", headers=bearer(
            directory["CA-30307"])), await ingest.get("/v1/nothing-here")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    missing = await ingest.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
