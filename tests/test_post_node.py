"""A border post's node against the real ingest: it syncs; with the link down it answers a
check and a sighting of a listed person locally with a hit; an entry cancelled upstream
meanwhile stops matching after the next sync; the queued sighting reaches upstream exactly
once when the link returns. A tampered replica is dropped and synced again."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import pytest

from giapranh.post import PostNode, retry_after, wipe
from giapranh.post import create_app as create_post_app
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from shared.events import Subject
from tests.conftest import bearer, eventually, served

THOT_NOT, LONG_XUYEN = "CA-31212", "CA-30307"
WANTED = {"category": "wanted_person", "full_name": "Nguyễn Văn Hùng", "birth_year": 1991,
          "national_id": "089091004217", "sharing_scope": "neighbours"}
SEEN = Subject(name="NGUYEN VAN HUNG", national_id="089 091 004 217")


async def put_entry(url: str, key: str, entry_id: str, body: dict) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.put(f"/v1/watchlist/{entry_id}", json=body, headers=bearer(key))
        assert response.status_code == 200, response.text


async def test_a_post_keeps_checking_with_the_link_down(env, topics, directory, pool, tmp_path):
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2)
    async with served(create_ingest(settings)) as url:
        await put_entry(url, directory[LONG_XUYEN], "LX-1", WANTED)
        await put_entry(url, directory[LONG_XUYEN], "LX-SECRET",
                        {**WANTED, "full_name": "Trần Văn Bí Mật", "national_id": "089091000001",
                         "sharing_scope": "owner_only"})
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")
        assert await node.sync() == 1  # LX-SECRET is not Thốt Nốt's to see
        assert node.check(SEEN).matches[0]["entry"]["entry_id"] == "LX-1"
    # The link is down (ingest is gone) ...
    with pytest.raises(httpx.HTTPError):
        await node.sync()
    answer = node.check(SEEN)
    [match] = answer.matches
    assert match["entry"]["entry_id"] == "LX-1"
    assert {r["feature"] for r in match["reasons"]} >= {"national_id", "name"}
    assert answer.note.startswith("checked offline against the list of ") and not answer.stale
    sighting = {"occurred_at": "2026-12-03T08:00:00+07:00",
                "subject": SEEN.model_dump(exclude_none=True),
                "place": {"unit_code": THOT_NOT, "address": "trạm kiểm soát"}}
    event_id, local = node.report(sighting)
    assert [m["entry"]["entry_id"] for m in local.matches] == ["LX-1"]
    assert await _forwarding_fails(node)
    assert node.queue_counts() == {"queued": 1}

    # ... meanwhile, upstream, Long Xuyên cancels the entry (the subject was arrested).
    from services.ingest.store import IngestStore
    await IngestStore(pool, settings).cancel_watchlist_entry("LX-1", unit_code=LONG_XUYEN,
                                                            reason="arrested")
    assert node.check(SEEN).matches  # still on the replica until the link returns

    node.close()
    node = PostNode("http://unused", directory[THOT_NOT], tmp_path / "post")  # restarted
    assert len(node.engine) == 1 and node.queue_counts() == {"queued": 1}
    async with served(create_ingest(settings)) as url:  # the link is back
        node.upstream = url
        assert await node.forward() == 1
        assert await node.forward() == 0  # sent once: nothing left to send
        await node.sync()
        assert node.check(SEEN).matches == []  # the cancellation arrived
        async with httpx.AsyncClient(base_url=url) as client:
            status = await client.get(f"/v1/events/{event_id}",
                                      headers=bearer(directory[THOT_NOT]))
            assert status.status_code == 200, status.text
    assert await pool.fetchval("SELECT count(*) FROM events WHERE event_id = $1",
                               uuid.UUID(event_id)) == 1
    assert node.queue_counts() == {"sent": 1}
    node.close()


async def _forwarding_fails(node: PostNode) -> bool:
    try:
        await node.forward()
    except httpx.HTTPError:
        return True
    return False


async def test_a_tampered_replica_is_dropped_and_synced_again(env, topics, directory,
                                                              tmp_path):
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2)
    async with served(create_ingest(settings)) as url:
        await put_entry(url, directory[LONG_XUYEN], "LX-1", WANTED)
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")
        await node.sync()
        node.close()
        # (readable by the post's account only)
        assert (tmp_path / "post").stat().st_mode & 0o077 == 0
        assert (tmp_path / "post" / "post.sqlite3").stat().st_mode & 0o077 == 0
        # Someone edits the replica behind the node's back.
        db = sqlite3.connect(tmp_path / "post" / "post.sqlite3")
        db.execute("UPDATE entries SET entry = replace(entry, 'Hùng', 'Hưng')")
        db.commit()
        db.close()
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")
        assert len(node.engine) == 0 and node.list_as_of is None  # refused, not loaded
        assert await node.sync() == 1  # a snapshot again
        assert node.check(SEEN).matches[0]["entry"]["full_name"] == "Nguyễn Văn Hùng"
        node.close()
        db = sqlite3.connect(tmp_path / "post" / "post.sqlite3")  # a row lost (torn file)
        db.execute("DELETE FROM entries")
        db.commit()
        db.close()
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")
        assert node.list_as_of is None  # refused: the next sync is a snapshot again
        assert await node.sync() == 1 and len(node.engine) == 1
        node.close()
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")  # an honest restart
        assert len(node.engine) == 1 and node.list_as_of is not None
        node.close()
    assert [p.name for p in wipe(tmp_path / "post")] == ["post.sqlite3"]
    assert not (tmp_path / "post" / "post.sqlite3").exists()


async def test_a_refused_sighting_is_set_aside_not_retried(env, topics, directory, tmp_path):
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2)
    async with served(create_ingest(settings)) as url:
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")
        node.report({"occurred_at": "2026-12-03T08:00:00+07:00",
                     "subject": {"name": "LE VAN A"}, "place": {"unit_code": "CA-99999"}})
        assert await node.forward() == 0
        assert node.queue_counts() == {"refused": 1}
        assert await node.forward() == 0  # not sent again
        node.close()


class CutOff(Exception):
    pass


async def test_a_snapshot_cut_off_midway_is_flagged_incomplete_and_resumed(env, topics,
                                                                          directory, tmp_path):
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2)
    async with served(create_ingest(settings)) as url:
        await put_entry(url, directory[LONG_XUYEN], "LX-1", WANTED)
        await put_entry(url, directory[LONG_XUYEN], "LX-2",
                        {**WANTED, "full_name": "Lê Văn Tư", "national_id": "089091000002"})
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post", page=1)

        def cut_after_first_page(applied: int) -> None:
            raise CutOff

        with pytest.raises(CutOff):
            await node.sync(progress=cut_after_first_page)
        answer = node.check(SEEN)
        # Half a list must not pass for a list of some time: no time, flagged, said so.
        assert node.list_as_of is None and answer.stale and "INCOMPLETE" in answer.note
        node.close()
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post", page=1)  # restarted
        assert len(node.engine) == 1 and not node.replica.complete
        seen = []
        assert await node.sync(progress=seen.append) == 1  # resumed, not started again
        assert seen == [1] and len(node.engine) == 2 and node.replica.complete
        answer = node.check(SEEN)
        assert answer.note.startswith("checked offline against the list of ")
        assert not answer.stale and answer.matches[0]["entry"]["entry_id"] == "LX-1"
        node.close()


def test_the_node_waits_as_long_as_upstream_asks():
    request = httpx.Request("GET", "http://upstream/v1/watchlist/sync")
    busy = httpx.Response(429, headers={"Retry-After": "7"}, request=request)
    assert retry_after(httpx.HTTPStatusError("busy", request=request, response=busy)) == 7.0
    failing = httpx.Response(502, request=request)
    assert retry_after(httpx.HTTPStatusError("bad", request=request, response=failing)) is None
    assert retry_after(httpx.ConnectError("refused", request=request)) is None


async def test_the_posts_local_api_answers_at_once_and_forwards_once(env, topics, directory,
                                                                    pool, tmp_path):
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2)
    async with served(create_ingest(settings)) as url:
        await put_entry(url, directory[LONG_XUYEN], "LX-1", WANTED)
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")
        await node.sync()
        local = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_post_app(node, 30)),
                                  base_url="http://post")
        async with local:
            check = await local.post("/checks", json={"subject": {"name": "NGUYEN VAN HUNG",
                                                                  "birth_year": 1991}})
            assert check.status_code == 200, check.text
            assert [m["entry"]["entry_id"] for m in check.json()["matches"]] == ["LX-1"]
            assert check.json()["note"].startswith("checked offline against the list of ")
            in_vietnamese = await local.post(
                "/checks", json={"subject": {"name": "NGUYEN VAN HUNG", "birth_year": 1991}},
                headers={"Accept-Language": "vi"})
            assert in_vietnamese.json()["note"].startswith(
                "tra cứu ngoại tuyến theo danh sách lúc ")
            assert in_vietnamese.json()["matches"][0]["reasons"][0]["detail"].startswith(
                "đủ họ tên: NGUYEN VAN HUNG ≈ ")
            event_id = str(uuid.uuid4())
            sighting = {"event_id": event_id, "occurred_at": "2026-12-03T08:00:00+07:00",
                        "subject": {"national_id": "089091004217"},
                        "place": {"unit_code": THOT_NOT}}
            for _ in range(2):  # the officer presses twice: one report
                reported = await local.post("/sightings", json=sighting)
                assert reported.status_code == 202, reported.text
                assert reported.json()["event_id"] == event_id
                assert reported.json()["matches"][0]["entry"]["entry_id"] == "LX-1"
            bad = await local.post("/sightings", json={**sighting, "occurred_at": "yesterday"})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "occurred_at"
            status = await local.get("/status")
            assert status.json()["entries"] == 1 and status.json()["complete"]

        async def forwarded() -> bool:
            await node.forward()
            return node.queue_counts() == {"sent": 1}

        await eventually(forwarded, what="the sighting forwarded")
    assert await pool.fetchval("SELECT count(*) FROM events WHERE event_id = $1",
                               uuid.UUID(event_id)) == 1
    node.close()


async def test_a_cursor_upstream_refuses_starts_a_full_sync(env, topics, directory, tmp_path):
    settings = env.settings(IngestSettings, relay_idle_seconds=0.2)
    async with served(create_ingest(settings)) as url:
        await put_entry(url, directory[LONG_XUYEN], "LX-1", WANTED)
        node = PostNode(url, directory[THOT_NOT], tmp_path / "post")
        await node.sync()
        node.replica.set_meta(cursor="v0.not-a-cursor")
        node.replica.db.commit()
        assert await node.sync() == 1  # a snapshot, not a 422 for ever
        assert node.replica.meta("cursor").startswith("v3.") and len(node.engine) == 1
        assert node.check(SEEN).matches[0]["entry"]["entry_id"] == "LX-1"
        node.close()
