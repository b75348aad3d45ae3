"""What the benchmarks that run the ingest service share: an embedded stack of their own
(PostgreSQL in a temp dir, Tansu on a free port), the demo directory and keys, and the
ingest service as a real uvicorn process."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
from rich.console import Console

from giapranh.demo import demo_keys, seed_directory
from giapranh.embedded import EmbeddedBroker, EmbeddedDatabase, free_port
from shared.db import apply_schema
from shared.kafka import ensure_topics
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)

Benchmark = Callable[[argparse.Namespace, str, str, Path], Awaitable[None]]


def run_on_embedded_stack(benchmark: Benchmark, args: argparse.Namespace) -> None:
    """Run `benchmark(args, dsn, bootstrap, tmp)` against a fresh embedded stack."""
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        console.print("starting the embedded stack ...")
        with EmbeddedDatabase(tmp / "pgdata", ephemeral=True) as db, \
                EmbeddedBroker(free_port(), tmp / "broker.log") as broker:
            dsn = asyncio.run(db.create_database("bench"))
            asyncio.run(benchmark(args, dsn, broker.bootstrap_servers, tmp))


async def prepare(dsn: str, bootstrap: str, tmp: Path, partitions: int
                  ) -> tuple[asyncpg.Connection, dict[str, str]]:
    """The schema, the demo directory and topics; a connection and each unit's key."""
    settings = CommonSettings(database_url=dsn, kafka_bootstrap_servers=bootstrap,
                              kafka_idempotent_producer=False, topic_partitions=partitions)
    conn = await asyncpg.connect(dsn)
    await apply_schema(conn)
    await seed_directory(conn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    keys = await demo_keys(pool, settings, tmp / "keys.json")
    await pool.close()
    await ensure_topics(settings)
    return conn, keys


@contextmanager
def ingest_process(dsn: str, bootstrap: str, partitions: int,
                   **environment: str) -> Iterator[int]:
    """The ingest service running as `python -m services.ingest`; yields its port."""
    port = free_port()
    env = {**os.environ, "GIAPRANH_DATABASE_URL": dsn,
           "GIAPRANH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "GIAPRANH_KAFKA_IDEMPOTENT_PRODUCER": "false",
           "GIAPRANH_TOPIC_PARTITIONS": str(partitions), "GIAPRANH_INGEST_PORT": str(port),
           "GIAPRANH_LOG_LEVEL": "WARNING", **environment}
    service = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env)
    try:
        yield port
    finally:
        service.terminate()
        service.wait(15)


async def wait_up(client: httpx.AsyncClient) -> None:
    for _ in range(200):
        try:
            await client.get("/healthz")
            return
        except httpx.TransportError:
            await asyncio.sleep(0.1)
