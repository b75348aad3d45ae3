"""`giapranh chaos`: sightings under fire, and every expected alert counted.

Starts its own stack on free ports in a temporary directory (embedded PostgreSQL and
broker, the three services as processes, the demo data), then sends sightings at a set
rate through the ingest API (a share of them of the demo's wanted man, the rest of people
on no list) while, in turn: ingest, the matcher and the notifier are killed with SIGKILL
and started again a few seconds later, and the broker is killed and started again twice,
once for less and once for longer than the producers' request timeout (an embedded
broker restarts empty: every topic, message and consumer group is gone).

Then it waits for the pipeline to settle and counts, from PostgreSQL: sightings sent and
accepted, alerts expected (one per matching sighting), found, missing and duplicated,
alerts without deliveries, outbox rows never published; and the sighting-to-alert
latency before, during and after each fault. The suite runs a small version of it
(`tests/test_chaos.py`); the command runs 10,000 sightings by default.
"""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx

from giapranh.demo import DEMO_ENTRIES, seed_demo
from giapranh.dev import SERVICES, service_environment
from giapranh.embedded import EmbeddedBroker, EmbeddedDatabase, free_port
from services.ingest.reconciler import unpublished
from shared.db import create_pool
from shared.kafka import ensure_topics, wait_for_broker
from shared.settings import CommonSettings

SEER, OWNER = "CA-31212", "CA-30307"
WANTED = DEMO_ENTRIES[0]
TICK = 0.1


@dataclass(frozen=True)
class Fault:
    name: str
    at: float
    """Seconds after the first sighting."""
    down: float
    """Seconds before the killed process is started again."""
    target: str
    """A service name, or `broker`."""


@dataclass(frozen=True)
class ChaosOptions:
    sightings: int = 10_000
    rate: float = 200.0
    hit_ratio: float = 0.5
    short_broker_outage: float = 3.0
    long_broker_outage: float = 20.0
    service_outage: float = 3.0
    request_timeout: float = 15.0
    """The producers' request timeout (GIAPRANH_KAFKA_REQUEST_TIMEOUT_SECONDS)."""
    settle_timeout: float = 300.0
    """How long to wait, after the last sighting, for every alert."""
    grace: float = 30.0
    """GIAPRANH_RECONCILE_AFTER_SECONDS and GIAPRANH_MATCHER_REDRIVE_AFTER_SECONDS."""

    def faults(self) -> list[Fault]:
        duration = self.sightings / self.rate
        return [
            Fault("kill -9 ingest", 0.10 * duration, self.service_outage, "ingest"),
            Fault("kill -9 matcher", 0.25 * duration, self.service_outage, "matcher"),
            Fault("kill -9 notifier", 0.40 * duration, self.service_outage, "notifier"),
            Fault(f"broker restart ({self.short_broker_outage:g} s)", 0.55 * duration,
                  self.short_broker_outage, "broker"),
            Fault(f"broker restart ({self.long_broker_outage:g} s)", 0.70 * duration,
                  self.long_broker_outage, "broker"),
        ]


@dataclass
class Report:
    sent: int = 0
    accepted: int = 0
    expected: int = 0
    found: int = 0
    missing: int = 0
    duplicates: int = 0
    without_deliveries: int = 0
    unpublished: int = 0
    faults: list[tuple[Fault, float, float]] = field(default_factory=list)
    """(fault, started, ended) in seconds after the first sighting."""
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.missing == 0 and self.duplicates == 0 and self.without_deliveries == 0
                and self.unpublished == 0 and self.accepted == self.sent)


class ChaosStack:
    """The embedded stack with services this process can kill and start again."""

    def __init__(self, data_dir: Path, options: ChaosOptions):
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.options = options
        self.database = EmbeddedDatabase(data_dir / "pgdata", ephemeral=True)
        self.broker = EmbeddedBroker(free_port(), self.logs / "broker.log")
        self.ports = {name: free_port() for name in SERVICES}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.env: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.dsn = ""

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.database.start()
        self.dsn = await self.database.create_database("giapranh")
        self.broker.start()
        grace = str(self.options.grace)
        self.env = service_environment(
            dsn=self.dsn, bootstrap=self.broker.bootstrap_servers, host="127.0.0.1",
            ports=self.ports, data_dir=self.data_dir, log_level="INFO",
            extra={"GIAPRANH_KAFKA_REQUEST_TIMEOUT_SECONDS": str(self.options.request_timeout),
                   "GIAPRANH_RECONCILE_AFTER_SECONDS": grace,
                   "GIAPRANH_MATCHER_REDRIVE_AFTER_SECONDS": grace,
                   "GIAPRANH_RECONCILE_ALARM_SECONDS": str(self.options.grace * 4),
                   # One key sends every sighting: no rate limit should get in the way.
                   "GIAPRANH_LOG_FORMAT": "text"})
        settings = CommonSettings.model_validate({
            "database_url": self.dsn, "kafka_bootstrap_servers": self.broker.bootstrap_servers,
            "topic_partitions": int(self.env["GIAPRANH_TOPIC_PARTITIONS"]),
            "kafka_idempotent_producer": False})
        await wait_for_broker(settings)
        await ensure_topics(settings)
        pool = await create_pool(settings)
        try:
            self.keys = await seed_demo(pool, settings, self.data_dir / "demo-keys.json")
        finally:
            await pool.close()
        for name in SERVICES:
            self.spawn(name)
        await self.wait_ready(SERVICES)

    def spawn(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=self.env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        child = self.children[name]
        child.send_signal(signal.SIGKILL)
        child.wait()

    def kill_broker(self) -> None:
        self.broker.kill()

    def start_broker(self) -> None:
        self.broker.start()

    async def wait_ready(self, names: tuple[str, ...] | list[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            for name in names:
                while True:
                    if self.children[name].poll() is not None:
                        raise RuntimeError(f"{name} exited; see {self.logs / (name + '.log')}")
                    try:
                        health = (await client.get(self.url(name) + "/healthz")).json()
                        if (health.get("status") == "ok"
                                and health.get("reports", "consuming") == "consuming"
                                and health.get("hit_consumer", "ready") == "ready"):
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} not ready after {timeout:.0f} s")
                    await asyncio.sleep(0.2)

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for log in self._logs:
            log.close()
        self.broker.stop()
        self.database.stop()


def sightings(options: ChaosOptions, rng: random.Random) -> list[dict[str, Any]]:
    """The sightings to send, each with its own event id; every `1/hit_ratio`-th one of
    the wanted man (by id and name), the rest of people on no list."""
    every = max(1, round(1 / options.hit_ratio))
    made = []
    for n in range(options.sightings):
        subject = ({"name": "NGUYEN VAN HUNG", "national_id": WANTED.national_id}
                   if n % every == 0 else
                   {"national_id": f"099{rng.randrange(10**9):09d}",
                    "name": f"Khách {rng.randrange(10**6)}"})
        made.append({"event_id": str(uuid.uuid4()), "subject": subject,
                     "place": {"unit_code": SEER}})
    return made


async def send_all(stack: ChaosStack, items: list[dict[str, Any]], rate: float,
                   on_progress: Callable[[int], None], started: float) -> int:
    """Send at `rate`, in batches every TICK; a batch that fails (ingest killed, timed out)
    is sent again, with the same event ids, until it is accepted. Returns how many were
    accepted (new or repeated)."""
    per_tick = max(1, round(rate * TICK))
    accepted = 0
    headers = {"Authorization": f"Bearer {stack.keys[SEER]}"}
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=headers,
                                 timeout=10) as client:
        sent = 0
        while sent < len(items):
            due = min(len(items), int((time.monotonic() - started) / TICK + 1) * per_tick)
            if due <= sent:
                await asyncio.sleep(TICK / 2)
                continue
            batch = items[sent:min(due, sent + 1000)]
            now = datetime.now(UTC).isoformat()
            body = {"sightings": [{**item, "occurred_at": item.get("occurred_at", now)}
                                  for item in batch]}
            for item, sighting in zip(batch, body["sightings"], strict=True):
                item["occurred_at"] = sighting["occurred_at"]  # a retry repeats the body
            while True:
                try:
                    response = await client.post("/v1/sightings/batch", json=body)
                    if response.status_code == 202:
                        accepted += len(response.json()["results"])
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            sent += len(batch)
            on_progress(sent)
    return accepted


async def inject(stack: ChaosStack, fault: Fault, started: float,
                 report: Report) -> None:
    await asyncio.sleep(max(0.0, fault.at - (time.monotonic() - started)))
    began = time.monotonic() - started
    if fault.target == "broker":
        stack.kill_broker()
        await asyncio.sleep(fault.down)
        stack.start_broker()
    else:
        stack.kill(fault.target)
        await asyncio.sleep(fault.down)
        stack.spawn(fault.target)
        await stack.wait_ready([fault.target])
    report.faults.append((fault, began, time.monotonic() - started))


async def count(stack: ChaosStack, hit_ids: list[str], report: Report,
                sent_at: dict[str, float]) -> None:
    pool = await asyncpg.create_pool(stack.dsn, min_size=1, max_size=1)
    try:
        # Through the services' read-only views and functions, as any outside reader.
        rows = await pool.fetch(
            """SELECT a.source_event_id::text AS sighting, count(*) AS alerts,
                      min(a.raised_at) AS raised_at, min(a.recipients) AS deliveries,
                      min(r.recorded_at) AS recorded_at
                 FROM notifier_alert_states a
                 JOIN ingest_reports r ON r.event_id = a.source_event_id
                WHERE a.entry_id = $1 AND a.source_event_id = ANY($2::uuid[])
                GROUP BY a.source_event_id""", WANTED.entry_id, hit_ids)
        report.unpublished = await unpublished(pool)
    finally:
        await pool.close()
    report.expected = len(hit_ids)
    report.found = len(rows)
    report.missing = len(hit_ids) - len(rows)
    report.duplicates = sum(r["alerts"] - 1 for r in rows)
    report.without_deliveries = sum(1 for r in rows if r["deliveries"] == 0)
    report.latencies = {}
    for row in rows:
        phase = _phase(report.faults, sent_at[row["sighting"]])
        report.latencies.setdefault(phase, []).append(
            (row["raised_at"] - row["recorded_at"]).total_seconds())


def _phase(faults: list[tuple[Fault, float, float]], at: float) -> str:
    for fault, began, ended in faults:
        if began - 10 <= at < began:
            return f"before {fault.name}"
        if began <= at < ended + 10:
            return f"during {fault.name} (and 10 s after)"
    return "calm"


async def run(options: ChaosOptions, data_dir: Path | None = None,
              on_progress: Callable[[str, int, int], None] | None = None) -> Report:
    progress = on_progress or (lambda what, done, total: None)
    rng = random.Random(7)
    items = sightings(options, rng)
    every = max(1, round(1 / options.hit_ratio))
    hit_ids = [item["event_id"] for n, item in enumerate(items) if n % every == 0]
    report = Report(sent=len(items))
    with tempfile.TemporaryDirectory(prefix="giapranh-chaos-") as tmp:
        stack = ChaosStack(data_dir or Path(tmp), options)
        try:
            await stack.start()
            started = time.monotonic()
            injections = [asyncio.create_task(inject(stack, fault, started, report))
                          for fault in options.faults()]
            sent_at: dict[str, float] = {}

            def sent(done: int) -> None:
                now = time.monotonic() - started
                for item in items[len(sent_at):done]:
                    sent_at[item["event_id"]] = now
                progress("sent", done, len(items))

            report.accepted = await send_all(stack, items, options.rate, sent, started)
            await asyncio.gather(*injections)
            deadline = time.monotonic() + options.settle_timeout
            while True:
                await count(stack, hit_ids, report, sent_at)
                progress("alerts", report.found, report.expected)
                if report.ok or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            if report.missing == 0:
                await asyncio.sleep(2)  # anything still arriving would be a duplicate
                await count(stack, hit_ids, report, sent_at)
        finally:
            stack.stop()
    return report


def render(report: Report) -> str:
    lines = [
        f"sent {report.sent}, accepted {report.accepted}, alerts expected {report.expected}, "
        f"found {report.found}, missing {report.missing}, duplicates {report.duplicates}, "
        f"without deliveries {report.without_deliveries}, never published "
        f"{report.unpublished}",
        "faults (seconds after the first sighting):",
    ]
    lines += [f"  {fault.name:<28} {began:6.1f} -> {ended:6.1f}"
              for fault, began, ended in report.faults]
    lines.append("sighting -> alert latency:")
    for phase, values in sorted(report.latencies.items(), key=lambda kv: _order(kv[0], report)):
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        lines.append(f"  {phase:<52} {len(values):>6} alerts  p50 "
                     f"{statistics.median(ordered) * 1000:8.0f} ms  p99 {p99 * 1000:8.0f} ms")
    lines.append("result: " + ("every expected alert exactly once" if report.ok
                               else "ALERTS LOST OR DUPLICATED"))
    return "\n".join(lines)


def _order(phase: str, report: Report) -> tuple[int, int]:
    for index, (fault, _, _) in enumerate(report.faults):
        if fault.name in phase:
            return index, 0 if phase.startswith("before") else 1
    return -1, 0

