"""PostgreSQL plumbing: the asyncpg pool and the schema migration runner.

Migrations are ordered SQL files `NNNN_name.sql` in `shared/migrations/`. Every service
applies pending ones at start-up; a PostgreSQL advisory lock serialises services that start
together, and each file runs in its own transaction with its row in `schema_migrations`,
so a failing file leaves the schema at the previous version.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from shared.settings import CommonSettings

MIGRATION_LOCK_ID = 0x6A1A_0001
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def discover_migrations(directory: Path | None = None) -> list[Migration]:
    folder = directory or Path(str(resources.files("shared").joinpath("migrations")))
    found: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations have version {version}: {path.name}")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    conn: asyncpg.Connection, directory: Path | None = None
) -> list[int]:
    """Apply pending migrations in order; returns the versions applied by this call."""
    migrations = discover_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        newest_known = migrations[-1].version if migrations else 0
        if applied and max(applied) > newest_known:
            raise MigrationError(
                f"the database is at schema version {max(applied)}, newer than this code "
                f"knows ({newest_known}); upgrade the service"
            )
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version, migration.name,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for json_type in ("json", "jsonb"):
        await conn.set_type_codec(
            json_type, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset.

    Our pooled connections never keep session state (no LISTEN, no session-level locks
    or settings: advisory locks are transaction-scoped and the outbox listener has its own
    connection), so asyncpg's default reset round trip on every release is pure cost.
    """


async def create_pool(settings: CommonSettings, *, migrate: bool = True) -> asyncpg.Pool:
    """Open the pool; with `migrate`, bring the schema up to date first."""
    if migrate:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max_size,
        init=_init_connection,
        reset=_keep_session,
    )
    assert pool is not None
    return pool
