"""Cross-border pursuit: an incident near the border reaches the units it concerns at once,
and its suspects and vehicles become a hot list every report is matched against.

Through the real broker and database: ingest, the matcher worker and the notifier.
"""

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from services.notifier.settings import NotifierSettings
from shared.events import IncidentReported, Place, Suspect, Vehicle
from shared.topics import INCIDENTS
from tests.conftest import bearer, eventually

HOME = "CA-31212"  # Thốt Nốt (Cần Thơ)
# The demo directory: CA-31212 borders CA-30307 and CA-31207, and shares the Long Xuyên –
# Cần Thơ agreement with CA-30307, CA-30301, CA-30682, CA-31237 and CA-31207.
CONCERNED = {"CA-31212", "CA-30307", "CA-30301", "CA-30682", "CA-31237", "CA-31207"}
FLED_TO = "CA-31299"  # Phong Điền: concerned only because the suspects fled that way
PLATE = "65-B1 234.56"


def at(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


def incident_body(**more):
    return {
        "occurred_at": at(-40), "incident_type": "cướp giật tài sản",
        "summary": "Hai đối tượng đi xe máy giật túi xách, bỏ chạy về hướng Phong Điền.",
        "place": {"unit_code": HOME, "address": "bến phà Thốt Nốt", "lat": 10.270,
                  "lon": 105.535},
        "severity": "immediate",
        "suspects": [{"name": "Trần Văn Tèo", "birth_year": 1996, "action": "arrest",
                      "cautions": ["armed", "violent"]},
                     {"description": "đội mũ bảo hiểm đỏ"}],  # nothing to match on
        "vehicles": [{"plate": PLATE, "description": "Exciter đỏ"}],
        "fled_towards": [FLED_TO], **more,
    }


def plate_read(unit, minutes):
    return {"occurred_at": at(minutes), "subject": {"plate": "65B123456"},
            "place": {"unit_code": unit, "address": "camera ANPR"}}


async def alerts_of(notifier, key, **params):
    response = await notifier.get("/v1/alerts", params={"status": "all", **params},
                                  headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


async def incident_alerts(notifier, key):
    return [a for a in await alerts_of(notifier, key) if a["kind"] == "incident"]


async def hot_list_alerts(notifier, key):
    return [a for a in await alerts_of(notifier, key)
            if a["kind"] == "hit" and a["category"].startswith("incident_")]


async def verdict(pool, event_id):
    return await pool.fetchval("SELECT hits FROM matcher_verdicts WHERE event_id = $1",
                               event_id)


async def report(ingest, key, body):
    response = await ingest.post("/v1/sightings", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    return response.json()["event_id"]


async def test_an_incident_alerts_its_neighbours_at_once_and_its_hot_list_finds_the_motorbike(
    pool, directory, ingest, notifier, matcher
):
    # A camera read the plate 20 minutes before the incident was reported, across the line.
    before = await report(ingest, directory["CA-31207"], plate_read("CA-31207", -60))
    assert await eventually(lambda: _verdict_known(pool, before),
                            what="the earlier read matched (nothing yet)") == "0"

    response = await ingest.post("/v1/incidents", json=incident_body(),
                                 headers=bearer(directory[HOME]))
    assert response.status_code == 202, response.text
    incident_id = response.json()["event_id"]

    # 1. At once, exactly the concerned units and the unit it fled towards, with why.
    for code in CONCERNED | {FLED_TO}:
        [alert] = await eventually(lambda code=code: incident_alerts(notifier, directory[code]),
                                   what=f"the incident alert at {code}")
        assert alert["hit_id"] == incident_id and alert["urgency"] == "urgent"
        assert alert["incident"]["incident_type"] == "cướp giật tài sản"
        assert alert["entry"] is None and alert["actions"] == ["acknowledge"]
        why = " | ".join(alert["why_you"])
        if code == HOME:
            assert why == "incident on this unit's territory"
        elif code == FLED_TO:
            assert why == f"the suspects fled towards this unit (reported by {HOME})"
        elif code in ("CA-30307", "CA-31207"):
            assert "territory borders CA-31212, where the incident happened" in why
        else:
            assert why.startswith("coordination agreement with CA-31212, where the incident")
    assert await incident_alerts(notifier, directory["CA-22051"]) == []  # Sông Cầu

    # 2. The hot list looks back: the read 20 minutes before the report raises a late alert
    #    to the incident's unit and the unit where it was read, with the incident in it.
    [late] = await eventually(lambda: hot_list_alerts(notifier, directory[HOME]),
                              what="the late hot-list alert")
    assert late["late"] is True and late["seen_unit"] == "CA-31207"
    assert late["entry"]["entry_id"] == f"INC-{incident_id.replace('-', '')}-V1"
    assert late["entry"]["incident_id"] == incident_id
    assert late["incident"]["fled_towards"] == [FLED_TO]
    assert [a["alert_id"] for a in await hot_list_alerts(notifier, directory["CA-31207"])] \
        == [late["alert_id"]]

    # 3. A read of the motorbike in a bordering unit after the report: a live alert to the
    #    incident's unit and the unit where it was seen.
    await report(ingest, directory["CA-30307"], plate_read("CA-30307", -10))
    live = await eventually(lambda: _first(hot_list_alerts(notifier, directory["CA-30307"])),
                            what="the live hot-list alert")
    assert live["late"] is False
    assert live["why_you"] == ["subject seen on this unit's territory"]
    home_alerts = await hot_list_alerts(notifier, directory[HOME])
    assert len(home_alerts) == 2
    # The incident's own suspect and motorbike never hit the incident itself.
    assert {a["seen_unit"] for a in home_alerts} == {"CA-31207", "CA-30307"}

    # A suspect carries what to do and how dangerous he is, shown first.
    await report(ingest, directory["CA-31237"], {
        "occurred_at": at(-5), "subject": {"name": "TRAN VAN TEO", "birth_year": 1996},
        "place": {"unit_code": "CA-31237"}})
    flagged = await eventually(
        lambda: _first(hot_list_alerts(notifier, directory["CA-31237"])),
        what="the hot-list alert on the suspect")
    assert flagged["action"] == "arrest" and flagged["cautions"] == ["armed", "violent"]

    # 4. Closing the incident expires the hot list and closes its open alerts for everyone.
    closed = await ingest.post(f"/v1/incidents/{incident_id}/close",
                               json={"outcome": "caught", "note": "bắt tại Phong Điền"},
                               headers=bearer(directory[HOME]))
    assert closed.status_code == 202, closed.text

    async def all_closed():
        seen = await alerts_of(notifier, directory[HOME])
        return all(a["status"] in ("closed", "withdrawn") for a in seen) and seen
    for alert in await eventually(all_closed, what="every alert on the incident closed"):
        assert alert["outcome"] == "caught" or alert["status"] == "withdrawn"
    [fled] = await incident_alerts(notifier, directory[FLED_TO])
    assert fled["status"] == "closed" and fled["outcome"] == "caught"

    view = await ingest.get(f"/v1/incidents/{incident_id}", headers=bearer(directory[HOME]))
    assert view.json()["status"] == "closed"
    assert [e["cancel_reason"] for e in view.json()["hot_list"]] == ["incident closed: caught"] * 2

    later = await report(ingest, directory["CA-30307"], plate_read("CA-30307", -1))
    assert await eventually(lambda: _verdict_known(pool, later), what="the later read matched") \
        == "0"
    assert len(await hot_list_alerts(notifier, directory["CA-30307"])) == 1  # nothing new


async def _first(pending):
    found = await pending
    return found[0] if found else None


async def _verdict_known(pool, event_id):
    hits = await verdict(pool, event_id)
    return None if hits is None else str(hits)


async def test_updates_add_suspects_and_direction_and_only_the_reporting_unit_may(
    pool, directory, ingest, notifier, matcher
):
    response = await ingest.post("/v1/incidents", json=incident_body(fled_towards=[]),
                                 headers=bearer(directory[HOME]))
    incident_id = response.json()["event_id"]
    await eventually(lambda: incident_alerts(notifier, directory[HOME]), what="incident alert")
    assert await incident_alerts(notifier, directory[FLED_TO]) == []

    # Another unit can neither update nor close it: for them it does not exist.
    for path, body in (("update", {"note": "?"}), ("close", {"outcome": "lost"})):
        foreign = await ingest.post(f"/v1/incidents/{incident_id}/{path}", json=body,
                                    headers=bearer(directory["CA-30307"]))
        assert foreign.status_code == 404 and foreign.json()["error"]["field"] == "incident_id"

    update = {"event_id": str(uuid4()), "fled_towards": [FLED_TO],
              "vehicles": [{"plate": "65-C1 999.99"}], "note": "caught"}
    for _ in range(2):  # a retried update changes nothing more
        sent = await ingest.post(f"/v1/incidents/{incident_id}/update", json=update,
                                 headers=bearer(directory[HOME]))
        assert sent.status_code == 202, sent.text
    [fled] = await eventually(lambda: incident_alerts(notifier, directory[FLED_TO]),
                              what="the unit it now fled towards is alerted")
    assert fled["why_you"] == [f"the suspects fled towards this unit (reported by {HOME})"]
    assert [v["plate"] for v in fled["incident"]["vehicles"]] == [PLATE, "65-C1 999.99"]
    view = (await ingest.get(f"/v1/incidents/{incident_id}",
                             headers=bearer(directory[HOME]))).json()
    assert [e["entry"]["entry_id"].rsplit("-", 1)[1] for e in view["hot_list"]] == \
        ["S1", "V1", "V2"]

    history = await notifier.get(f"/v1/alerts/{fled['alert_id']}/history",
                                 headers=bearer(directory[HOME]))
    [step] = [s for s in history.json() if s["action"] == "updated"]
    assert "fled towards CA-31299" in step["detail"] and step["detail"].endswith(
        "; caught")
    # In Vietnamese the system's words are translated, the reporter's note is as written
    # (it reads like a word of the catalogue: it was translated with the rest).
    history = await notifier.get(f"/v1/alerts/{fled['alert_id']}/history",
                                 headers={**bearer(directory[HOME]), "Accept-Language": "vi"})
    [step] = [s for s in history.json() if s["action"] == "updated"]
    assert "fled towards" not in step["detail"] and step["detail"].endswith("; caught")

    bad = await ingest.post(f"/v1/incidents/{incident_id}/update",
                            json={"fled_towards": ["CA-99999"]}, headers=bearer(directory[HOME]))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "fled_towards.0"
    await ingest.post(f"/v1/incidents/{incident_id}/close", json={"outcome": "lost"},
                      headers=bearer(directory[HOME]))
    again = await ingest.post(f"/v1/incidents/{incident_id}/update", json={"note": "x"},
                              headers=bearer(directory[HOME]))
    assert again.status_code == 409

    # Hot-list categories are made from incidents only.
    listed = await ingest.put("/v1/watchlist/X-1", json={
        "category": "incident_vehicle", "plates": ["51F-123.45"]},
        headers=bearer(directory[HOME]))
    assert listed.status_code == 422 and listed.json()["error"]["field"] == "category"

    # The incident alert is acknowledged, never confirmed.
    confirm = await notifier.post(f"/v1/alerts/{fled['alert_id']}/confirm", json={},
                                  headers=bearer(directory[FLED_TO]))
    assert confirm.status_code in (403, 409)


async def test_an_incident_the_broker_never_delivered_is_alerted_from_ingests_record(
    env, pool, directory, topics
):
    """The notifier replays incident events from ingest's record (the broker lost them)."""
    from services.ingest.store import IngestStore, Report, request_hash
    from services.notifier.app import create_app
    from shared.settings import CommonSettings
    from tests.conftest import _serve

    incident = IncidentReported(
        occurred_at=datetime.now(UTC) - timedelta(minutes=5), producer_unit=HOME,
        incident_type="trộm cắp", place=Place(unit_code=HOME),
        suspects=(Suspect(name="Lê Văn Tý"),), vehicles=(Vehicle(plate="65-D1 111.11"),))
    store = IngestStore(pool, env.settings(CommonSettings))
    async with pool.acquire() as conn, conn.transaction():
        # Recorded (and queued in the outbox), never relayed: no ingest runs here.
        await store._record(conn, [Report(incident, request_hash("x"))], spec=INCIDENTS)
    app = create_app(env.settings(NotifierSettings, incident_replay_seconds=0.3))
    async for notifier in _serve(app):
        [alert] = await eventually(lambda: incident_alerts(notifier, directory["CA-31207"]),
                                   timeout=20, what="the replayed incident's alert")
        assert alert["hit_id"] == str(incident.event_id)
        assert await pool.fetchval("SELECT count(*) FROM notifier_incident_events") == 1


async def test_a_check_answers_with_the_wanted_person_his_reasons_action_and_cautions(
    env, pool, directory, matcher
):
    """`POST /v1/checks` through a real matcher worker: the README's wanted person, with
    reasons, the action asked for and the safety flags; `record` files a sighting; without
    a matcher, a clear 503."""
    from giapranh.demo import DEMO_ENTRIES
    from services.ingest.app import create_app
    from services.ingest.settings import IngestSettings
    from services.ingest.store import IngestStore
    from shared.settings import CommonSettings
    from tests.conftest import _serve

    await IngestStore(pool, env.settings(CommonSettings)).upsert_watchlist_entry(
        DEMO_ENTRIES[0], unit_code=DEMO_ENTRIES[0].owner_unit)
    app = create_app(env.settings(IngestSettings,
                                  matcher_url=f"http://127.0.0.1:{matcher.port}"))
    key = bearer(directory["CA-31212"])
    async for ingest in _serve(app):
        async def answered():
            response = await ingest.post("/v1/checks", headers=key, json={
                "subject": {"name": "NGUYEN VAN HUNG", "national_id": "089 091 004 217"}})
            assert response.status_code == 200, response.text
            return response.json()["matches"] and response.json()
        result = await eventually(answered, what="the check's match (entry loaded)")
        [match] = result["matches"]
        assert match["entry"]["entry_id"] == "CA-30307-TN-2026-0042"
        assert match["action"] == "arrest" and match["cautions"] == ["violent"]
        assert match["reasons"][0] == {"feature": "national_id",
                                       "detail": "national id 089091004217 exact"}
        assert result["recorded"] is None

        clear = await ingest.post("/v1/checks", headers=key,
                                  json={"subject": {"plate": "51F-999.99"}})
        assert clear.status_code == 200 and clear.json()["matches"] == []
        empty = await ingest.post("/v1/checks", headers=key, json={"subject": {}})
        assert empty.status_code == 422
        no_place = await ingest.post("/v1/checks", headers=key, json={
            "subject": {"plate": "51F-999.99"}, "record": True})
        assert no_place.status_code == 422

        recorded = await ingest.post("/v1/checks", headers=key, json={
            "subject": {"national_id": "089091004217"}, "record": True,
            "place": {"unit_code": "CA-31212"}})
        event_id = recorded.json()["recorded"]["event_id"]
        assert await pool.fetchval("SELECT type FROM events WHERE event_id = $1",
                                   event_id) == "SightingReported"
        last = await pool.fetchval(
            "SELECT detail FROM audit_log WHERE action = 'check' ORDER BY id DESC LIMIT 1")
        assert event_id in last and "CA-30307-TN-2026-0042" in last  # audited, with whom

    import httpx  # the matcher's internal endpoint answers services only
    async with httpx.AsyncClient() as client:
        stranger = await client.post(f"http://127.0.0.1:{matcher.port}/internal/check",
                                     json={"subject": {"national_id": "089091004217"}},
                                     headers={"x-giapranh-internal": "guess"})
    assert stranger.status_code == 401 and "CA-30307" not in stranger.text

    down = create_app(env.settings(IngestSettings, matcher_url="http://127.0.0.1:9"))
    async for ingest in _serve(down):
        response = await ingest.post("/v1/checks", headers=key,
                                     json={"subject": {"plate": "51F-999.99"}})
        assert response.status_code == 503
        assert "matcher cannot be reached" in response.json()["error"]["message"]
