"""Ingest throughput: single and batch sightings, accepted and relayed to the broker.

    python benchmarks/ingest.py [--singles 3000] [--batches 60] [--batch-size 1000]

Starts its own embedded stack (PostgreSQL in a temp dir, Tansu on a free port) and the
ingest service as a real uvicorn process, then measures from a load generator on the same
machine (it shares the 2 cores with the service, the database and the broker):
- single requests: accepted sightings/s with `--concurrency` requests in flight;
- batch requests: accepted sightings/s, and end to end: from the first request until the
  relay has published the last outbox row to the broker.
Target (issue 3): batch ingest >= 10,000 sightings/s end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from rich.console import Console
from rich.progress import Progress

from giapranh.demo import demo_keys, seed_directory
from giapranh.embedded import EmbeddedBroker, EmbeddedDatabase, free_port
from shared.db import apply_schema
from shared.kafka import ensure_topics
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent

console = Console(stderr=True)
TARGET_BATCH_PER_SECOND = 10_000


def sighting(i: int) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-20T21:14:00+07:00",
        "subject": {"name": f"NGUYEN VAN {i % 977}", "birth_year": 1960 + i % 45,
                    "national_id": f"0890{i % 100000000:08d}"},
        "place": {"unit_code": "CA-31212", "address": "bến phà Thốt Nốt"},
    }


async def run_requests(client: httpx.AsyncClient, bodies: list[tuple[str, object]],
                       concurrency: int, label: str) -> float:
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(label, total=len(bodies))

        async def worker() -> None:
            while not queue.empty():
                path, body = queue.get_nowait()
                response = await client.post(path, json=body)
                if response.status_code != 202:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
                progress.advance(task)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def wait_relayed(conn: asyncpg.Connection, total: int) -> None:
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("relayed to the broker", total=total)
        while True:
            done = await conn.fetchval("SELECT count(*) FROM outbox WHERE dispatched_at IS NOT NULL")
            progress.update(task, completed=done)
            if done >= total:
                return
            await asyncio.sleep(0.05)


async def benchmark(args: argparse.Namespace, dsn: str, bootstrap: str, tmp: Path) -> None:
    settings = CommonSettings(database_url=dsn, kafka_bootstrap_servers=bootstrap,
                              kafka_idempotent_producer=False, topic_partitions=4)
    conn = await asyncpg.connect(dsn)
    await apply_schema(conn)
    await seed_directory(conn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    keys = await demo_keys(pool, settings, tmp / "keys.json")
    await pool.close()
    await ensure_topics(settings)

    port = free_port()
    env = {**os.environ, "GIAPRANH_DATABASE_URL": dsn, "GIAPRANH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "GIAPRANH_KAFKA_IDEMPOTENT_PRODUCER": "false", "GIAPRANH_TOPIC_PARTITIONS": "4",
           "GIAPRANH_INGEST_PORT": str(port), "GIAPRANH_LOG_LEVEL": "WARNING"}
    service = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env)
    try:
        headers = {"Authorization": f"Bearer {keys['CA-31212']}"}
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers,
                                     timeout=60, limits=limits) as client:
            for _ in range(200):
                try:
                    await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)

            singles = [("/v1/sightings", sighting(i)) for i in range(args.singles)]
            single_seconds = await run_requests(client, singles, args.concurrency, "single requests")
            await wait_relayed(conn, args.singles)

            batches = [("/v1/sightings/batch",
                        {"sightings": [sighting(b * args.batch_size + i) for i in range(args.batch_size)]})
                       for b in range(args.batches)]
            total = args.batches * args.batch_size
            started = time.perf_counter()
            batch_seconds = await run_requests(client, batches, 4, "batch requests")
            await wait_relayed(conn, args.singles + total)
            end_to_end = time.perf_counter() - started
    finally:
        service.terminate()
        service.wait(15)
        await conn.close()

    single_rate = args.singles / single_seconds
    batch_rate = total / batch_seconds
    e2e_rate = total / end_to_end
    print(f"single requests : {args.singles:>7} sightings in {single_seconds:6.2f} s = "
          f"{single_rate:8.0f} sightings/s ({args.concurrency} in flight)")
    print(f"batch requests  : {total:>7} sightings in {batch_seconds:6.2f} s = "
          f"{batch_rate:8.0f} sightings/s accepted ({args.batch_size} per request)")
    print(f"batch end to end: {total:>7} sightings in {end_to_end:6.2f} s = "
          f"{e2e_rate:8.0f} sightings/s accepted and relayed to the broker")
    print(f"target          : {TARGET_BATCH_PER_SECOND} sightings/s end to end -> ratio "
          f"{e2e_rate / TARGET_BATCH_PER_SECOND:.2f} ({'met' if e2e_rate >= TARGET_BATCH_PER_SECOND else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        console.print("starting the embedded stack ...")
        with EmbeddedDatabase(tmp / "pgdata", ephemeral=True) as db, \
                EmbeddedBroker(free_port(), tmp / "broker.log") as broker:
            dsn = asyncio.run(db.create_database("bench"))
            asyncio.run(benchmark(args, dsn, broker.bootstrap_servers, tmp))


if __name__ == "__main__":
    main()
