"""`giapranh post`: a border post that keeps checking when its link is down.

The node keeps a replica of the watchlist entries its unit may see (`GET /v1/watchlist/sync`:
a snapshot, then the changes since its cursor, cancellations included) in SQLite, and the
same matching engine the matcher runs, so checks and sightings are answered at once, link or
no link, each answer marked with the age of the list it was checked against. The post's
sightings are queued on disk with their event ids and forwarded oldest first whenever the
link is up (ingest takes a repeated event id as the same report: a retry never makes two).

The replica's integrity is checked at start (a hash of its entries, written with each
sync): a torn or altered replica is dropped and synced again from a snapshot. The API key
is only ever held in memory (`--key` or `GIAPRANH_POST_KEY`). `giapranh post --wipe`
deletes the replica and the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

# (at module level: the routes' annotations are strings, resolved against these globals)
from fastapi import FastAPI

from services.ingest.api import SightingIn
from services.ingest.checks import CheckIn
from services.matcher.engine import MatchingEngine
from shared.events import Subject, WatchlistEntry
from shared.http import AnswerLanguage, install_error_handlers
from shared.i18n import N_, translate

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (entry_id TEXT PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    n INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
    queued_at TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'queued', answer TEXT);
"""


HASH_MODULUS = 2**256


def entry_hash(entry_id: str, entry: str) -> int:
    """One entry's share of the replica's hash. The replica's hash is the sum of its
    entries' SHA-256 (mod 2**256): a sync page adds and subtracts only what it changes, so
    writing the hash with every page costs the page, not the whole list (a first sync of
    100,000 entries in pages of 1,000 would otherwise hash 5 million entries); altering,
    adding or removing any entry still changes it."""
    return int.from_bytes(hashlib.sha256(f"{entry_id}\0{entry}".encode()).digest())


class ReplicaCorrupt(Exception):
    pass


class Replica:
    """The entries, the sync cursor and the queue, in one SQLite file."""

    def __init__(self, path: Path):
        # Wanted persons' particulars and the post's reports: the post's account only.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, **values: str) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            values.items())

    def digest(self) -> str:
        """The hash of every entry, as written with each sync (read in full at start)."""
        total = 0
        for entry_id, entry in self.db.execute("SELECT entry_id, entry FROM entries"):
            total += entry_hash(entry_id, entry)
        return f"{total % HASH_MODULUS:064x}"

    def entries(self) -> list[WatchlistEntry]:
        """Every entry, after checking the replica against the hash of its last sync."""
        expected = self.meta("hash")
        if expected is not None and expected != self.digest():
            raise ReplicaCorrupt(f"{self.path}: its entries do not match the hash written "
                                 "at its last sync")
        return [WatchlistEntry.model_validate_json(entry)
                for (entry,) in self.db.execute("SELECT entry FROM entries")]

    def drop_entries(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM entries")
            self.db.execute("DELETE FROM meta WHERE key IN ('cursor', 'hash', 'synced_at', "
                            "'complete')")

    @property
    def complete(self) -> bool:
        """False while a snapshot is being received (a first sync, or a new snapshot after
        a directory change, cut off midway): entries may be missing."""
        return self.meta("complete") != "0"


@dataclass
class Answer:
    matches: list[dict[str, Any]]
    list_as_of: datetime | None
    note: str
    stale: bool


class PostNode:
    def __init__(self, upstream: str, key: str, data_dir: Path, *,
                 stale_after: timedelta = timedelta(hours=1), page: int = 1000):
        self.upstream = upstream.rstrip("/")
        self._key = key
        self.replica = Replica(data_dir / "post.sqlite3")
        self.stale_after = stale_after
        self.page = page
        self.engine = MatchingEngine()
        self._forwarding = asyncio.Lock()
        try:
            self.engine.load(self.replica.entries())
        except ReplicaCorrupt as exc:
            log.warning("%s: dropped, a full sync follows", exc)
            self.replica.drop_entries()

    def close(self) -> None:
        self.replica.close()

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.upstream, timeout=10, headers={
            "Authorization": f"Bearer {self._key}"})

    # ----------------------------------------------------------------------------- sync

    @property
    def list_as_of(self) -> datetime | None:
        synced = self.replica.meta("synced_at")
        return datetime.fromisoformat(synced) if synced else None

    async def sync(self, progress: Callable[[int], None] | None = None) -> int:
        """Bring the replica up to date; the number of changes applied (given to
        `progress` after every page). Raises `httpx.HTTPError` when the upstream cannot be
        reached (the replica is unchanged from the last complete page)."""
        applied = 0
        async with self._client() as client:
            while True:
                cursor = self.replica.meta("cursor")
                response = await client.get("/v1/watchlist/sync", params={
                    "limit": self.page, **({"since": cursor} if cursor else {})})
                if response.status_code == 422 and cursor is not None:
                    # Upstream no longer takes this cursor (its changes were renumbered, or
                    # the replica came from elsewhere): start again from a snapshot.
                    log.warning("upstream refused the cursor %s (%s): full sync", cursor,
                                response.text[:200])
                    self.replica.drop_entries()
                    continue
                response.raise_for_status()
                page = response.json()
                applied += self._apply(page)
                if progress is not None:
                    progress(applied)
                if not page["more"]:
                    return applied

    def _apply(self, page: dict[str, Any]) -> int:
        db = self.replica.db
        with db:  # one transaction per page: the cursor moves with its changes
            total = int(self.replica.meta("hash") or "0", 16)
            if page["reset"]:
                total = 0
                # Until its last page arrives the replica is incomplete: the list's time is
                # withdrawn, so no answer claims a list it does not hold.
                db.execute("DELETE FROM entries")
                db.execute("DELETE FROM meta WHERE key = 'synced_at'")
                self.replica.set_meta(complete="0")
                self.engine = MatchingEngine()
            for change in page["changes"]:
                entry_id = change["entry_id"]
                old = db.execute("SELECT entry FROM entries WHERE entry_id = ?",
                                 (entry_id,)).fetchone()
                if old is not None:
                    total -= entry_hash(entry_id, old[0])
                self.engine.discard(entry_id)
                if change["change"] == "upsert":
                    entry = WatchlistEntry.model_validate(change["entry"])
                    stored = entry.model_dump_json()
                    db.execute("INSERT OR REPLACE INTO entries (entry_id, entry) VALUES (?, ?)",
                               (entry_id, stored))
                    total += entry_hash(entry_id, stored)
                    self.engine.upsert(entry)
                else:
                    db.execute("DELETE FROM entries WHERE entry_id = ?", (entry_id,))
            self.replica.set_meta(cursor=page["cursor"], hash=f"{total % HASH_MODULUS:064x}",
                                  **({} if page["more"] else {"synced_at": page["as_of"],
                                                              "complete": "1"}))
        return len(page["changes"])

    # ------------------------------------------------------------------- local answers

    def check(self, subject: Subject) -> Answer:
        """The local answer: listed subjects matching `subject`, with their reasons."""
        now = datetime.now(UTC)
        as_of = self.list_as_of
        matches = [{"entry": m.entry.model_dump(mode="json"), "score": m.score,
                    "reasons": [r.model_dump() for r in m.reasons],
                    "action": m.entry.action, "cautions": list(m.entry.cautions)}
                   for m in self.engine.match(subject, at=now)]
        stale = as_of is None or now - as_of > self.stale_after or not self.replica.complete
        when = f"{as_of.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if as_of else N_("never synced")
        note = N_("checked offline against the list of {when}").format(when=when)
        if not self.replica.complete:
            note = N_("checked offline against an INCOMPLETE list (its sync was cut off "
                      "before the last page: {count} entries so far)").format(
                count=len(self.engine))
        elif stale:
            note = N_("checked offline against the list of {when} (older than {age}: sync "
                      "when the link allows)").format(when=when, age=self.stale_after)
        return Answer(matches, as_of, note, stale)

    def report(self, sighting: dict[str, Any]) -> tuple[str, Answer]:
        """Queue a sighting for upstream (its event id kept, or given) and answer it
        locally at once."""
        body = dict(sighting)
        body["event_id"] = str(body.get("event_id") or uuid.uuid4())
        subject = Subject.model_validate(body["subject"])
        with self.replica.db:
            self.replica.db.execute(
                "INSERT OR IGNORE INTO queue (event_id, body, queued_at) VALUES (?, ?, ?)",
                (body["event_id"], json.dumps(body, ensure_ascii=False),
                 datetime.now(UTC).isoformat()))
        return body["event_id"], self.check(subject)

    def queue_counts(self) -> dict[str, int]:
        return dict(self.replica.db.execute("SELECT state, count(*) FROM queue GROUP BY state"))

    async def forward(self) -> int:
        """Send the queued sightings, oldest first, until one cannot go (the link is down,
        or upstream asks to wait); the number sent. A refusal (4xx other than 429) is set
        aside with its answer, not retried."""
        sent = 0
        # One forwarder at a time (the sync loop and each new sighting both start one).
        async with self._forwarding, self._client() as client:
            for n, body in self.replica.db.execute(
                    "SELECT n, body FROM queue WHERE state = 'queued' ORDER BY n").fetchall():
                response = await client.post("/v1/sightings", content=body,
                                             headers={"Content-Type": "application/json"})
                if response.status_code == 202:
                    state = "sent"
                elif response.status_code == 429 or response.status_code >= 500:
                    return sent
                else:
                    state = "refused"
                with self.replica.db:
                    self.replica.db.execute("UPDATE queue SET state = ?, answer = ? WHERE n = ?",
                                            (state, response.text, n))
                sent += state == "sent"
        return sent

    async def keep_in_touch(self, every: float) -> None:
        """Sync and forward every `every` seconds while the link allows, quietly."""
        backoff = every
        while True:
            failed: BaseException | None = None
            # Each on its own: a list that cannot be synced must not hold the queue back.
            for step in (self.sync, self.forward):
                try:
                    await step()
                except httpx.HTTPError as exc:
                    log.warning("upstream unreachable (%r): answering from the list of %s",
                                exc, self.list_as_of)
                    failed = exc
                except Exception as exc:  # noqa: BLE001 - the node must keep answering
                    # (a page it cannot read, a full disk): said loudly, tried again later.
                    log.exception("%s failed; trying again later", step.__name__)
                    failed = exc
            if failed is None:
                backoff = every
            else:
                wait = retry_after(failed) if isinstance(failed, httpx.HTTPError) else None
                backoff = min(max(backoff * 2, wait or 0), 300)
            await asyncio.sleep(backoff)


def retry_after(exc: httpx.HTTPError) -> float | None:
    """The seconds upstream asked to wait (429 and 503 carry `Retry-After`), if any."""
    if isinstance(exc, httpx.HTTPStatusError):
        with contextlib.suppress(ValueError):
            return float(exc.response.headers.get("Retry-After", ""))
    return None


def wipe(data_dir: Path) -> list[Path]:
    """Delete the replica and the queue; what was removed."""
    removed = []
    for path in data_dir.glob("post.sqlite3*"):
        path.unlink()
        removed.append(path)
    return removed


def create_app(node: PostNode, sync_seconds: float) -> FastAPI:
    """The post's local API (localhost): checks and sightings answered from the replica."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(node.keep_in_touch(sync_seconds))
        try:
            yield
        finally:
            task.cancel()
            node.close()

    app = FastAPI(title="giapranh border post", lifespan=lifespan)
    install_error_handlers(app, "post")  # refusals in the project's format, naming the field

    def answer(result: Answer, language: str) -> dict[str, Any]:
        """The answer, its reasons and note in the language asked for."""
        matches = result.matches if language == "en" else [
            {**m, "reasons": [{**r, "detail": translate(r["detail"], language)}
                              for r in m["reasons"]]} for m in result.matches]
        return {"matches": matches, "list_as_of": result.list_as_of,
                "note": translate(result.note, language), "stale": result.stale}

    @app.post("/checks")
    async def check(body: CheckIn, language: AnswerLanguage = "en") -> dict[str, Any]:
        return answer(node.check(body.subject), language)

    @app.post("/sightings", status_code=202)
    async def sighting(body: SightingIn, language: AnswerLanguage = "en") -> dict[str, Any]:
        event_id, result = node.report(body.model_dump(mode="json"))
        asyncio.create_task(_quietly(node.forward()))
        return {"event_id": event_id, "queued": True, **answer(result, language)}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return {"list_as_of": node.list_as_of, "complete": node.replica.complete,
                "entries": len(node.engine),
                "queue": node.queue_counts(), "upstream": node.upstream}

    return app


async def _quietly(work: Any) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await work
