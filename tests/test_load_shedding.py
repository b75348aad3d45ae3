"""Single requests under load: group commit, cached keys, and refusing work at once
(503 `overloaded` with Retry-After) instead of letting clients time out."""

from __future__ import annotations

import asyncio
import glob
import urllib.parse
import uuid
from datetime import timedelta
from typing import Any, Literal

import asyncpg
import pytest

from services.ingest.api import SightingIn, _fingerprint, _sighting
from services.ingest.app import create_app as create_ingest
from services.ingest.groupcommit import GroupCommit
from services.ingest.settings import IngestSettings
from services.ingest.store import Accepted, IngestStore, Report
from shared.auth import issue_api_key
from shared.db import create_pool, server_process
from shared.errors import ServiceUnavailable
from shared.events import utcnow
from shared.settings import CommonSettings
from shared.topics import SIGHTINGS
from tests.conftest import _serve, bearer, eventually
from tests.test_ingest_api import SIGHTING


def sighting(event_id: uuid.UUID | None = None, name: str = "NGUYEN VAN A") -> dict:
    return {**SIGHTING, "event_id": str(event_id or uuid.uuid4()),
            "subject": {"name": name}}


async def stored(pool: asyncpg.Pool, ids: list[str]) -> tuple[int, int]:
    """(events, outbox rows) stored for these event ids."""
    events = await pool.fetchval(
        "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", ids)
    outbox = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE event_id = ANY($1::uuid[])", ids)
    return events, outbox


async def test_concurrent_single_sightings_share_transactions_and_keep_their_answers(
    env, topics, directory, pool
):
    # (one key sends them all at once: more than its unit's share of the places)
    settings = env.settings(IngestSettings, max_requests_in_flight_per_unit=0)
    async for ingest in _serve(create_ingest(settings)):
        await _share_transactions(ingest, directory, pool)


async def _share_transactions(ingest: Any, directory: dict[str, str],
                              pool: asyncpg.Pool) -> None:
    key = bearer(directory["CA-31212"])
    taken = uuid.uuid4()
    first = await ingest.post("/v1/sightings", json=sighting(taken), headers=key)
    assert first.status_code == 202
    groups_before = await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM events")

    fresh = [sighting() for _ in range(200)]
    repeat = sighting(uuid.UUID(fresh[0]["event_id"]))  # the same request again, at once
    conflict = sighting(taken, name="TRAN VAN B")  # an id used for another body
    answers = await asyncio.gather(*(
        ingest.post("/v1/sightings", json=body, headers=key)
        for body in [*fresh, repeat, conflict]))

    statuses = [a.status_code for a in answers]
    assert statuses[:-1] == [202] * 201, statuses
    assert answers[-1].status_code == 409
    assert answers[-1].json()["error"]["field"] == "event_id"
    assert [a.json()["event_id"] for a in answers[:200]] == [b["event_id"] for b in fresh]
    assert sum(a.json()["duplicate"] for a in answers[:201]) == 1  # the repeat, only
    ids = [b["event_id"] for b in fresh]
    assert await stored(pool, ids) == (200, 200)  # each once, with its outbox row
    # Written in fewer transactions than requests (each transaction id is one group).
    groups = await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM events") - groups_before
    assert groups < 200, groups


@pytest.mark.parametrize("stuck_count", [1, 5])
async def test_ingest_refuses_at_once_while_the_database_is_not_keeping_up(
    env, topics, directory, pool, stuck_count
):
    """Refused while the reports already taken by a writer wait on the database, even
    when a writer took them all and none waits in the queue (one report alone, or a
    burst taken whole)."""
    settings = env.settings(IngestSettings, ingest_max_wait_seconds=0.3,
                            relay_idle_seconds=0.2)
    async for client in _serve(create_ingest(settings)):
        key = bearer(directory["CA-31212"])
        assert (await client.post("/v1/sightings", json=sighting(), headers=key)
                ).status_code == 202  # the key is cached, the unit known
        # The database stalls: something holds the outbox table.
        blocker = await asyncpg.connect(env.database_url)
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        try:
            stuck_bodies = [sighting() for _ in range(stuck_count)]
            stuck = [asyncio.create_task(client.post("/v1/sightings", json=body, headers=key))
                     for body in stuck_bodies]
            await asyncio.sleep(0.5)  # longer than the 0.3 s a report may wait
            # (Answered while the lock is still held: had it queued, it would hang here.)
            # (bounded: a request that queues must fail this test, not hang it with the
            # lock held, which would stall every test after it)
            refused = await asyncio.wait_for(
                client.post("/v1/sightings", json=sighting(), headers=key), timeout=10)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "overloaded"
            assert refused.headers["retry-after"] == "1"
            assert "GIAPRANH_INGEST_MAX_WAIT_SECONDS" in refused.json()["error"]["message"]
            assert not any(task.done() for task in stuck)
        finally:
            await holding.rollback()
            await blocker.close()
        # Those already waiting are written and answered once the database moves again.
        answers = await asyncio.gather(*stuck)
        assert [a.status_code for a in answers] == [202] * stuck_count
        assert await stored(pool, [b["event_id"] for b in stuck_bodies]) == (stuck_count,) * 2
        again = await client.post("/v1/sightings", json=sighting(), headers=key)
        assert again.status_code == 202


async def test_a_write_stuck_past_its_timeout_is_cancelled_and_the_writers_go_on(
    env, topics, directory, pool
):
    """A writer waiting on the database for ever (a lock nobody releases, a connection
    that went silent) would keep the oldest wait growing and every later report refused.
    Past GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS its write is cancelled and its request
    answered 503 to try again (nothing stored); the retry is then written once."""
    settings = env.settings(IngestSettings, ingest_write_timeout_seconds=0.5,
                            ingest_max_wait_seconds=5)
    async for client in _serve(create_ingest(settings)):
        key = bearer(directory["CA-31212"])
        assert (await client.post("/v1/sightings", json=sighting(), headers=key)
                ).status_code == 202
        blocker = await asyncpg.connect(env.database_url)
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        bodies = [sighting() for _ in range(4)]
        loop = asyncio.get_running_loop()
        try:
            started = loop.time()
            # (bounded: a write that is never cancelled must fail this test, not hang it)
            answers = await asyncio.wait_for(asyncio.gather(*(
                client.post("/v1/sightings", json=body, headers=key) for body in bodies)),
                timeout=10)
            took = loop.time() - started
            assert [a.status_code for a in answers] == [503] * 4, [a.text for a in answers]
            for answer in answers:
                assert answer.json()["error"]["code"] == "unavailable"
                assert "GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS" in answer.json()["error"][
                    "message"]
                assert answer.headers["retry-after"] == "1"
            assert took < 5, took  # (answered while the lock is still held)
        finally:
            await holding.rollback()
            await blocker.close()
        assert await stored(pool, [b["event_id"] for b in bodies]) == (0, 0)
        retried = await asyncio.gather(*(
            client.post("/v1/sightings", json=body, headers=key) for body in bodies))
        assert [a.status_code for a in retried] == [202] * 4
        assert not any(a.json()["duplicate"] for a in retried)
        assert await stored(pool, [b["event_id"] for b in bodies]) == (4, 4)


class StallingProxy:
    """TCP in front of PostgreSQL's socket, to make a connection go silent in the middle
    of a write: `arm(marker, ...)`, and the connection that sends `marker` (a report's
    event id, which the write's parameters carry) stops passing the server's answers
    (`"answers"`: the write reaches the database, its answer never comes back) or the
    write itself (`"both"`); with `"everything"`, every connection, open or new, goes
    silent too (the database unreachable); with `"cut"`, the connection is closed when
    the server's next answer comes, which the client never gets (with `then`, once that
    connection has also sent `then`: its COMMIT, say). `resume()` lets everything through
    again."""

    def __init__(self, database_url: str):
        url = urllib.parse.urlsplit(database_url)
        folder = urllib.parse.parse_qs(url.query)["host"][0]
        [self._socket] = [path for path in glob.glob(f"{folder}/.s.PGSQL.*")
                          if not path.endswith(".lock")]
        self._database = url.path
        self._links: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._armed: tuple[bytes, str, bytes | None] | None = None
        self._silent = False
        self.tripped = False

    async def __aenter__(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{port}{self._database}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.resume()  # (a failed test: its service's connections close as it stops)
        self._server.close()
        for task in self._tasks:
            task.cancel()

    def arm(self, marker: bytes, silence: Literal["answers", "both", "everything", "cut"],
            then: bytes | None = None) -> None:
        self._armed = (marker, silence, then)

    def resume(self) -> None:
        self._silent = False
        for link in self._links:
            link["to_server"] = link["to_client"] = True
            for waiter in link["waiters"]:
                waiter.set()

    def _trip(self, link: dict[str, Any], data: bytes) -> None:
        if link.get("cut_on") is not None and link["cut_on"] in data:
            link["cut"], link["cut_on"] = True, None
        if self._armed is None or self._armed[0] not in data:
            return
        (_, silence, then), self._armed = self._armed, None
        self.tripped = True
        if silence == "cut":
            if then is None:
                link["cut"] = True
            else:
                link["cut_on"] = then
            return
        link["to_client"] = False
        if silence != "answers":
            link["to_server"] = False
        if silence == "everything":
            self._silent = True
            for other in self._links:
                other["to_server"] = other["to_client"] = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link: dict[str, Any] = {"to_server": not self._silent,
                                "to_client": not self._silent, "waiters": []}
        self._links.append(link)
        up_reader, up_writer = await asyncio.open_unix_connection(self._socket)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       way: str) -> None:
            while data := await source.read(65536):
                if way == "to_server":
                    self._trip(link, data)
                elif link.get("cut"):  # (an answer the client never gets: both closed)
                    writer.close()
                    up_writer.close()
                    return
                while not link[way]:  # (silent: held until resumed)
                    waiter = asyncio.Event()
                    link["waiters"].append(waiter)
                    await waiter.wait()
                sink.write(data)
                await sink.drain()
            sink.close()  # (one side closed: so is the other)

        for task in (asyncio.create_task(pipe(reader, up_writer, "to_server")),
                     asyncio.create_task(pipe(up_reader, writer, "to_client"))):
            self._tasks.add(task)


async def _ingest_through(env, proxy: StallingProxy):
    settings = env.settings(IngestSettings, database_url=proxy.url,
                            ingest_write_timeout_seconds=0.5, ingest_max_wait_seconds=30)
    async for client in _serve(create_ingest(settings)):
        yield client


async def test_a_write_whose_answer_is_lost_is_settled_as_stored_not_refused(
    env, topics, directory, pool
):
    """The write commits, then its connection goes silent: the answer never comes back.
    Past the timeout the writer lets go; what became of the report is settled on another
    connection: stored, so 202 (a 503 would make a client without an event id store it
    twice), and no later request is held up by the silent connection."""
    async with StallingProxy(env.database_url) as proxy:
        async for client in _ingest_through(env, proxy):
            key = bearer(directory["CA-31212"])
            body = sighting()
            proxy.arm(uuid.UUID(body["event_id"]).bytes, "answers")
            # (bounded: a writer that waits on the silent connection fails, not hangs, this)
            answer = await asyncio.wait_for(
                client.post("/v1/sightings", json=body, headers=key), timeout=10)
            assert answer.status_code == 202, answer.text
            assert answer.json()["duplicate"] is False
            assert await stored(pool, [body["event_id"]]) == (1, 1)
            later = sighting()
            assert (await asyncio.wait_for(client.post(
                "/v1/sightings", json=later, headers=key), timeout=10)).status_code == 202
            assert await stored(pool, [later["event_id"]]) == (1, 1)
            proxy.resume()  # (for the service's own connections to close as it stops)


async def test_a_write_on_a_silent_connection_is_refused_then_stored_once_on_retry(
    env, topics, directory, pool
):
    """The connection goes silent before the write reaches the database: settled as not
    stored, answered 503 to try again, in about the timeout; the writer goes on (another
    connection) and the retry is stored once. When even settling gets no answer (the
    database unreachable), 503 names the event id to retry with."""
    async with StallingProxy(env.database_url) as proxy:
        async for client in _ingest_through(env, proxy):
            key = bearer(directory["CA-31212"])
            body = sighting()
            proxy.arm(uuid.UUID(body["event_id"]).bytes, "both")
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await asyncio.wait_for(
                client.post("/v1/sightings", json=body, headers=key), timeout=10)
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
            assert "did not store the report" in answer.json()["error"]["message"]
            assert loop.time() - started < 5
            assert await stored(pool, [body["event_id"]]) == (0, 0)
            retried = await asyncio.wait_for(
                client.post("/v1/sightings", json=body, headers=key), timeout=10)
            assert retried.status_code == 202, retried.text
            assert await stored(pool, [body["event_id"]]) == (1, 1)

            body = sighting()
            proxy.arm(uuid.UUID(body["event_id"]).bytes, "everything")
            answer = await asyncio.wait_for(
                client.post("/v1/sightings", json=body, headers=key), timeout=10)
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["field"] == "event_id"
            assert body["event_id"] in error["message"]
            assert "may have been stored" in error["message"]
            proxy.resume()
            retried = await asyncio.wait_for(
                client.post("/v1/sightings", json=body, headers=key), timeout=10)
            assert retried.status_code == 202, retried.text
            assert await stored(pool, [body["event_id"]]) == (1, 1)


async def test_a_write_whose_connection_drops_after_the_commit_is_settled_as_stored(
    env, topics, directory, pool
):
    """The connection is lost (closed, not silent) once the write has committed and
    before its answer comes: the client must not be told 503 for a stored report (one
    without an event id would send it again, stored twice). Settled apart like a write
    out of time: 202, stored once; a single report (group commit) and a batch, whose
    COMMIT's answer is lost."""
    async with StallingProxy(env.database_url) as proxy:
        async for client in _ingest_through(env, proxy):
            key = bearer(directory["CA-31212"])
            body = sighting()
            proxy.arm(uuid.UUID(body["event_id"]).bytes, "cut")
            answer = await asyncio.wait_for(
                client.post("/v1/sightings", json=body, headers=key), timeout=10)
            assert answer.status_code == 202, answer.text
            assert answer.json()["duplicate"] is False
            assert await stored(pool, [body["event_id"]]) == (1, 1)

            bodies = [sighting() for _ in range(3)]
            proxy.arm(uuid.UUID(bodies[1]["event_id"]).bytes, "cut", then=b"COMMIT")
            answer = await asyncio.wait_for(client.post(
                "/v1/sightings/batch", json={"sightings": bodies}, headers=key), timeout=10)
            assert answer.status_code == 202, answer.text
            assert await stored(pool, [b["event_id"] for b in bodies]) == (3, 3)
            # (and the writer goes on)
            later = sighting()
            assert (await asyncio.wait_for(client.post(
                "/v1/sightings", json=later, headers=key), timeout=10)).status_code == 202


async def test_settling_ends_only_the_server_process_it_names(env, pool):
    """A pid alone may name a later process once the write's own has ended (pids are
    reused): settling ends a process only when its start matches too, and ends it when
    it does."""
    settings = env.settings(IngestSettings)
    named = await create_pool(settings, migrate=False, name_processes=True)
    store = IngestStore(named, settings)
    async with named.acquire() as healthy:
        pid, started = server_process(healthy)
        assert started is not None
        assert await store.settle((pid, started - timedelta(seconds=1)), [], 2.0) == []
        assert await healthy.fetchval("SELECT 1") == 1  # (left alone)
        assert await store.settle((pid, started), [], 2.0) == []
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
                            asyncpg.AdminShutdownError)):
            await healthy.fetchval("SELECT 1")
    await named.close()


async def test_a_role_kept_from_pg_stat_activity_still_connects(env, pool):
    """Naming server processes reads `pg_stat_activity`; a hardened database may revoke
    it. Ingest's pool opens all the same, its processes named by pid alone."""
    role = f"kept_{uuid.uuid4().hex[:8]}"
    database = await pool.fetchval("SELECT current_database()")
    await pool.execute(f"CREATE ROLE {role} LOGIN; "
                       f"GRANT CONNECT ON DATABASE {database} TO {role}; "
                       "REVOKE SELECT ON pg_stat_activity FROM PUBLIC")
    try:
        url = env.database_url.replace("postgres:@", f"{role}:@", 1)
        assert url != env.database_url
        kept = await create_pool(env.settings(IngestSettings, database_url=url),
                                 migrate=False, name_processes=True)
        async with kept.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == role
            assert server_process(conn)[1] is None
        await kept.close()
    finally:
        await pool.execute("GRANT SELECT ON pg_stat_activity TO PUBLIC")


def report(event_id: uuid.UUID | None = None) -> Report:
    body = SightingIn.model_validate({**sighting(event_id), "event_id": event_id})
    return Report(_sighting(body, "CA-31212", utcnow()), _fingerprint(body), None)


async def test_a_report_written_is_accepted_when_the_check_of_a_repeated_id_fails(
    env, directory, pool
):
    """A group's insert commits by itself; a second statement then looks up the ids seen
    before. When that one fails (cancelled: a statement timeout, `pg_cancel_backend`),
    the reports the insert wrote are stored: 202, not 503 "try again", which would make
    a client that sent no event id store its report twice. Only the repeated one is
    refused, naming its id. Everything real: the statement is held at a proxy while the
    table is locked, then cancelled while it waits."""
    settings = env.settings(IngestSettings)
    async with StallingProxy(env.database_url) as proxy:
        through = await create_pool(env.settings(IngestSettings, database_url=proxy.url),
                                    migrate=False, name_processes=True)
        store = IngestStore(through, settings)
        repeated = report(uuid.uuid4())
        await store.record_many([repeated], spec=SIGHTINGS)  # its retry repeats the id
        proxy.arm(b"request_hash, recorded_at FROM events", "both")  # (the look-up)
        # (a write timeout far beyond the test's waits: on a loaded machine the steps up to
        # the lock took long enough for a 10 s one to end the write first, and the look-up
        # to be gone before it could wait for the lock)
        group = GroupCommit(store, SIGHTINGS, writers=1, write_timeout_seconds=120)
        writer = asyncio.create_task(group.run())
        fresh = report()  # a client that sent no event id: ingest made this one
        answers = asyncio.gather(group.record(repeated), group.record(fresh),
                                 return_exceptions=True)
        async def held() -> bool:
            return proxy.tripped
        await eventually(held, what="the look-up held at the proxy")
        blocker = await asyncpg.connect(env.database_url)
        try:
            await blocker.execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            proxy.resume()
            waiting = await eventually(lambda: blocker.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%request_hash, recorded_at FROM events%'"),
                timeout=60, what="the look-up waiting for the lock")
            await pool.fetchval("SELECT pg_cancel_backend($1)", waiting)
            again, first = await asyncio.wait_for(answers, timeout=60)
        finally:
            await blocker.close()
            writer.cancel()
            await through.close()
    assert isinstance(first, Accepted) and not first.duplicate, first
    assert await stored(pool, [str(fresh.event.event_id)]) == (1, 1)
    assert isinstance(again, ServiceUnavailable), again
    assert again.field == "event_id" and str(repeated.event.event_id) in again.message


async def test_beyond_its_requests_in_flight_a_service_answers_503_with_retry_after(
    env, topics, directory, pool
):
    settings = env.settings(IngestSettings, max_requests_in_flight=3,
                            max_requests_in_flight_per_unit=0)  # (one key sends them all)
    async for client in _serve(create_ingest(settings)):
        key = bearer(directory["CA-31212"])
        blocker = await asyncpg.connect(env.database_url)
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        try:
            held = [asyncio.create_task(client.post("/v1/sightings", json=sighting(),
                                                    headers=key)) for _ in range(3)]
            await asyncio.sleep(0.3)
            refused = await asyncio.wait_for(
                client.post("/v1/sightings", json=sighting(), headers=key), timeout=10)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
            # Probes and scrapes are never refused: they must see the service as it is.
            assert (await client.get("/healthz")).status_code == 200
        finally:
            await holding.rollback()
            await blocker.close()
        assert [a.status_code for a in await asyncio.gather(*held)] == [202] * 3
        assert (await client.post("/v1/sightings", json=sighting(), headers=key)
                ).status_code == 202


# ----------------------------------------------------------------------- cached keys


async def test_a_cached_key_stops_working_within_a_second_of_any_change(
    ingest, directory, pool, env
):
    pepper = env.settings(CommonSettings).api_key_pepper.get_secret_value()
    keys = ingest.app.state.service.keys
    await eventually(lambda: asyncio.sleep(0, keys.listening), timeout=5,
                     what="the key cache listening")

    async def works(key: str) -> bool:
        response = await ingest.post("/v1/sightings", json=sighting(), headers=bearer(key))
        assert response.status_code in (202, 401), response.text
        return response.status_code == 202

    async def refused(key: str) -> None:
        async def probe() -> bool:
            return not await works(key)
        await eventually(probe, timeout=1.0, interval=0.01, what="the key refused")

    # Revoked by another process (as `giapranh keys revoke` does).
    revoked = await issue_api_key(pool, "CA-31212", pepper, role="reporter")
    assert await works(revoked)  # (cached now)
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE key_prefix = $1",
                       revoked[:12])
    await refused(revoked)

    # Its expiry brought forward.
    shortened = await issue_api_key(pool, "CA-31212", pepper, role="reporter")
    assert await works(shortened)
    await pool.execute("UPDATE api_keys SET expires_at = now() WHERE key_prefix = $1",
                       shortened[:12])
    await refused(shortened)

    # Expiring while cached: refused from that moment, with no notification at all.
    expiring = await issue_api_key(pool, "CA-31212", pepper, role="reporter")
    await pool.execute(
        "UPDATE api_keys SET expires_at = now() + interval '1.5 seconds' "
        "WHERE key_prefix = $1", expiring[:12])
    assert await works(expiring)
    await asyncio.sleep(1.6)
    assert not await works(expiring)

    # Its unit ended (merged away).
    ended = await issue_api_key(pool, "CA-31237", pepper, role="reporter")
    assert await works(ended)
    await pool.execute("UPDATE units SET active_to = now() WHERE code = 'CA-31237'")
    await refused(ended)


async def test_without_its_listener_the_key_cache_is_off(ingest, directory, pool, env):
    """A change the cache could not hear about must still count at once: while its
    LISTEN connection is down, every request asks the database."""
    pepper = env.settings(CommonSettings).api_key_pepper.get_secret_value()
    keys = ingest.app.state.service.keys
    await eventually(lambda: asyncio.sleep(0, keys.listening), timeout=5,
                     what="the key cache listening")
    key = await issue_api_key(pool, "CA-31212", pepper, role="reporter")
    assert (await ingest.post("/v1/sightings", json=sighting(), headers=bearer(key))
            ).status_code == 202  # cached

    await pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%giapranh_key_changes%'")
    await eventually(lambda: asyncio.sleep(0, not keys.listening), timeout=5,
                     what="the cache to notice its listener is gone")
    # Revoked while nobody listens: the NOTIFY goes nowhere, the next request refuses.
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE key_prefix = $1",
                       key[:12])
    refused = await ingest.post("/v1/sightings", json=sighting(), headers=bearer(key))
    assert refused.status_code == 401
    # It listens again by itself.
    await eventually(lambda: asyncio.sleep(0, keys.listening), timeout=5,
                     what="the key cache listening again")


@pytest.mark.parametrize("cache_seconds", [0.0])
async def test_with_the_cache_off_every_request_asks_the_database(
    env, topics, directory, pool, cache_seconds
):
    settings = env.settings(IngestSettings, key_cache_seconds=cache_seconds)
    async for client in _serve(create_ingest(settings)):
        pepper = env.settings(CommonSettings).api_key_pepper.get_secret_value()
        key = await issue_api_key(pool, "CA-31212", pepper, role="reporter")
        assert (await client.post("/v1/sightings", json=sighting(), headers=bearer(key))
                ).status_code == 202
        await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE key_prefix = $1",
                           key[:12])
        assert (await client.post("/v1/sightings", json=sighting(), headers=bearer(key))
                ).status_code == 401
        assert not client.app.state.service.keys.listening


async def test_a_report_the_database_refuses_fails_alone_not_its_group(ingest, directory, pool):
    """Whatever the database refuses in one report (here a constraint this test adds)
    fails that request only: the others written in the same group are stored."""
    await pool.execute("ALTER TABLE events ADD CONSTRAINT test_no_poison CHECK "
                       "(payload -> 'subject' ->> 'name' IS DISTINCT FROM 'POISON')")
    key = bearer(directory["CA-31212"])
    fine = [sighting() for _ in range(30)]
    poison = sighting(name="POISON")
    answers = await asyncio.gather(*(ingest.post("/v1/sightings", json=body, headers=key)
                                     for body in [*fine[:15], poison, *fine[15:]]),
                                   return_exceptions=True)
    # (a server error, 500 behind uvicorn; the in-process transport raises it)
    assert isinstance(answers[15], asyncpg.CheckViolationError), answers[15]
    assert [a.status_code for a in answers[:15] + answers[16:]] == [202] * 30
    assert await stored(pool, [b["event_id"] for b in fine]) == (30, 30)
    assert await stored(pool, [poison["event_id"]]) == (0, 0)


async def test_a_batch_whose_connection_goes_silent_is_settled_too(env, topics, directory, pool):
    """A batch is one transaction on its own connection: past the write timeout it is
    settled like a group (none stored: 503, whether the write never reached the database
    or its answer never came back, so the transaction never committed); a silent
    connection used to hold the request, and a pool connection, for ever."""
    async with StallingProxy(env.database_url) as proxy:
        async for client in _ingest_through(env, proxy):
            key = bearer(directory["CA-31212"])
            for silence in ("both", "answers"):
                bodies = [sighting() for _ in range(3)]
                proxy.arm(uuid.UUID(bodies[1]["event_id"]).bytes, silence)
                answer = await asyncio.wait_for(client.post(
                    "/v1/sightings/batch", json={"sightings": bodies}, headers=key),
                    timeout=10)
                assert answer.status_code == 503, answer.text
                ids = [b["event_id"] for b in bodies]
                assert "did not store the reports" in answer.json()["error"]["message"]
                assert await stored(pool, ids) == (0, 0)
                again = await asyncio.wait_for(client.post(
                    "/v1/sightings/batch", json={"sightings": bodies}, headers=key),
                    timeout=10)
                assert again.status_code == 202, again.text
                assert await stored(pool, ids) == (3, 3)
            proxy.resume()
