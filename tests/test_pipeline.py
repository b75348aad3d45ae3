"""One sighting through the whole pipeline: ingest -> outbox -> Kafka -> matcher -> notifier.

Everything here is real: the ingest and notifier apps with their relay and consumer, the
matcher worker as a child process, the embedded broker and database.
"""

import json
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from giapranh.demo import DEMO_ENTRIES
from services.ingest.store import IngestStore
from shared.events import DeadLetter, HitFound, Place, SharingScope
from shared.settings import CommonSettings
from shared.topics import HITS
from tests.conftest import bearer, eventually, read_topic

WANTED = DEMO_ENTRIES[0]  # listed by CA-30307 (Long Xuyên, An Giang)
WANTED_PLACE = Place(unit_code="CA-31212")
SIGHTING = {
    "occurred_at": "2026-11-20T21:14:00+07:00",
    "subject": {"name": "NGUYEN VAN HUNG", "national_id": "089 091 004 217"},
    # Thốt Nốt, Cần Thơ: across the province border from Long Xuyên, same agreement.
    "place": {"unit_code": "CA-31212", "address": "bến phà Thốt Nốt"},
}


async def list_entry(env, pool, entry=WANTED):
    await IngestStore(pool, env.settings(CommonSettings)).upsert_watchlist_entry(
        entry, unit_code=entry.owner_unit
    )


async def alerts(notifier, key):
    response = await notifier.get("/v1/alerts", headers=bearer(key))
    assert response.status_code == 200
    return response.json()


async def test_a_listed_subject_sighted_across_the_border_raises_one_alert_for_the_right_units(
    env, pool, directory, ingest, notifier, matcher, caplog
):
    caplog.set_level("DEBUG", logger="giapranh.events")  # as GIAPRANH_LOG_EVENTS=true
    await list_entry(env, pool)
    accepted = await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(directory["CA-31212"]))
    assert accepted.status_code == 202

    [alert] = await eventually(lambda: alerts(notifier, directory["CA-30307"]),
                               what="the alert at the listing unit")
    assert alert["entry"]["entry_id"] == WANTED.entry_id
    assert alert["seen_unit"] == "CA-31212"
    assert alert["correlation_id"] == accepted.json()["event_id"]
    assert alert["match_reasons"] == [
        {"feature": "national_id", "detail": "national id 089091004217 exact"},
        {"feature": "name",
         "detail": "full name: NGUYEN VAN HUNG ≈ Nguyễn Văn Hùng (no diacritics on query)"},
        {"feature": "birth", "detail": "birth year 1991"},  # read from the CCCD digits
    ]
    assert alert["why_you"] == [
        "this unit listed the subject",
        "coordination agreement with CA-31212, where the subject was seen: "
        "Quy chế phối hợp địa bàn giáp ranh Long Xuyên – Cần Thơ (2025)",
        "territory borders CA-31212, where the subject was seen",  # An Giang ↔ Cần Thơ
    ]
    assert alert["urgency"] == "urgent" and alert["status"] == "raised"
    assert alert["unit_names"]["CA-31212"] == "Công an phường Thốt Nốt"

    status = await ingest.get(f"/v1/events/{accepted.json()['event_id']}",
                              headers=bearer(directory["CA-31212"]))
    assert status.json()["status"] == "matched"
    assert status.json()["alerts"] == [alert["alert_id"]]

    [seen_here] = await alerts(notifier, directory["CA-31212"])
    assert seen_here["why_you"] == ["subject seen on this unit's territory"]
    # One sighting followed through the three services' logs by its correlation id.
    sighting_id = accepted.json()["event_id"]
    traced = {(r.name.split(".")[2], r.getMessage().split()[0]) for r in caplog.records
              if str(getattr(r, "correlation_id", "")) == sighting_id}
    assert {("ingest", "accepted"), ("notifier", "alert")} <= traced
    matcher_lines = [json.loads(line) for line in matcher.log().splitlines()
                     if line.startswith("{") and sighting_id in line]
    assert [(line["service"], line["message"].split()[0]) for line in matcher_lines] == [
        ("matcher", "live")]
    assert matcher_lines[0]["entry_id"] == WANTED.entry_id

    [partner] = await alerts(notifier, directory["CA-31237"])  # Vĩnh Trinh, same agreement
    assert partner["why_you"][0].startswith("coordination agreement with CA-31212")
    assert await alerts(notifier, directory["CA-22051"]) == []  # Sông Cầu: not concerned


async def test_a_replayed_sighting_and_a_redelivered_hit_make_no_second_alert(
    env, pool, directory, ingest, notifier, matcher
):
    await list_entry(env, pool)
    body = {**SIGHTING, "event_id": "5b0e6a52-3d0c-4a8e-9d43-0f6f7f6c2a11"}
    for _ in range(2):
        await ingest.post("/v1/sightings", json=body, headers=bearer(directory["CA-31212"]))
    [alert] = await eventually(lambda: alerts(notifier, directory["CA-30307"]), what="the alert")

    # Redeliver the very hit the matcher produced, as an at-least-once broker may.
    [record] = await read_topic(env, env.settings(CommonSettings).topic(HITS.name), 1,
                                settle=0.5)
    assert HitFound.model_validate_json(record.value).hit_id.hex == alert["hit_id"].replace("-", "")
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(record.topic, record.value, key=record.key)
    finally:
        await producer.stop()

    # A new sighting of the same subject: its hit has the same key (the entry id), so it
    # lands after the redelivered one in the same partition. Once its alert is there,
    # the redelivered hit has been consumed too.
    await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(directory["CA-31212"]))
    await eventually(lambda: _has(notifier, directory["CA-30307"], 2), what="the second alert")
    assert await pool.fetchval("SELECT count(*) FROM alerts") == 2


async def _has(notifier, key, count):
    return len(await alerts(notifier, key)) >= count


async def test_a_poison_message_is_dead_lettered_and_later_sightings_still_match(
    env, pool, directory, ingest, notifier, matcher
):
    await list_entry(env, pool)
    settings = env.settings(CommonSettings)
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
    await producer.start()
    try:
        for poison in (b"not json at all", json.dumps({"type": "SightingReported"}).encode()):
            await producer.send_and_wait(settings.topic("sightings"), poison, key=b"CA-31212",
                                         partition=0)
    finally:
        await producer.stop()
    await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(directory["CA-31212"]))
    await eventually(lambda: alerts(notifier, directory["CA-30307"]), what="the later sighting's alert")

    letters = [DeadLetter.model_validate_json(record.value)
               for record in await read_topic(env, settings.topic("dead-letter"), 2)]
    assert {letter.payload for letter in letters} == {
        "not json at all", json.dumps({"type": "SightingReported"})}
    assert all(letter.service == "matcher" and letter.error for letter in letters)
    assert matcher.process.poll() is None


async def test_an_owner_only_entry_alerts_only_the_owner_and_the_seen_unit(
    env, pool, directory, ingest, notifier, matcher
):
    private = WANTED.model_copy(update={"entry_id": "CA-30307-PRIVATE", "sharing_scope": SharingScope.OWNER_ONLY,
                                        "national_id": "089091009999"})
    await list_entry(env, pool, private)
    await matcher_knows(matcher, 1)
    body = {**SIGHTING, "subject": {"national_id": "089091009999"}}
    await ingest.post("/v1/sightings", json=body, headers=bearer(directory["CA-31212"]))
    await eventually(lambda: alerts(notifier, directory["CA-30307"]), what="the owner's alert")
    assert len(await alerts(notifier, directory["CA-31212"])) == 1
    assert await alerts(notifier, directory["CA-31237"]) == []


async def matcher_knows(matcher, entries):
    import httpx

    async def loaded():
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://127.0.0.1:{matcher.port}/healthz")).json()
        return health["watchlist_entries"] >= entries

    await eventually(loaded, what=f"the matcher to hold {entries} entries")


async def test_a_unit_cannot_read_an_alert_not_addressed_to_it(
    env, pool, directory, ingest, notifier, matcher
):
    await list_entry(env, pool)
    await ingest.post("/v1/sightings", json=SIGHTING, headers=bearer(directory["CA-31212"]))
    [alert] = await eventually(lambda: alerts(notifier, directory["CA-30307"]), what="the alert")
    outsider = await notifier.get(f"/v1/alerts/{alert['alert_id']}", headers=bearer(directory["CA-22051"]))
    assert outsider.status_code == 404
    ack = await notifier.post(f"/v1/alerts/{alert['alert_id']}/ack", headers=bearer(directory["CA-22051"]))
    assert ack.status_code == 404
    ack = await notifier.post(f"/v1/alerts/{alert['alert_id']}/ack", headers=bearer(directory["CA-30307"]))
    assert ack.status_code == 200 and ack.json()["acknowledged_at"] is not None
    stamp = datetime.fromisoformat(ack.json()["acknowledged_at"])
    assert stamp <= datetime.now(UTC)


async def test_the_notifier_dead_letters_a_malformed_hit_and_keeps_consuming(
    env, pool, directory, notifier
):
    settings = env.settings(CommonSettings)
    good = HitFound.model_validate(HITS.example()).model_copy(
        update={"entry": WANTED, "place": WANTED_PLACE}
    )
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
    await producer.start()
    try:
        for value in (b'{"type": "HitFound", "score": 7}', good.model_dump_json().encode()):
            await producer.send_and_wait(settings.topic(HITS.name), value, partition=0)
    finally:
        await producer.stop()
    [alert] = await eventually(lambda: alerts(notifier, directory["CA-30307"]),
                               what="the alert of the good hit after the bad one")
    assert alert["hit_id"] == str(good.hit_id)

    [letter] = [DeadLetter.model_validate_json(record.value) for record in
                await read_topic(env, settings.topic("dead-letter"), 1, settle=0.5)]
    assert letter.service == "notifier"
    assert letter.payload == '{"type": "HitFound", "score": 7}'
    assert "validation error" in letter.error
