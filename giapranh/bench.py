"""`giapranh bench`: end-to-end latency and throughput against the running `giapranh dev`.

For each rate, CA-31212 reports sightings in batches every `TICK` seconds. A share of them
(`--hit-ratio`) are of a listed subject (the demo's wanted man, listed by CA-30307); the
rest are of people on no list (random ids and names), as most real checks are. The alert
each matching sighting raises is awaited on CA-30307's live stream (server-sent events);
sighting-to-alert latency is the time from sending the batch to receiving that alert.
Beside it, the broker's raw produce-to-consume round trip is measured in the same run.

A rate is sustained when every expected alert arrived and the p99 stayed under `--max-p99`.

Then the pursuit scenario (`--pursuits`): CA-31212 reports an incident with a motorbike
nobody has seen before, and at once CA-30307, across the border, reports a plate read of
it; measured are the time from sending the incident to its incident alert on CA-30307's
stream, and to the hot-list alert on the read reaching CA-31212's stream (the hot list
made, the read matched live or by the look-back). And `--checks` checks of the wanted man
(`POST /v1/checks`), answered by a matcher worker, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.progress import Progress

from giapranh.demo import DEMO_ENTRIES

TICK = 0.05
SEER, OWNER = "CA-31212", "CA-30307"
console = Console(soft_wrap=True)  # (figures on one line each, in a log too)


@dataclass(frozen=True)
class Stack:
    ingest: str
    notifier: str
    broker: str
    keys: dict[str, str]
    database: str | None = None
    processes: dict[str, int] = field(default_factory=dict)
    """The services' process ids, and the dev command's (its broker is its child)."""
    data_dir: Path | None = None

    @classmethod
    def running(cls, data_dir: Path) -> Stack:
        lock, keys = data_dir / "dev.lock", data_dir / "demo-keys.json"
        try:
            details = json.loads(lock.read_text())
            return cls(details["ingest"], details["notifier"], details["broker"],
                       json.loads(keys.read_text()), details.get("database"),
                       {**details.get("children", {}), "dev": details.get("pid", 0)},
                       data_dir.resolve())
        except (OSError, ValueError, KeyError):
            raise SystemExit(f"no running giapranh dev found in {data_dir}: start `giapranh dev` "
                             "first (with its demo data), or pass --data-dir") from None


@dataclass
class Result:
    rate: int
    sent: int
    received: int
    latencies: list[float]
    hops: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each part of the stack used while the rate ran (`cpu_seconds`)."""
    desks: dict[str, int] = field(default_factory=dict)
    """The run's alerts each other desk watching (`--all-desks`) received."""

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def sustained(self, max_p99: float) -> bool:
        return self.received == self.sent and self.quantile(0.99) <= max_p99


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return f"p50 {pick(0.5):7.1f} ms  p95 {pick(0.95):7.1f} ms  p99 {pick(0.99):7.1f} ms"


async def broker_round_trip(bootstrap: str, messages: int = 300) -> list[float]:
    topic = f"giapranh.bench-roundtrip-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                fetch_max_wait_ms=20)  # as the embedded stack's services
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    latencies = []
    try:
        for _ in range(messages):
            started = time.perf_counter()
            await producer.send_and_wait(topic, b"x")
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                if batch:
                    break
            latencies.append(time.perf_counter() - started)
    finally:
        await producer.stop()
        await consumer.stop()
    return latencies


def unlisted(rng: random.Random) -> dict[str, str]:
    """Someone on no list: a 12-digit id with a province prefix no demo entry uses."""
    return {"national_id": f"099{rng.randrange(10**9):09d}",
            "name": f"Khách {rng.randrange(10**6)}"}


async def watch_desk(stack: Stack, unit: str, ours: dict[str, float],
                     seen: dict[str, set[str]], ready: asyncio.Event) -> None:
    """Another recipient unit's duty desk: its live stream read to the end, noting the
    run's new alerts (`event: alert`) it received (it costs the notifier a view of each
    alert for this unit too)."""
    headers = {"Authorization": f"Bearer {stack.keys[unit]}"}
    try:
        async with httpx.AsyncClient(timeout=None) as client, client.stream(
                "GET", f"{stack.notifier}/v1/alerts/stream", headers=headers) as response:
            if response.status_code != 200:
                raise SystemExit(f"{unit}'s stream was refused: {response.status_code} "
                                 f"{(await response.aread()).decode()}")
            ready.set()
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "alert":
                    correlation = json.loads(line[5:])["correlation_id"]
                    if correlation in ours:
                        seen.setdefault(unit, set()).add(correlation)
    finally:
        ready.set()  # (a stream that failed must not leave the run waiting for it)


async def run_rate(stack: Stack, rate: int, seconds: float, hit_ratio: float,
                   progress: Progress, desks: list[str] | None = None) -> Result:
    subject = {"name": "NGUYEN VAN HUNG", "national_id": DEMO_ENTRIES[0].national_id}
    rng = random.Random(rate)
    sent_at: dict[str, float] = {}
    sent_wall: dict[str, float] = {}  # (wall clock: compared with the services' timestamps)
    received_wall: dict[str, float] = {}
    latencies: list[float] = []
    count = int(rate * seconds)
    hit_every = max(1, round(1 / hit_ratio))
    total = len(range(0, count, hit_every))  # the alerts expected
    task = progress.add_task(f"{rate:>6}/s", total=total)
    done = asyncio.Event()

    async def listen(ready: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {stack.keys[OWNER]}"}
        async with httpx.AsyncClient(timeout=None) as client, client.stream(
                "GET", f"{stack.notifier}/v1/alerts/stream", headers=headers) as response:
            ready.set()
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                alert = json.loads(line[5:])
                started = sent_at.get(alert["correlation_id"])
                if started is not None:
                    received_wall[alert["correlation_id"]] = time.time()
                    latencies.append(time.perf_counter() - started)
                    progress.advance(task)
                    if len(latencies) == total:
                        done.set()
                        return

    ready = asyncio.Event()
    listener = asyncio.create_task(listen(ready))
    await ready.wait()
    desk_seen: dict[str, set[str]] = {}
    watchers = []
    for unit in desks or ():
        opened = asyncio.Event()
        watchers.append(asyncio.create_task(
            watch_desk(stack, unit, sent_at, desk_seen, opened)))
        await opened.wait()
        if watchers[-1].done():
            watchers[-1].result()  # (its failure, said)
    cpu_before = cpu_seconds(stack)
    per_tick = max(1, round(rate * TICK))
    headers = {"Authorization": f"Bearer {stack.keys[SEER]}"}
    sent = 0
    async with httpx.AsyncClient(base_url=stack.ingest, headers=headers, timeout=30) as client:
        pending = []
        next_tick = time.perf_counter()
        while sent < count:
            size = min(per_tick, count - sent)
            now = datetime.now(UTC).isoformat()
            started, wall = time.perf_counter(), time.time()
            batch = []
            for n in range(sent, sent + size):
                event_id = str(uuid.uuid4())
                if n % hit_every == 0:
                    sent_at[event_id] = started
                    sent_wall[event_id] = wall
                batch.append({"event_id": event_id, "occurred_at": now,
                              "subject": subject if n % hit_every == 0 else unlisted(rng),
                              "place": {"unit_code": SEER}})
            pending.append(asyncio.create_task(
                client.post("/v1/sightings/batch", json={"sightings": batch})))
            sent += size
            next_tick += TICK
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
        for response in await asyncio.gather(*pending):
            if response.status_code != 202:
                raise SystemExit(f"ingest refused a batch: {response.status_code} {response.text}")
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
    except TimeoutError:
        pass
    listener.cancel()
    cpu = {name: used - cpu_before.get(name, 0.0)
           for name, used in cpu_seconds(stack).items()}
    settle = time.perf_counter() + 10  # the other desks' last alerts, if still coming
    while (time.perf_counter() < settle
           and any(0 < len(seen) < total for seen in desk_seen.values())):
        await asyncio.sleep(0.1)
    for watcher in watchers:
        watcher.cancel()
    hops = await hop_budget(stack, sent_wall, received_wall)
    return Result(rate, total, len(latencies), latencies, hops, cpu,
                  {unit: len(seen) for unit, seen in desk_seen.items()})


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far (user + system) by each service, PostgreSQL (its server
    and every backend), the broker and this load generator: where a rate's CPU went, per
    alert, so that a change's cost shows even when the machine's noise hides it in the
    latencies. Empty without psutil (the `bench` extra)."""
    try:
        import psutil
    except ImportError:
        return {}

    def used(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    totals: dict[str, float] = {"load generator": used(psutil.Process())}
    for name, pid in stack.processes.items():
        if name == "dev":
            continue
        with contextlib.suppress(psutil.Error):
            totals[name] = used(psutil.Process(pid))
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(stack.processes.get("dev", 0)).children():
            if "tansu" in " ".join(child.cmdline()):
                totals["broker"] = used(child)
    pgdata = str(stack.data_dir / "pgdata") if stack.data_dir else None
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if pgdata and "-D" in cmdline and pgdata in cmdline:  # (the server: its backends
            with contextlib.suppress(psutil.Error):           # are its children)
                totals["PostgreSQL"] = used(process) + sum(
                    used(child) for child in process.children())
    return totals


HOPS = ("client → ingest", "ingest → relayed", "relayed → matched", "matched → notifier",
        "notifier → SSE")
"""The hops of a sighting's alert, each from the timestamps the services record: the
sighting's `recorded_at` (ingest received it), its outbox row's `dispatched_at` (the
broker acknowledged it), the hit's `recorded_at` (the matcher found it), the alert's
`raised_at` (the notifier began storing it); the client's clock at both ends (one machine,
one clock)."""


async def hop_budget(stack: Stack, sent: dict[str, float], received: dict[str, float]
                     ) -> dict[str, list[float]]:
    """Seconds spent in each of `HOPS` by each sighting whose alert arrived."""
    if stack.database is None or not received:
        return {}
    import asyncpg

    from services.ingest.store import relay_times
    from services.notifier.repository import hit_times

    conn = await asyncpg.connect(stack.database)
    try:
        ids = [uuid.UUID(event_id) for event_id in received]
        relayed = await relay_times(conn, ids)
        matched = await hit_times(conn, ids)
    finally:
        await conn.close()
    rows = [{"id": str(event_id), "accepted": accepted, "relayed": dispatched,
             "matched": matched[event_id][0], "stored": matched[event_id][1]}
            for event_id, (accepted, dispatched) in relayed.items() if event_id in matched]
    hops: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for row in rows:
        if row["relayed"] is None:
            continue
        marks = [sent[row["id"]], row["accepted"].timestamp(), row["relayed"].timestamp(),
                 row["matched"].timestamp(), row["stored"].timestamp(), received[row["id"]]]
        for hop, start, end in zip(HOPS, marks[:-1], marks[1:], strict=True):
            hops[hop].append(max(0.0, end - start))
    return hops


class Listener:
    """A unit's live stream: the time each awaited alert arrived, by a key of the alert."""

    def __init__(self, stack: Stack, unit: str, key_of: Callable[[dict], str]):
        self.stack, self.unit, self.key_of = stack, unit, key_of
        self.arrived: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _listen(self) -> None:
        headers = {"Authorization": f"Bearer {self.stack.keys[self.unit]}"}
        async with httpx.AsyncClient(timeout=None) as client, client.stream(
                "GET", f"{self.stack.notifier}/v1/alerts/stream", headers=headers) as response:
            self.ready.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    alert = json.loads(line[5:])
                    self.arrived.setdefault(self.key_of(alert), time.perf_counter())

    async def __aenter__(self) -> Listener:
        self.task = asyncio.create_task(self._listen())
        await self.ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


async def pursuits(stack: Stack, count: int, progress: Progress
                   ) -> tuple[list[float], list[float]]:
    """(incident sent → incident alert at the neighbour, incident sent → hot-list alert on
    the plate read at the incident's unit), one pursuit at a time."""
    rng = random.Random(7)
    to_neighbour: list[float] = []
    to_hot_list: list[float] = []
    task = progress.add_task("pursuits", total=count)
    incident_key = lambda alert: alert["hit_id"] if alert.get("kind") == "incident" else ""
    read_key = lambda alert: (alert["correlation_id"] if alert.get("kind") == "hit"
                              and alert["category"] == "incident_vehicle" else "")
    async with (Listener(stack, OWNER, incident_key) as neighbour,
                Listener(stack, SEER, read_key) as home,
                httpx.AsyncClient(base_url=stack.ingest, timeout=30) as client):
        for _ in range(count):
            plate = f"65-B{rng.randrange(1, 10)} {rng.randrange(1000):03d}.{rng.randrange(100):02d}"
            incident_id, read_id = str(uuid.uuid4()), str(uuid.uuid4())
            now = datetime.now(UTC).isoformat()
            started = time.perf_counter()
            response = await client.post("/v1/incidents", headers={
                "Authorization": f"Bearer {stack.keys[SEER]}"}, json={
                "event_id": incident_id, "occurred_at": now, "incident_type": "bench pursuit",
                "place": {"unit_code": SEER}, "severity": "immediate",
                "vehicles": [{"plate": plate}]})
            if response.status_code != 202:
                raise SystemExit(f"ingest refused an incident: {response.status_code} "
                                 f"{response.text}")
            await client.post("/v1/sightings", headers={
                "Authorization": f"Bearer {stack.keys[OWNER]}"}, json={
                "event_id": read_id, "occurred_at": now, "subject": {"plate": plate},
                "place": {"unit_code": OWNER, "address": "bench camera"}})
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline and not (
                    incident_id in neighbour.arrived and read_id in home.arrived):
                await asyncio.sleep(0.005)
            if incident_id in neighbour.arrived:
                to_neighbour.append(neighbour.arrived[incident_id] - started)
            if read_id in home.arrived:
                to_hot_list.append(home.arrived[read_id] - started)
            progress.advance(task)
    return to_neighbour, to_hot_list


async def checks(stack: Stack, count: int, progress: Progress) -> list[float]:
    """`POST /v1/checks` of the wanted man, one at a time: the time each answer took."""
    latencies = []
    task = progress.add_task("checks", total=count)
    subject = {"name": "NGUYEN VAN HUNG", "national_id": DEMO_ENTRIES[0].national_id}
    async with httpx.AsyncClient(base_url=stack.ingest, timeout=30, headers={
            "Authorization": f"Bearer {stack.keys[SEER]}"}) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = await client.post("/v1/checks", json={"subject": subject})
            if response.status_code != 200 or not response.json()["matches"]:
                raise SystemExit(f"the check failed: {response.status_code} {response.text}")
            latencies.append(time.perf_counter() - started)
            progress.advance(task)
    return latencies


async def bench(data_dir: Path, rates: list[int], seconds: float, max_p99: float,
                hit_ratio: float = 1.0, pursuit_count: int = 20, check_count: int = 200,
                all_desks: bool = False) -> int:
    stack = Stack.running(data_dir)
    round_trip = await broker_round_trip(stack.broker)
    desks = sorted(unit for unit in stack.keys if unit != OWNER) if all_desks else []
    results = []
    with Progress(console=console, transient=True) as progress:
        for rate in rates:
            result = await run_rate(stack, rate, seconds, hit_ratio, progress, desks)
            results.append(result)
            if not result.sustained(max_p99):
                break
    console.print(f"broker round trip (produce → consume, same run): {percentiles(round_trip)}")
    for result in results:
        verdict = "sustained" if result.sustained(max_p99) else "NOT sustained"
        latency = percentiles(result.latencies) if result.latencies else "no alerts"
        console.print(f"{result.rate:>6} sightings/s ({hit_ratio:.0%} matching): "
                      f"{result.received}/{result.sent} alerts, "
                      f"{latency}  {verdict}")
        for hop, values in result.hops.items():
            if values:
                console.print(f"         {hop:<20} {percentiles(values)}")
        if desks:
            reached = {unit: count for unit, count in result.desks.items() if count}
            console.print(f"         other desks watching: {len(desks)}, of which "
                          f"{len(reached)} received the alerts: " + ", ".join(
                              f"{unit} {count}/{result.sent}"
                              for unit, count in sorted(reached.items())))
        if result.cpu and result.received:
            per_alert = {name: 1e6 * used / result.received for name, used in result.cpu.items()}
            console.print("         CPU per alert: " + ", ".join(
                f"{name} {micros:,.0f} µs" for name, micros in per_alert.items())
                + f"; total {sum(per_alert.values()):,.0f} µs (at this cost, {os.cpu_count()} "
                f"cores carry at most ~{os.cpu_count() * 1e6 / sum(per_alert.values()):,.0f} "
                "alerts/s; idle work inflates it at low rates)")
    best = max((r.rate for r in results if r.sustained(max_p99)), default=None)
    console.print(f"highest sustained rate: {best or 'none'} sightings/s "
                  f"(every alert delivered, p99 <= {max_p99 * 1000:.0f} ms)")
    pursued = True
    if pursuit_count:
        with Progress(console=console, transient=True) as progress:
            to_neighbour, to_hot_list = await pursuits(stack, pursuit_count, progress)
        for what, values in (("incident → alert at the neighbour", to_neighbour),
                             ("incident → hot list matches a plate read", to_hot_list)):
            console.print(f"pursuit: {what}: {len(values)}/{pursuit_count}, "
                          f"{percentiles(values) if values else 'none arrived'}")
        pursued = len(to_neighbour) == len(to_hot_list) == pursuit_count
    if check_count:
        with Progress(console=console, transient=True) as progress:
            answered = await checks(stack, check_count, progress)
        console.print(f"checks (POST /v1/checks, one at a time): {len(answered)}, "
                      f"{percentiles(answered)} (target p99 < 50 ms)")
    return 0 if best and pursued else 1
