"""People's keys (roles, rotation with grace, last use), the person on every action, and the
tamper-evident audit log (`giapranh audit verify`, `GET /v1/audit`)."""

from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest

from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from shared.auth import issue_api_key
from tests.conftest import ROOT, _serve, bearer, eventually
from tests.notifier_helpers import WANTED, alert_of, make_hit, send
from tests.test_ingest_api import SIGHTING

PEPPER = "dev-only-api-key-pepper"


def giapranh(*args, env):
    return subprocess.run([sys.executable, "-m", "giapranh.cli", *args, "--database-url",
                           env.database_url], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
async def desk(env, topics, directory):
    async for client in _serve(create_app(env.settings(NotifierSettings))):
        yield client


async def test_roles_limit_what_a_key_does_and_every_step_names_its_person(
        env, ingest, desk, directory, pool):
    reporter = await issue_api_key(pool, "CA-30307", PEPPER, role="reporter",
                                   person="Thượng úy Lê Văn Tư")
    officer = await issue_api_key(pool, "CA-30307", PEPPER, role="desk",
                                  person="Đại úy Nguyễn Thị Hoa")

    # A reporter reports, and the event records who.
    sent = await ingest.post("/v1/sightings", json={**SIGHTING,
                             "place": {"unit_code": "CA-30307"}}, headers=bearer(reporter))
    assert sent.status_code == 202, sent.text
    who = await pool.fetchval(
        "SELECT p.name FROM events e JOIN people p ON p.id = e.person_id WHERE e.event_id = $1",
        __import__("uuid").UUID(sent.json()["event_id"]))
    assert who == "Thượng úy Lê Văn Tư"

    hit = make_hit(WANTED, seen="CA-30307")  # listed and seen by Long Xuyên
    await send(env, hit)
    alert = await eventually(lambda: alert_of(desk, officer, hit), what="the alert")
    url = f"/v1/alerts/{alert['alert_id']}"

    # ... but does not work alerts (it reads them), nor manage the webhook.
    assert (await desk.get(url, headers=bearer(reporter))).status_code == 200
    refused = await desk.post(f"{url}/ack", headers=bearer(reporter))
    assert refused.status_code == 403
    assert refused.json()["error"]["field"] == "role"
    assert "needs desk" in refused.json()["error"]["message"]
    hook = {"url": "https://hooks.example.org/giapranh"}
    assert (await desk.put("/v1/webhook", json=hook, headers=bearer(officer))).status_code == 403

    assert (await desk.post(f"{url}/ack", headers=bearer(officer))).status_code == 200
    confirmed = await desk.post(f"{url}/confirm", json={"note": "còn hiệu lực"},
                                headers=bearer(officer))
    assert confirmed.status_code == 200
    steps = (await desk.get(f"{url}/history", headers=bearer(officer))).json()
    assert [(s["action"], s["person_name"]) for s in steps] == [
        ("raised", None), ("acknowledged", "Đại úy Nguyễn Thị Hoa"),
        ("confirmed", "Đại úy Nguyễn Thị Hoa")]

    records = await pool.fetch("SELECT action, person_name, unit_code, subject FROM audit_log "
                               "ORDER BY id")
    assert [(r["action"], r["person_name"], r["unit_code"]) for r in records] == [
        ("alert.acknowledged", "Đại úy Nguyễn Thị Hoa", "CA-30307"),
        ("alert.confirmed", "Đại úy Nguyễn Thị Hoa", "CA-30307")]
    assert {r["subject"] for r in records} == {alert["alert_id"]}


async def test_unit_admins_issue_rotate_and_revoke_their_people_keys(ingest, directory, pool):
    admin = directory["CA-30307"]  # the demo keys are their units' admins
    issued = await ingest.post("/v1/keys", headers=bearer(admin), json={
        "person": "Trung úy Phạm Văn Nam", "role": "reporter", "label": "điện thoại tuần tra"})
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["unit_code"] == "CA-30307" and body["role"] == "reporter"
    assert body["person_name"] == "Trung úy Phạm Văn Nam" and body["key"].startswith("gpk_")
    field_key, field_id = body["key"], body["id"]

    # Not above one's own role, not for another unit.
    too_high = await ingest.post("/v1/keys", headers=bearer(admin),
                                 json={"person": "x", "role": "province_admin"})
    assert too_high.status_code == 403 and too_high.json()["error"]["field"] == "role"
    elsewhere = await ingest.post("/v1/keys", headers=bearer(admin),
                                  json={"person": "x", "unit_code": "CA-31212"})
    assert elsewhere.status_code == 403 and elsewhere.json()["error"]["field"] == "unit_code"
    # A reporter administers nobody's keys...
    assert (await ingest.get("/v1/keys", headers=bearer(field_key))).status_code == 403
    # ... and cannot see another key exists.
    other = await ingest.post(f"/v1/keys/{field_id - 1}/revoke", headers=bearer(field_key))
    assert other.status_code == 404

    # Last use is recorded.
    assert (await ingest.post("/v1/sightings", json=SIGHTING,
                              headers=bearer(field_key))).status_code == 202
    listed = (await ingest.get("/v1/keys", headers=bearer(admin))).json()
    [mine] = [k for k in listed if k["id"] == field_id]
    assert mine["last_used_at"] is not None
    assert {k["unit_code"] for k in listed} == {"CA-30307"}

    # Rotating one's own key: both work during the grace period.
    rotated = await ingest.post(f"/v1/keys/{field_id}/rotate", headers=bearer(field_key),
                                json={"grace_hours": 2})
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["key"]
    assert rotated.json()["person_name"] == "Trung úy Phạm Văn Nam"
    assert rotated.json()["role"] == "reporter"
    for key in (field_key, new_key):
        assert (await ingest.post("/v1/sightings", json=SIGHTING,
                                  headers=bearer(key))).status_code == 202
    # Without grace, the old key stops at once.
    again = await ingest.post(f"/v1/keys/{rotated.json()['id']}/rotate", headers=bearer(admin),
                              json={"grace_hours": 0})
    assert again.status_code == 200
    assert (await ingest.post("/v1/sightings", json=SIGHTING,
                              headers=bearer(new_key))).status_code == 401
    newest = again.json()["key"]
    revoked = await ingest.post(f"/v1/keys/{again.json()['id']}/revoke", headers=bearer(admin))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await ingest.post("/v1/sightings", json=SIGHTING,
                              headers=bearer(newest))).status_code == 401

    actions = [(r["action"], r["person_name"]) for r in await pool.fetch(
        "SELECT action, person_name FROM audit_log ORDER BY id")]
    assert actions == [("key.issue", "duty desk"), ("key.rotate", "Trung úy Phạm Văn Nam"),
                       ("key.rotate", "duty desk"), ("key.revoke", "duty desk")]


async def test_a_province_admin_administers_the_units_under_it_only(ingest, directory, pool):
    province = await issue_api_key(pool, "CAT-91", PEPPER, role="province_admin",
                                   person="Thiếu tá Võ Minh")
    made = await ingest.post("/v1/keys", headers=bearer(province), json={
        "person": "trực ban", "role": "unit_admin", "unit_code": "CA-30301"})
    assert made.status_code == 201, made.text
    outside = await ingest.post("/v1/keys", headers=bearer(province), json={
        "person": "trực ban", "unit_code": "CA-31212"})  # Cần Thơ's, not An Giang's
    assert outside.status_code == 403
    await ingest.put("/v1/watchlist/LX-9", headers=bearer(directory["CA-30307"]), json={
        "category": "wanted_person", "full_name": "Đỗ Văn Lâm", "birth_year": 1980})
    await ingest.put("/v1/watchlist/TN-9", headers=bearer(directory["CA-31212"]), json={
        "category": "wanted_person", "full_name": "Lý Thị Mai", "birth_year": 1985})

    seen = await ingest.get("/v1/audit", headers=bearer(province))
    assert seen.status_code == 200
    assert {(r["unit_code"], r["action"]) for r in seen.json()} == {
        ("CA-30301", "key.issue"), ("CA-30307", "watchlist.upsert")}
    own = await ingest.get("/v1/audit", headers=bearer(directory["CA-31212"]))
    assert [(r["action"], r["subject"]) for r in own.json()] == [("watchlist.upsert", "TN-9")]
    assert len(own.json()[0]["hash"]) == 64
    assert (await ingest.get("/v1/audit?unit=CA-31212",
                             headers=bearer(province))).status_code == 403
    desk_key = await issue_api_key(pool, "CA-31212", PEPPER, role="desk")
    assert (await ingest.get("/v1/audit", headers=bearer(desk_key))).status_code == 403


async def test_the_audit_chain_names_the_first_edited_or_missing_record(ingest, directory, env,
                                                                        pool):
    headers = bearer(directory["CA-30307"])
    for n in range(5):
        response = await ingest.put(f"/v1/watchlist/LX-{n}", headers=headers, json={
            "category": "wanted_person", "full_name": f"Nguyễn Văn Số {n}",
            "birth_year": 1970 + n})
        assert response.status_code == 200
    issued = giapranh("keys", "issue", "CA-30307", "--person", "Hạ sĩ Đinh Văn Út", env=env)
    assert issued.returncode == 0, issued.stdout + issued.stderr

    verified = giapranh("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "6 record(s)" in verified.stdout

    # The table refuses edits and deletions ...
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pool.execute("UPDATE audit_log SET person_name = 'someone else' WHERE id = 3")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pool.execute("DELETE FROM audit_log WHERE id = 6")
    # ... and whoever gets past that (a superuser turning the trigger off) breaks the chain.
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        assert await conn.fetchval("SELECT subject FROM audit_log WHERE id = 3") == "LX-2"
        await conn.execute("UPDATE audit_log SET subject = 'LX-7' WHERE id = 3")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    broken = giapranh("audit", "verify", env=env)
    assert broken.returncode == 1
    assert "broken at record 3" in broken.stdout and "edited" in broken.stdout

    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute("UPDATE audit_log SET subject = 'LX-2' WHERE id = 3")
        assert giapranh("audit", "verify", env=env).returncode == 0  # restored: whole again
        await conn.execute("DELETE FROM audit_log WHERE id = 4")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    missing = giapranh("audit", "verify", env=env)
    assert missing.returncode == 1 and "record 4 is missing" in missing.stdout
