"""PostgreSQL plumbing: the asyncpg pool and the schema migration runner.

Each component owns its tables and their migrations: ordered SQL files `NNNN_name.sql` in
`<package>/migrations/` (`shared` for the platform's directory and API keys, then each
service's own). `SCHEMA` lists the components in the order they are applied, so a
service's documented read-only views may read the tables of the components before it.

Every service applies the whole schema at start-up (`create_pool`), so the start order
does not matter; a PostgreSQL advisory lock serialises services that start together, and
each file runs in its own transaction with its row in `schema_migrations`, so a failing
file leaves the schema at the previous version.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import asyncpg
import orjson

from shared import metrics
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What a database call raises when the database fails or goes away: long-running loops
catch these, wait and go on. (asyncpg raises InternalClientError, not a connection error,
for a connection whose server went away while it was being set up.)"""

MIGRATION_LOCK_ID = 0x6A1A_0001
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

SCHEMA: tuple[tuple[str, str], ...] = (
    ("shared", "shared"),
    ("ingest", "services.ingest"),
    ("matcher", "services.matcher"),
    ("notifier", "services.notifier"),
)
"""(component, package) in the order their migrations are applied."""

_LEGACY_LAYOUT = {1: (("ingest", 1), ("notifier", 1)), 2: (("notifier", 2),)}
"""Before each component owned its migrations, `shared` versions 1 and 2 created every
table; their parts now live in these components' files (same statements)."""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_folder(package: str) -> Path:
    return Path(str(resources.files(package).joinpath("migrations")))


def discover_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in `directory` (default: shared's own), in version order."""
    folder = directory or migrations_folder("shared")
    found: dict[int, Migration] = {}
    if not folder.is_dir():
        return []
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


async def _prepare_bookkeeping(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               component text NOT NULL DEFAULT 'shared',
               version integer NOT NULL,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (component, version))"""
    )
    has_component = await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'schema_migrations' AND column_name = 'component' "
        "AND table_schema = current_schema()")
    if has_component:
        return
    # A database from before components owned their migrations: record that the parts of
    # its versions now in other components' files are applied too.
    async with conn.transaction():
        await conn.execute(
            "ALTER TABLE schema_migrations ADD COLUMN component text NOT NULL DEFAULT 'shared';"
            "ALTER TABLE schema_migrations DROP CONSTRAINT schema_migrations_pkey;"
            "ALTER TABLE schema_migrations ADD PRIMARY KEY (component, version)")
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, parts in _LEGACY_LAYOUT.items():
            if version in applied:
                for component, part in parts:
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name) "
                        "VALUES ($1, $2, 'from the shared layout')", component, part)


async def apply_migrations(
    conn: asyncpg.Connection, directory: Path | None = None, *, component: str = "shared"
) -> list[int]:
    """Apply one component's pending migrations in order; returns the versions applied."""
    migrations = discover_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await _prepare_bookkeeping(conn)
        applied = {r["version"] for r in await conn.fetch(
            "SELECT version FROM schema_migrations WHERE component = $1", component)}
        newest_known = migrations[-1].version if migrations else 0
        if applied and max(applied) > newest_known:
            raise MigrationError(
                f"the database is at schema version {max(applied)} of {component}, newer than "
                f"this code knows ({newest_known}); upgrade the service"
            )
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name) "
                        "VALUES ($1, $2, $3)", component, migration.version, migration.name,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {component}/{migration.version:04d}_{migration.name} "
                    f"failed: {exc}"
                ) from exc
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def apply_schema(conn: asyncpg.Connection) -> list[str]:
    """Apply every component's pending migrations (`SCHEMA` order); returns what was
    applied, as `component/NNNN`."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        done: list[str] = []
        for component, package in SCHEMA:
            applied = await apply_migrations(conn, migrations_folder(package),
                                             component=component)
            done += [f"{component}/{version:04d}" for version in applied]
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


def encode_json(value: object) -> str:
    """JSON text for PostgreSQL, with orjson (several times faster than `json`, which an
    alert's hit, stored and read back on every alert, made felt); what orjson refuses
    (an integer beyond 64 bits, say) goes through `json`."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


HISTORY_COLUMNS = ("(SELECT system_identifier FROM pg_control_system()), "
                   "pg_walfile_name(pg_current_wal_lsn())")
"""What names the database's history (`history_of` makes it text): its system identifier
and its WAL timeline (a WAL file's name starts with it). A restore to a point in time (or
a promoted standby) starts a new timeline; a restore into a new cluster has another
identifier."""


def history_of(system_identifier: int, wal_file: str) -> str:
    """`<system identifier>.<timeline>` (the identifier unsigned, as pg_controldata shows
    it) from `HISTORY_COLUMNS`."""
    return f"{system_identifier % 2**64}.{int(wal_file[:8], 16)}"


async def database_history(conn: asyncpg.Connection | asyncpg.Pool) -> str:
    """The database's history now (`history_of`). What a service built from the database
    (its caches, the matcher's watchlists, the topics' logs) belongs to the history it
    was built from."""
    system_identifier, wal_file = await conn.fetchrow(f"SELECT {HISTORY_COLUMNS}")
    return history_of(system_identifier, wal_file)


async def starting_history(pool: asyncpg.Pool, service: str) -> str | None:
    """`database_history` as a service starts, its gauge of a changed history at 0 (read
    by /readyz, `shared.http.same_history`); None (said in the log: its readiness then
    does not check the history) when the database cannot tell it, rather than not start."""
    try:
        history = await database_history(pool)
        metrics.DATABASE_HISTORY_CHANGED.labels(service=service).set(0)
        return history
    except DATABASE_ERRORS as exc:
        log.warning("%s cannot read the database's history (%r): its readiness will not "
                    "notice a restore to a point in time", service, exc)
        return None


_BACKEND_STARTS: dict[int, datetime] = {}
"""When each open connection of a pool made with `name_processes` had its server process
started, by its pid (one server per process: ingest's)."""


def server_process(conn: asyncpg.Connection) -> tuple[int, datetime | None]:
    """The connection's server process: its pid and when it started (None when not
    known: the pool was made without `name_processes`, or the role may not read
    `pg_stat_activity`). The pair names it for good, where a pid alone may be reused by
    the next process once this one has ended. Behind a pooler (PgBouncer) the pid is not
    the client's own: services that end a process this way (ingest) connect to
    PostgreSQL directly."""
    pid = conn.get_server_pid()
    return pid, _BACKEND_STARTS.get(pid)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for json_type in ("json", "jsonb"):
        await conn.set_type_codec(
            json_type, encoder=encode_json, decoder=orjson.loads, schema="pg_catalog"
        )


async def _init_named_connection(conn: asyncpg.Connection) -> None:
    await _init_connection(conn)
    pid = conn.get_server_pid()
    try:
        started = await conn.fetchval(
            "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
    except asyncpg.PostgresError as exc:  # (a role kept from pg_stat_activity)
        log.warning("the server process of a connection cannot be named (%r): a write "
                    "whose answer is lost is settled by its pid alone", exc)
        return
    if started is not None:
        _BACKEND_STARTS[pid] = started
        conn.add_termination_listener(
            lambda _conn: _BACKEND_STARTS.pop(pid, None)
            if _BACKEND_STARTS.get(pid) == started else None)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset.

    Our pooled connections never keep session state (no LISTEN, no session-level locks
    or settings: advisory locks are transaction-scoped and the outbox listener has its own
    connection), so asyncpg's default reset round trip on every release is pure cost.
    """


async def create_pool(settings: CommonSettings, *, migrate: bool = True,
                      max_size: int | None = None,
                      name_processes: bool = False) -> asyncpg.Pool:
    """Open the pool; with `migrate`, bring the schema up to date first; with
    `name_processes`, each connection's server process is named for `server_process`
    (one more query per connection opened)."""
    if migrate:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await apply_schema(conn)
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=max_size or settings.db_pool_max_size,
        init=_init_named_connection if name_processes else _init_connection,
        reset=_keep_session,
    )
    assert pool is not None
    return pool
