"""Ingest beyond single reports: batches, limits, listings, admin, CLI keys, metrics."""

import subprocess
import sys
import uuid

from tests.conftest import ROOT, bearer, eventually
from tests.test_ingest_api import SIGHTING


def batch(n, **overrides):
    return {"sightings": [{**SIGHTING, "event_id": str(uuid.uuid4()), **overrides} for _ in range(n)]}


async def test_a_batch_of_1000_is_accepted_in_one_request(ingest, directory, pool):
    body = batch(1000)
    response = await ingest.post("/v1/sightings/batch", json=body, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 202
    result = response.json()
    assert (result["accepted"], result["duplicates"]) == (1000, 0)
    assert [r["event_id"] for r in result["results"]] == [s["event_id"] for s in body["sightings"]]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1000


async def test_a_retried_batch_adds_nothing(ingest, directory, pool):
    body = batch(10)
    headers = bearer(directory["CA-31212"])
    await ingest.post("/v1/sightings/batch", json=body, headers=headers)
    again = (await ingest.post("/v1/sightings/batch", json=body, headers=headers)).json()
    assert (again["accepted"], again["duplicates"]) == (0, 10)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 10


async def test_one_bad_sighting_rejects_the_whole_batch_naming_its_index(ingest, directory, pool):
    body = batch(5)
    body["sightings"][3]["subject"] = {"national_id": "12345"}
    response = await ingest.post("/v1/sightings/batch", json=body, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "sightings.3.subject.national_id"
    assert await pool.fetchval("SELECT count(*) FROM events") == 0


async def test_an_unknown_unit_in_a_batch_names_its_index(ingest, directory):
    body = batch(3)
    body["sightings"][2]["place"] = {"unit_code": "CA-00001"}
    response = await ingest.post("/v1/sightings/batch", json=body, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "sightings.2.place.unit_code"


async def test_a_batch_over_1000_or_with_a_repeated_id_is_422(ingest, directory):
    headers = bearer(directory["CA-31212"])
    too_many = await ingest.post("/v1/sightings/batch", json=batch(1001), headers=headers)
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "sightings"
    body = batch(2)
    body["sightings"][1]["event_id"] = body["sightings"][0]["event_id"]
    repeated = await ingest.post("/v1/sightings/batch", json=body, headers=headers)
    assert repeated.status_code == 422
    assert "appears twice" in repeated.json()["error"]["message"]


async def test_a_batch_reusing_an_id_for_another_body_is_409_naming_the_index(ingest, directory):
    headers = bearer(directory["CA-31212"])
    first = batch(2)
    await ingest.post("/v1/sightings/batch", json=first, headers=headers)
    second = batch(3)
    second["sightings"][2]["event_id"] = first["sightings"][1]["event_id"]
    second["sightings"][2]["subject"] = {"name": "LE VAN A"}
    response = await ingest.post("/v1/sightings/batch", json=second, headers=headers)
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "sightings.2.event_id"


async def test_an_oversized_body_is_413(ingest, directory):
    huge = {**SIGHTING, "subject": {"name": "A", "description": "x" * 3_000_000}}
    response = await ingest.post("/v1/sightings", json=huge, headers=bearer(directory["CA-31212"]))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_a_unit_lists_only_its_own_entries_and_cancelled_ones_on_request(ingest, directory):
    long_xuyen, thot_not = bearer(directory["CA-30307"]), bearer(directory["CA-31212"])
    for entry_id in ("LX-1", "LX-2"):
        await ingest.put(f"/v1/watchlist/{entry_id}", headers=long_xuyen,
                         json={"category": "wanted_person", "full_name": f"Đối tượng {entry_id}"})
    await ingest.put("/v1/watchlist/TN-1", headers=thot_not,
                     json={"category": "stolen_vehicle", "plates": ["65G1-45678"]})
    cancelled = await ingest.post("/v1/watchlist/LX-1/cancel", json={"reason": "arrested"},
                                  headers=long_xuyen)
    assert cancelled.status_code == 200

    active = (await ingest.get("/v1/watchlist", headers=long_xuyen)).json()
    assert [e["entry"]["entry_id"] for e in active] == ["LX-2"]
    everything = (await ingest.get("/v1/watchlist?include_cancelled=true", headers=long_xuyen)).json()
    assert {e["entry"]["entry_id"]: e["cancel_reason"] for e in everything} == {
        "LX-1": "arrested", "LX-2": None}
    assert (await ingest.get("/v1/watchlist/TN-1", headers=long_xuyen)).status_code == 404
    again = await ingest.post("/v1/watchlist/LX-1/cancel", json={"reason": "x"}, headers=long_xuyen)
    assert again.status_code == 409


async def test_only_an_admin_key_manages_the_directory(ingest, directory, pool, env):
    from shared.auth import issue_api_key

    unit = {"code": "CA-30292", "name": "Công an phường Bình Đức", "kind": "commune_police",
            "parent_code": "CAT-91"}
    refused = await ingest.post("/v1/admin/units", json=unit, headers=bearer(directory["CA-30307"]))
    assert refused.status_code == 403
    admin_key = await issue_api_key(pool, "CAT-91", "dev-only-api-key-pepper", role="province_admin")
    created = await ingest.post("/v1/admin/units", json=unit, headers=bearer(admin_key))
    assert created.status_code == 201
    assert (await ingest.post("/v1/admin/units", json=unit, headers=bearer(admin_key))).status_code == 409
    agreement = {"title": "Bình Đức – Long Xuyên", "parties": ["CA-30292", "CA-30307"],
                 "valid_from": "2026-01-01"}
    made = await ingest.post("/v1/admin/agreements", json=agreement, headers=bearer(admin_key))
    assert made.status_code == 201 and made.json()["parties"] == ["CA-30292", "CA-30307"]
    bad = {**agreement, "title": "x", "parties": ["CA-30292", "CA-00000"]}
    unknown = await ingest.post("/v1/admin/agreements", json=bad, headers=bearer(admin_key))
    assert unknown.status_code == 422 and "CA-00000" in unknown.json()["error"]["message"]


def giapranh(*args, env):
    return subprocess.run([sys.executable, "-m", "giapranh.cli", *args, "--database-url",
                           env.database_url], cwd=ROOT, capture_output=True, text=True, timeout=60)


async def test_a_key_issued_by_the_cli_works_until_revoked(ingest, directory, env):
    issued = giapranh("keys", "issue", "CA-31237", "--label", "phone 7", env=env)
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.strip().splitlines()[-1]
    assert (await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(key))).status_code == 202

    listed = giapranh("keys", "list", "CA-31237", env=env)
    [line] = [line for line in listed.stdout.splitlines() if "phone 7" in line]
    key_id = line.split("│")[1].strip()
    revoked = giapranh("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    # The key was cached by the first request (GIAPRANH_KEY_CACHE_SECONDS, 10 s): the
    # revocation's NOTIFY drops it within the second, not when the cache would expire.
    async def refused() -> bool:
        response = await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(key))
        return response.status_code == 401

    await eventually(refused, timeout=1.0, interval=0.01, what="the revoked key refused")
    assert giapranh("keys", "revoke", key_id, env=env).returncode == 1
    assert giapranh("keys", "issue", "CA-00000", env=env).returncode != 0


async def test_metrics_count_accepted_events_and_rejections_by_reason(ingest, directory):
    headers = bearer(directory["CA-31212"])
    await ingest.post("/v1/sightings", json=SIGHTING, headers=headers)
    await ingest.post("/v1/sightings", json={**SIGHTING, "subject": {"national_id": "1"}}, headers=headers)
    text = (await ingest.get("/metrics")).text
    assert 'giapranh_ingest_events_accepted_total{type="SightingReported"}' in text
    assert 'giapranh_http_rejections_total{reason="invalid",service="ingest"}' in text
    assert 'giapranh_http_requests_total{method="POST",route="/v1/sightings",service="ingest",status="202"}' in text
    assert "giapranh_outbox_oldest_age_seconds" in text


async def test_readiness_reports_the_database_and_the_broker(ingest, notifier, env):
    from tests.conftest import eventually

    async def ready(client, **more):
        response = await client.get("/readyz")
        return response.status_code == 200 and response.json()["checks"] == {
            "database": True, "database_history": True, "broker": True, **more}

    # Ingest also vouches that every report it published got the matcher's verdict.
    await eventually(lambda: ready(ingest, verdicts=True), what="ingest ready")
    await eventually(lambda: ready(notifier), what="notifier ready")
    assert (await ingest.get("/healthz")).json()["status"] == "ok"


async def test_metrics_can_live_on_an_internal_port_only(env, directory):
    import httpx
    import pytest

    from giapranh.embedded import free_port
    from services.ingest.app import create_app
    from services.ingest.settings import IngestSettings
    from tests.conftest import _serve

    port = free_port()
    settings = env.settings(IngestSettings, metrics_port=port)
    async for client in _serve(create_app(settings)):
        assert (await client.get("/metrics")).status_code == 404  # not on the API port
        await client.post("/v1/sightings", json=SIGHTING, headers=bearer(directory["CA-31212"]))
        async with httpx.AsyncClient() as outside:
            internal = await outside.get(f"http://127.0.0.1:{port}/metrics")
        assert internal.status_code == 200
        assert 'giapranh_ingest_events_accepted_total{type="SightingReported"}' in internal.text
    with pytest.raises(httpx.ConnectError):  # closed with the app
        async with httpx.AsyncClient() as outside:
            await outside.get(f"http://127.0.0.1:{port}/metrics")
