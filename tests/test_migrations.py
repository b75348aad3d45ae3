"""The schema migration runner, against the real PostgreSQL."""

import asyncio

import asyncpg
import pytest

from shared.db import MigrationError, apply_migrations, discover_migrations


@pytest.fixture
async def blank_db(pg):
    import uuid

    dsn = await pg.create_database(f"m_{uuid.uuid4().hex[:12]}")
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


def write(folder, name, sql):
    (folder / name).write_text(sql)


async def test_migrations_apply_in_order_once(blank_db, tmp_path):
    write(tmp_path, "0002_add_b.sql", "ALTER TABLE a ADD COLUMN b int;")
    write(tmp_path, "0001_create_a.sql", "CREATE TABLE a (id int);")
    assert await apply_migrations(blank_db, tmp_path) == [1, 2]
    assert await apply_migrations(blank_db, tmp_path) == []
    versions = await blank_db.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
    assert [(r["version"], r["name"]) for r in versions] == [(1, "create_a"), (2, "add_b")]


async def test_a_failing_migration_rolls_back_and_names_itself(blank_db, tmp_path):
    write(tmp_path, "0001_create_a.sql", "CREATE TABLE a (id int);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE c (id int); SELECT * FROM missing;")
    with pytest.raises(MigrationError, match="0002_broken failed"):
        await apply_migrations(blank_db, tmp_path)
    assert await blank_db.fetchval("SELECT max(version) FROM schema_migrations") == 1
    assert await blank_db.fetchval("SELECT to_regclass('c')") is None


async def test_services_starting_together_apply_each_migration_once(pg, blank_db, tmp_path):
    write(tmp_path, "0001_create_a.sql", "CREATE TABLE a (id int);")
    dsn = pg.dsn(await blank_db.fetchval("SELECT current_database()"))
    others = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, tmp_path) for c in others))
    finally:
        for conn in others:
            await conn.close()
    assert sorted(results) == [[], [], [1]]


async def test_a_database_newer_than_the_code_is_refused(blank_db, tmp_path):
    write(tmp_path, "0001_create_a.sql", "CREATE TABLE a (id int);")
    await apply_migrations(blank_db, tmp_path)
    await blank_db.execute("INSERT INTO schema_migrations (version, name) VALUES (9, 'future')")
    with pytest.raises(MigrationError, match="newer than this code"):
        await apply_migrations(blank_db, tmp_path)


def test_badly_named_migration_files_are_refused(tmp_path):
    write(tmp_path, "1_create.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="not named NNNN_name.sql"):
        discover_migrations(tmp_path)


def test_the_shipped_migrations_are_numbered_without_gaps():
    versions = [m.version for m in discover_migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_every_components_migrations_are_numbered_without_gaps():
    from shared.db import SCHEMA, migrations_folder

    for component, package in SCHEMA:
        versions = [m.version for m in discover_migrations(migrations_folder(package))]
        assert versions == list(range(1, len(versions) + 1)), component


async def _schema_of(conn):
    columns = await conn.fetch(
        """SELECT table_name, column_name, data_type, is_nullable, column_default
             FROM information_schema.columns WHERE table_schema = 'public'
              AND table_name <> 'schema_migrations'
            ORDER BY table_name, column_name""")
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "AND tablename <> 'schema_migrations' ORDER BY indexname")
    triggers = await conn.fetch(
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname")
    return [tuple(r) for r in columns], [tuple(r) for r in indexes], [r[0] for r in triggers]


async def test_a_database_from_the_single_shared_layout_upgrades_to_the_same_schema(pg):
    """Databases made when shared/migrations held every table (versions 1 and 2) are
    upgraded in place: nothing is created twice and the result equals a fresh schema."""
    import uuid
    from pathlib import Path

    from shared.db import apply_schema

    legacy = Path(__file__).parent / "data" / "legacy_migrations"
    old = await asyncpg.connect(await pg.create_database(f"m_{uuid.uuid4().hex[:12]}"))
    fresh = await asyncpg.connect(await pg.create_database(f"m_{uuid.uuid4().hex[:12]}"))
    try:
        await old.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())")
        for version, path in enumerate(sorted(legacy.iterdir()), start=1):
            await old.execute(path.read_text())
            await old.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                              version, path.stem[5:])
        await old.execute("INSERT INTO units (code, name, kind) VALUES ('CA-1', 'x', 'ministry')")
        await old.execute("""INSERT INTO api_keys (unit_code, key_prefix, key_hash, role)
                             VALUES ('CA-1', 'gpk_a', '\\x01', 'unit'),
                                    ('CA-1', 'gpk_b', '\\x02', 'admin')""")

        upgraded = await apply_schema(old)
        legacy_parts = {"shared/0001", "shared/0002", "ingest/0001", "notifier/0001",
                        "notifier/0002"}
        assert upgraded == [m for m in await apply_schema(fresh) if m not in legacy_parts]
        # ... only what is new since; the fresh database got everything.
        assert await _schema_of(old) == await _schema_of(fresh)
        assert await old.fetchval("SELECT count(*) FROM units") == 1  # data kept
        # Unit-wide keys of before keep what they could do, as their unit's duty desk.
        keys = await old.fetch("""SELECT k.role, p.name, p.kind FROM api_keys k
                                    JOIN people p ON p.id = k.person_id ORDER BY k.id""")
        assert [tuple(k) for k in keys] == [("unit_admin", "duty desk", "duty_desk"),
                                            ("province_admin", "duty desk", "duty_desk")]
        assert await apply_schema(old) == []
    finally:
        await old.close()
        await fresh.close()


@pytest.mark.parametrize("flow", ["raising", "deciding"])
async def test_the_delivery_figures_migration_waits_for_a_notifier_at_work(pg, blank_db,
                                                                         tmp_path, flow):
    """notifier/0008 runs while a notifier raises an alert (it writes alerts, then
    deliveries) or decides one (it locks the alert with its deliveries FOR UPDATE, then
    updates both): the migration waits for it, and both succeed; taking deliveries first,
    or a lock on alerts that let FOR UPDATE through, deadlocked, and one of them failed."""
    from shared.db import SCHEMA, migrations_folder

    for component, package in SCHEMA:
        folder = migrations_folder(package)
        if component == "notifier":
            folder = tmp_path
            for path in migrations_folder(package).glob("000[1-7]_*.sql"):
                write(tmp_path, path.name, path.read_text())
        await apply_migrations(blank_db, folder, component=component)
    dsn = pg.dsn(await blank_db.fetchval("SELECT current_database()"))
    notifier = await asyncpg.connect(dsn)
    migrating = await asyncpg.connect(dsn)
    try:
        raising = notifier.transaction()
        await raising.start()
        if flow == "raising":
            await notifier.execute("LOCK TABLE alerts IN ROW EXCLUSIVE MODE")  # (its INSERT)
        else:
            await notifier.execute("SELECT 1 FROM alerts a JOIN deliveries d USING (alert_id) "
                                   "FOR UPDATE OF a")
        migration = asyncio.create_task(apply_migrations(
            migrating, migrations_folder("services.notifier"), component="notifier"))
        pid = migrating.get_server_pid()
        for _ in range(200):  # until the migration waits on a lock
            if await blank_db.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                    pid):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the migration never waited for the notifier's alert")
        await notifier.execute("SET lock_timeout = '10s'")
        await notifier.execute("LOCK TABLE deliveries IN ROW EXCLUSIVE MODE")  # (its INSERT)
        await notifier.execute("LOCK TABLE alerts IN ROW EXCLUSIVE MODE")  # (its UPDATE)
        await raising.commit()
        assert (await asyncio.wait_for(migration, timeout=30))[0] == 8
    finally:
        await notifier.close()
        await migrating.close()
