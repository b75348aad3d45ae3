"""Fixtures of the giapranh test suite. Read this before writing a test.

Everything runs against the real components: an embedded Tansu broker and an embedded
PostgreSQL 18, both started by our own code (`giapranh.embedded`) on free ports / private
sockets in temporary directories. Nothing needs to be installed by hand.

Session-wide (started once, shared by every test):
- `broker`: the Tansu broker (`broker.bootstrap_servers`).
- `pg`: the PostgreSQL server; each test gets its own database in it.

Per test (isolation):
- `env`: a `TestEnv` with a fresh database (migrations applied), a unique topic prefix
  and unique consumer groups, so no test sees another's rows, messages or group members. `env.settings(SomeSettings)` builds
  any service's settings for it; settings are passed explicitly, never through os.environ.
- `pool`: an asyncpg pool on the test's database.
- `directory`: the demo units and agreements seeded, with one API key per unit
  (`directory["CA-31212"]` is that unit's key).
- `ingest` / `notifier`: the real FastAPI apps with their lifespans running (outbox
  relay, hit consumer), reached through an httpx client without a socket.
- `matcher`: the real stream matcher, `python -m services.matcher`, as a child process
  configured for the test's database and topics (as production runs it).

Reading what reached a topic goes through `read_topic(env, topic, count, settle=...)`.

Use the unit fixtures (`env`, `pool`) for store and migration tests, and the service
fixtures for behaviour that crosses the broker. Waiting for asynchronous effects goes
through `eventually`, which polls with a deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import uvicorn

from giapranh.demo import demo_keys, seed_directory
from giapranh.embedded import EmbeddedBroker, EmbeddedDatabase, free_port
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.notifier.app import create_app as create_notifier
from services.notifier.settings import NotifierSettings
from shared.db import apply_schema, create_pool
from shared.http import early_refusal
from shared.http_protocol import http_protocol
from shared.kafka import ensure_topics
from shared.settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)
T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(free_port(), log) as running:
        yield running


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedDatabase]:
    with EmbeddedDatabase(tmp_path_factory.mktemp("pg") / "pgdata", ephemeral=True) as server:
        yield server


@dataclass(frozen=True)
class TestEnv:
    database_url: str
    bootstrap_servers: str
    topic_prefix: str
    tmp_path: Path

    def settings(self, cls: type[S], **overrides: Any) -> S:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": self.database_url,
            "kafka_bootstrap_servers": self.bootstrap_servers,
            "kafka_idempotent_producer": False,
            "kafka_session_timeout_seconds": 2,
            "kafka_fetch_max_wait_ms": 20,
            "topic_prefix": self.topic_prefix,
            "topic_partitions": 2,
            # Consumer groups are per test as well: a worker stopped in one test must not
            # linger in the group of the next one.
            "matcher_group_id": f"{self.topic_prefix}matcher",
            "notifier_group_id": f"{self.topic_prefix}notifier",
            **overrides,
        }
        return cls.model_validate(values)

    def process_env(self, **extra: str) -> dict[str, str]:
        """Environment for a service child process configured for this test."""
        return {
            **os.environ,
            "GIAPRANH_ENVIRONMENT": "test",
            "GIAPRANH_DATABASE_URL": self.database_url,
            "GIAPRANH_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "GIAPRANH_KAFKA_IDEMPOTENT_PRODUCER": "false",
            "GIAPRANH_KAFKA_SESSION_TIMEOUT_SECONDS": "2",
            "GIAPRANH_KAFKA_FETCH_MAX_WAIT_MS": "20",
            "GIAPRANH_TOPIC_PREFIX": self.topic_prefix,
            "GIAPRANH_TOPIC_PARTITIONS": "2",
            "GIAPRANH_MATCHER_GROUP_ID": f"{self.topic_prefix}matcher",
            "GIAPRANH_NOTIFIER_GROUP_ID": f"{self.topic_prefix}notifier",
            **extra,
        }


@pytest.fixture
async def env(broker: EmbeddedBroker, pg: EmbeddedDatabase, tmp_path: Path) -> TestEnv:
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = await pg.create_database(name)
    conn = await asyncpg.connect(dsn)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    return TestEnv(dsn, broker.bootstrap_servers, f"{name}.", tmp_path)


@pytest.fixture
async def pool(env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    db_pool = await create_pool(env.settings(CommonSettings), migrate=False)
    yield db_pool
    await db_pool.close()


@pytest.fixture
async def directory(env: TestEnv, pool: asyncpg.Pool) -> dict[str, str]:
    async with pool.acquire() as conn:
        await seed_directory(conn)
    return await demo_keys(pool, env.settings(CommonSettings), env.tmp_path / "keys.json")


@pytest.fixture
async def topics(env: TestEnv) -> None:
    await ensure_topics(env.settings(CommonSettings))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def ingest(env: TestEnv, topics: None) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _serve(create_ingest(env.settings(IngestSettings, relay_idle_seconds=0.2))):
        yield client


@pytest.fixture
async def notifier(env: TestEnv, topics: None) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _serve(create_notifier(env.settings(NotifierSettings))):
        yield client


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 15.0, interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


async def read_topic(env: TestEnv, topic: str, count: int, *, settle: float = 0.0) -> list[Any]:
    """The records of `topic` from its beginning, once `count` have arrived; with `settle`,
    go on reading that many seconds, so a surplus (a duplicate) would be returned too."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=env.bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []

    async def read(timeout_ms: int = 200) -> bool:
        batch = await consumer.getmany(timeout_ms=timeout_ms)
        records.extend(record for partition in batch.values() for record in partition)
        return len(records) >= count

    try:
        await eventually(read, what=f"{count} records on {topic}")
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            await read(timeout_ms=100)
    finally:
        await consumer.stop()
    return records


class MatcherProcess:
    def __init__(self, env: TestEnv, port: int, **extra_env: str):
        self.port = port
        self.log_path = env.tmp_path / f"matcher-{port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.matcher"],
            env=env.process_env(
                GIAPRANH_MATCHER_PORT=str(port),
                GIAPRANH_MATCHER_DATA_DIR=str(env.tmp_path / f"matcher-{port}"),
                **{"GIAPRANH_LOG_LEVEL": "INFO", "GIAPRANH_LOG_EVENTS": "true", **extra_env},
            ),
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 45.0) -> None:
        async def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"matcher exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"http://127.0.0.1:{self.port}/healthz")
            except httpx.HTTPError:
                return False
            # Ready once its report consumer holds partitions, so no report is left unread.
            health = response.json()
            return health.get("status") == "ok" and health.get("reports") == "consuming"

        await eventually(ready, timeout=timeout, interval=0.2, what="the matcher to be ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
async def matcher(env: TestEnv, topics: None, directory: dict[str, str]) -> AsyncIterator[MatcherProcess]:
    process = MatcherProcess(env, free_port())
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


@contextlib.asynccontextmanager
async def served(app: Any, protocol: type[asyncio.Protocol] | None = None) -> AsyncIterator[str]:
    """The app on a real socket (streaming responses and browsers need a real server), with
    the HTTP protocol `serve` gives it unless told another; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2,
                                           http=protocol or http_protocol(
                                               "test", early_refusal=early_refusal(app))))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), what="the server to listen")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server) -> bool:
    return server.started
