"""Helpers for notifier tests: hits made from demo entries, sent through the real broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from giapranh.demo import DEMO_ENTRIES
from shared.events import HitFound, HitsWithdrawn, IncidentReported, Place, WatchlistEntry
from shared.settings import CommonSettings
from shared.topics import HITS, INCIDENTS
from tests.conftest import TestEnv, bearer

WANTED = DEMO_ENTRIES[0]    # CA-30307 (Long Xuyên, An Giang), wanted: urgent
MISSING = DEMO_ENTRIES[2]   # CA-21553 (Quy Nhơn Bắc, Gia Lai), missing person: urgent
MANAGED = DEMO_ENTRIES[3]   # CA-25966 (Lái Thiêu), managed person: routine


def make_hit(entry: WatchlistEntry = WANTED, *, seen: str = "CA-31212",
             lat: float | None = None, lon: float | None = None, **entry_changes: Any) -> HitFound:
    if entry_changes:
        entry = entry.model_copy(update=entry_changes)
    now = datetime.now(UTC)
    return HitFound.model_validate(HITS.example()).model_copy(update={
        "event_id": uuid.uuid4(), "hit_id": uuid.uuid4(), "entry": entry,
        "place": Place(unit_code=seen, lat=lat, lon=lon), "reported_at": now, "seen_at": now,
    })


def withdrawal(entry: WatchlistEntry, reason: str = "subject detained") -> HitsWithdrawn:
    return HitsWithdrawn(occurred_at=datetime.now(UTC), entry_id=entry.entry_id,
                         owner_unit=entry.owner_unit, version=entry.version, reason=reason)


async def send(env: TestEnv, *events: HitFound | HitsWithdrawn) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
    await producer.start()
    try:
        topic = env.settings(CommonSettings).topic(HITS.name)
        for event in events:
            # Keyed by entry, as the matcher does: per-entry order holds.
            entry_id = event.entry.entry_id if isinstance(event, HitFound) else event.entry_id
            await producer.send_and_wait(topic, event.model_dump_json().encode(),
                                         key=entry_id.encode())
    finally:
        await producer.stop()


async def alert_of(client: Any, key: str, hit: HitFound) -> dict[str, Any] | None:
    response = await client.get("/v1/alerts", headers=bearer(key))
    assert response.status_code == 200, response.text
    for alert in response.json():
        if alert["hit_id"] == str(hit.hit_id):
            return alert
    return None


async def recipients(pool: Any, alert_id: str) -> dict[str, list[str]]:
    rows = await pool.fetch("SELECT unit_code, reasons FROM deliveries WHERE alert_id = $1",
                            uuid.UUID(alert_id))
    return {row["unit_code"]: list(row["reasons"]) for row in rows}


async def send_incident(env: TestEnv, incident: IncidentReported) -> None:
    """An incident on the incidents topic, keyed by its unit as ingest's relay does."""
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(env.settings(CommonSettings).topic(INCIDENTS.name),
                                     incident.model_dump_json().encode(),
                                     key=(incident.producer_unit or "").encode())
    finally:
        await producer.stop()
