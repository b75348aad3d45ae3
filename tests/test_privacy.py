"""Privacy: unmatched sightings lose their subject after the retention period; sightings
that raised an alert, and the alerts, are kept."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

from tests.conftest import ROOT, bearer, eventually
from tests.test_pipeline import SIGHTING, alerts, list_entry

OLD = (datetime.now(UTC) - timedelta(days=100)).isoformat()
RECENT = (datetime.now(UTC) - timedelta(days=10)).isoformat()
STRANGER = {"name": "LÊ THỊ NGỌC ÁNH", "national_id": "079 185 000 111", "birth_year": 1985}


async def status(ingest, key, event_id):
    return (await ingest.get(f"/v1/events/{event_id}", headers=bearer(key))).json()


async def test_unmatched_sightings_lose_their_subject_after_the_retention_period(
        env, pool, directory, ingest, notifier, matcher):
    key = directory["CA-31212"]
    await list_entry(env, pool)
    sent = {}
    for name, body in {
        "matched_old": {**SIGHTING, "occurred_at": OLD},
        "unmatched_old": {**SIGHTING, "occurred_at": OLD, "subject": STRANGER},
        "unmatched_recent": {**SIGHTING, "occurred_at": RECENT, "subject": STRANGER},
    }.items():
        response = await ingest.post("/v1/sightings", json={**body, "event_id": str(uuid.uuid4())},
                                     headers=bearer(key))
        assert response.status_code == 202
        sent[name] = response.json()["event_id"]
    await eventually(lambda: alerts(notifier, directory["CA-30307"]), what="the alert")

    async def relayed(event_id):
        return (await status(ingest, key, event_id))["status"] != "accepted"

    for name, event_id in sent.items():  # every one published first
        await eventually(lambda e=event_id: relayed(e), what=f"{name} relayed")

    dry = subprocess.run([sys.executable, "-m", "giapranh.cli", "purge", "--dry-run",
                          "--database-url", env.database_url], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0 and "1 unmatched sighting(s) older than 90 days would be" in (
        dry.stdout), dry.stdout + dry.stderr
    purged = subprocess.run([sys.executable, "-m", "giapranh.cli", "purge", "--database-url",
                             env.database_url], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert purged.returncode == 0 and "purged 1 " in purged.stdout, purged.stdout + purged.stderr

    rows = {str(r["event_id"]): r for r in await pool.fetch(
        "SELECT event_id, payload::text AS payload, redacted_at, person_id FROM events")}
    gone = rows[sent["unmatched_old"]]
    assert gone["redacted_at"] is not None
    assert "LÊ THỊ" not in gone["payload"] and "079185000111" not in gone["payload"].replace(" ", "")
    assert '"redacted": true' in gone["payload"] and "CA-31212" in gone["payload"]
    assert gone["person_id"] is not None  # who reported it stays
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1",
                               uuid.UUID(sent["unmatched_old"])) == 0
    assert (await status(ingest, key, sent["unmatched_old"]))["status"] == "purged"
    # The matched one, the recent one and the alert are kept whole.
    assert "NGUYEN VAN HUNG" in rows[sent["matched_old"]]["payload"]
    assert "LÊ THỊ NGỌC ÁNH" in rows[sent["unmatched_recent"]]["payload"]
    assert (await status(ingest, key, sent["matched_old"]))["status"] == "matched"
    [alert] = await alerts(notifier, directory["CA-30307"])
    assert alert["correlation_id"] == sent["matched_old"]
    # The late-matching window of a restarted matcher does not see it.
    window = {str(r["event_id"]) for r in await pool.fetch("SELECT event_id FROM ingest_reports")}
    assert sent["unmatched_old"] not in window and sent["matched_old"] in window
    # A replay of the period cannot publish it again.
    from services.ingest.reconciler import replay
    assert await replay(pool, datetime.now(UTC) - timedelta(hours=1),
                        types=["SightingReported"]) == 2  # of 3 sent
