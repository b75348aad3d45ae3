"""`GET /v1/watchlist/sync`: the entries a unit may see, a snapshot then deltas, by the
sharing scopes; nothing about entries it may not see (not even their ids); no change
skipped when an older transaction commits late; a new snapshot when the directory moved."""

from __future__ import annotations

import json

import asyncpg

from tests.conftest import bearer

LONG_XUYEN, THOT_NOT, SONG_CAU = "CA-30307", "CA-31212", "CA-22051"  # Sông Cầu: far away


async def put(ingest, directory, entry_id: str, scope: str, unit: str = LONG_XUYEN,
              name: str = "Nguyễn Văn Hùng") -> None:
    response = await ingest.put(f"/v1/watchlist/{entry_id}", headers=bearer(directory[unit]),
                                json={"category": "wanted_person", "full_name": name,
                                      "birth_year": 1990, "sharing_scope": scope})
    assert response.status_code == 200, response.text


async def sync(ingest, directory, unit: str, since: str | None = None, limit: int = 1000):
    params = {"limit": limit, **({"since": since} if since else {})}
    response = await ingest.get("/v1/watchlist/sync", params=params,
                                headers=bearer(directory[unit]))
    assert response.status_code == 200, response.text
    return response.json()


def changes(page) -> dict[str, str]:
    return {c["entry_id"]: c["change"] for c in page["changes"]}


async def test_a_unit_syncs_what_it_may_see_and_hears_when_it_no_longer_may(
        ingest, directory):
    await put(ingest, directory, "E-NEIGHBOURS", "neighbours")
    await put(ingest, directory, "E-OWNER", "owner_only")
    await put(ingest, directory, "E-ALL", "all_units")

    first = await sync(ingest, directory, THOT_NOT)  # borders Long Xuyên
    assert first["reset"] and not first["more"]
    assert changes(first) == {"E-NEIGHBOURS": "upsert", "E-ALL": "upsert"}
    assert {c["entry"]["full_name"] for c in first["changes"]} == {"Nguyễn Văn Hùng"}
    far = await sync(ingest, directory, SONG_CAU)
    assert changes(far) == {"E-ALL": "upsert"}
    mine = await sync(ingest, directory, LONG_XUYEN)
    assert set(changes(mine)) == {"E-NEIGHBOURS", "E-OWNER", "E-ALL"}

    # Nothing changed: an empty delta, the same cursor.
    again = await sync(ingest, directory, THOT_NOT, first["cursor"])
    assert again["changes"] == [] and not again["reset"] and again["cursor"] == first["cursor"]

    cancelled = await ingest.post("/v1/watchlist/E-NEIGHBOURS/cancel", json={"reason": "arrested"},
                                  headers=bearer(directory[LONG_XUYEN]))
    assert cancelled.status_code == 200
    await put(ingest, directory, "E-ALL", "owner_only")  # narrowed
    await put(ingest, directory, "E-SECRET", "owner_only")  # new, never shared
    await put(ingest, directory, "E-OWNER", "owner_only", name="Trần Văn Bình")  # changed

    delta = await sync(ingest, directory, THOT_NOT, first["cursor"])
    assert changes(delta) == {"E-NEIGHBOURS": "remove", "E-ALL": "remove"}
    assert all(c["entry"] is None for c in delta["changes"])  # a removal says nothing more
    far_delta = await sync(ingest, directory, SONG_CAU, far["cursor"])
    assert changes(far_delta) == {"E-ALL": "remove"}  # not a word of E-SECRET or E-OWNER
    mine_delta = await sync(ingest, directory, LONG_XUYEN, mine["cursor"])
    assert changes(mine_delta) == {"E-NEIGHBOURS": "remove", "E-ALL": "upsert",
                                   "E-SECRET": "upsert", "E-OWNER": "upsert"}


async def test_an_entry_narrowed_then_changed_or_cancelled_before_the_sync_is_removed(
        ingest, directory):
    """A unit hears `remove` when it could see the entry under any scope it has had, not
    only under the one before the last change."""
    await put(ingest, directory, "E-THEN-CHANGED", "all_units")
    await put(ingest, directory, "E-THEN-CANCELLED", "all_units")
    await put(ingest, directory, "E-WIDE-AGAIN", "neighbours")
    first = await sync(ingest, directory, SONG_CAU)  # sees only what all units see
    assert changes(first) == {"E-THEN-CHANGED": "upsert", "E-THEN-CANCELLED": "upsert"}

    for entry_id in ("E-THEN-CHANGED", "E-THEN-CANCELLED"):
        await put(ingest, directory, entry_id, "neighbours")  # narrowed ...
    await put(ingest, directory, "E-THEN-CHANGED", "owner_only", name="Trần Văn Bình")
    cancelled = await ingest.post("/v1/watchlist/E-THEN-CANCELLED/cancel",
                                  json={"reason": "arrested"},
                                  headers=bearer(directory[LONG_XUYEN]))
    assert cancelled.status_code == 200  # ... then changed again, or cancelled
    await put(ingest, directory, "E-WIDE-AGAIN", "owner_only")
    await put(ingest, directory, "E-WIDE-AGAIN", "neighbours")  # never visible far away

    delta = await sync(ingest, directory, SONG_CAU, first["cursor"])
    assert changes(delta) == {"E-THEN-CHANGED": "remove", "E-THEN-CANCELLED": "remove"}
    near = await sync(ingest, directory, THOT_NOT)
    assert changes(near) == {"E-WIDE-AGAIN": "upsert"}


async def test_pages_are_bounded_and_in_a_stable_order(ingest, directory):
    for n in range(7):
        await put(ingest, directory, f"E-{n}", "all_units", name=f"Lê Văn {'ABCDEFG'[n]}")
    seen, cursor, pages = [], None, 0
    while True:
        page = await sync(ingest, directory, SONG_CAU, cursor, limit=3)
        assert len(page["changes"]) <= 3
        assert page["reset"] == (cursor is None)
        seen += [c["entry_id"] for c in page["changes"]]
        cursor, pages = page["cursor"], pages + 1
        if not page["more"]:
            break
    assert seen == [f"E-{n}" for n in range(7)] and pages == 3


async def test_a_change_that_commits_late_is_not_skipped(ingest, directory, env):
    first = await sync(ingest, directory, SONG_CAU)
    # A transaction numbers its change, and stays open...
    slow = await asyncpg.connect(env.database_url)
    transaction = slow.transaction()
    await transaction.start()
    await slow.execute(
        """INSERT INTO watchlist_entries (entry_id, owner_unit, category, version, entry)
           VALUES ('E-SLOW', $1, 'wanted_person', 1, $2::jsonb)""", LONG_XUYEN,
        json.dumps({"entry_id": "E-SLOW", "owner_unit": LONG_XUYEN, "version": 1,
                    "category": "wanted_person", "full_name": "Phạm Văn Chậm",
                    "sharing_scope": "all_units"}))
    try:
        # ... while a later one commits.
        await put(ingest, directory, "E-FAST", "all_units", name="Đỗ Văn Nhanh")
        meanwhile = await sync(ingest, directory, SONG_CAU, first["cursor"])
        assert meanwhile["changes"] == []  # E-FAST waits for the older transaction
        assert meanwhile["cursor"] == first["cursor"]
        await transaction.commit()
    finally:
        await slow.close()
    after = await sync(ingest, directory, SONG_CAU, first["cursor"])
    assert [c["entry_id"] for c in after["changes"]] == ["E-SLOW", "E-FAST"]


async def test_a_change_numbered_first_by_a_younger_transaction_is_not_skipped(
        ingest, directory, env):
    """An older transaction (its id taken by an earlier write) numbers its change after a
    younger one numbered its own, and commits first: handed out by number alone, the
    younger one's change would fall behind the cursor when it commits."""
    first = await sync(ingest, directory, SONG_CAU)
    older = await asyncpg.connect(env.database_url)
    younger = await asyncpg.connect(env.database_url)

    async def insert(conn, entry_id: str, name: str) -> None:
        await conn.execute(
            """INSERT INTO watchlist_entries (entry_id, owner_unit, category, version, entry)
               VALUES ($1, $2, 'wanted_person', 1, $3::jsonb)""", entry_id, LONG_XUYEN,
            json.dumps({"entry_id": entry_id, "owner_unit": LONG_XUYEN, "version": 1,
                        "category": "wanted_person", "full_name": name,
                        "sharing_scope": "all_units"}))
    try:
        old_tx, young_tx = older.transaction(), younger.transaction()
        await old_tx.start()
        older_id = await older.fetchval("SELECT pg_current_xact_id()::text")
        await young_tx.start()
        await insert(younger, "E-YOUNG", "Phạm Văn Trẻ")  # numbered first
        younger_id = await younger.fetchval("SELECT pg_current_xact_id()::text")
        assert int(older_id) < int(younger_id)
        await insert(older, "E-OLD", "Đỗ Văn Già")  # numbered after it
        await old_tx.commit()
        meanwhile = await sync(ingest, directory, SONG_CAU, first["cursor"])
        assert [c["entry_id"] for c in meanwhile["changes"]] == ["E-OLD"]
        await young_tx.commit()
    finally:
        await older.close()
        await younger.close()
    after = await sync(ingest, directory, SONG_CAU, meanwhile["cursor"])
    assert [c["entry_id"] for c in after["changes"]] == ["E-YOUNG"]


async def test_a_directory_change_starts_a_new_snapshot_and_bad_cursors_are_refused(
        ingest, directory, pool):
    await put(ingest, directory, "E-NEIGHBOURS", "neighbours")
    first = await sync(ingest, directory, SONG_CAU)
    assert first["changes"] == []
    # Sông Cầu now borders Long Xuyên (say): the entry becomes visible without changing.
    await pool.execute("INSERT INTO adjacency (unit_a, unit_b) VALUES ($1, $2)",
                       min(LONG_XUYEN, SONG_CAU), max(LONG_XUYEN, SONG_CAU))
    after = await sync(ingest, directory, SONG_CAU, first["cursor"])
    assert after["reset"] and changes(after) == {"E-NEIGHBOURS": "upsert"}

    for bad in ("v2.1.1", "v1.-1.0", "1", "v1.1.1.1", "v1." + "9" * 30 + ".1",
                "v2.1.1.1.1", "v2.-1.1.1", "v2.99999999999999999999.1.1", "v3.1.1.1",
                "v3.1.1.1.1", "v3.99999999999999999999.1.1.1.1", "v3.1.1.1.1.-1",
                "v3.1.1.1.1." + "9" * 20, "v3.1.1.1." + "9" * 20 + ".1",
                "v3.1.1.1.1.\u0661"):
        response = await ingest.get("/v1/watchlist/sync", params={"since": bad},
                                    headers=bearer(directory[SONG_CAU]))
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["field"] == "since"
    # A cursor from beyond this database's transactions (it was restored from a backup
    # since): a new snapshot, not a delta that would skip what the restored one holds.
    _, xid, seq, version, system, timeline = after["cursor"].split(".")
    assert not (await sync(ingest, directory, SONG_CAU, after["cursor"]))["reset"]
    ahead = await sync(ingest, directory, SONG_CAU,
                       f"v3.{2**62}.{seq}.{version}.{system}.{timeline}")
    assert ahead["reset"] and changes(ahead) == {"E-NEIGHBOURS": "upsert"}
    # A cursor of another history of the database (another timeline, another cluster):
    # a new snapshot (see test_a_replica_of_a_history_left_behind_by_a_restore_...).
    for other in (f"v3.{xid}.{seq}.{version}.{system}.{int(timeline) + 1}",
                  f"v3.{xid}.{seq}.{version}.{(int(system) + 1) % 2**64}.{timeline}"):
        elsewhere = await sync(ingest, directory, SONG_CAU, other)
        assert elsewhere["reset"] and changes(elsewhere) == {"E-NEIGHBOURS": "upsert"}
    # Cursors of earlier versions of sync: a new snapshot, not an error.
    for old_cursor in ("v1.5.1", f"v2.{xid}.{seq}.{version}"):
        old = await sync(ingest, directory, SONG_CAU, old_cursor)
        assert old["reset"] and changes(old) == {"E-NEIGHBOURS": "upsert"}
    assert (await ingest.get("/v1/watchlist/sync")).status_code == 401

