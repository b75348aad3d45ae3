"""Live alert streams: 1,000 open SSE streams on one unit must not slow another unit down.

    python benchmarks/streams.py [--streams 1000] [--requests 200] [--alerts 5]
    python benchmarks/streams.py --data-dir .giapranh --database-url postgresql://...
                                             # against a running `giapranh dev` (its DSN)

By default it starts its own stack in a temporary directory (embedded PostgreSQL and
broker on free ports, the three services as processes, the demo data). Against a running
`giapranh dev` it needs the database (to issue the keys it uses, revoked at the end).

One unit, Long Xuyên (CA-30307), holds `--streams` streams (`GET /v1/alerts/stream`) on
keys issued for the run, `GIAPRANH_NOTIFIER_MAX_STREAMS_PER_KEY` (5) per key, all held by
this process with httpx. Another unit, Quy Nhơn (CA-21553, with alerts of its own),
reads its alert list (`GET /v1/alerts`), `--requests` times one after the other, from a
separate process (so the stream holder's own work never delays its requests). Measured:
- the notifier's resident memory (psutil) before and after the streams open, and after
  the alerts were delivered; its CPU while the streams were idle;
- the other unit's request latency (median, p99) with no streams, with the streams idle,
  and with the streams receiving an alert every `--interval` seconds;
- the time for a new alert to reach every stream: from posting a matching sighting to
  ingest (Thốt Nốt, CA-31212, reporting the wanted man Long Xuyên lists) to each stream
  receiving it (median, p99, max over streams and alerts), with one stream and with all.
Figures and ratios are printed; nothing is asserted on time (the suite runs a small
version, tests/test_streams_benchmark.py, for the delivery counts only). Everything (this
process, the services, PostgreSQL, the broker) shares the machine's cores.

Imports beyond the services' dependencies: psutil (the `bench` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import psutil

from giapranh.demo import DEMO_ENTRIES, seed_demo
from giapranh.dev import SERVICES, service_environment
from giapranh.embedded import EmbeddedBroker, EmbeddedDatabase, free_port
from shared.auth import issue_api_key, list_api_keys, revoke_api_key
from shared.db import create_pool
from shared.kafka import ensure_topics, wait_for_broker
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent

STREAM_UNIT, SEER = "CA-30307", "CA-31212"  # the wanted man's lister, where he is seen
OTHER_UNIT, OTHER_SEER = "CA-21553", "CA-22051"  # the missing girl's lister, where she is
WANTED, MISSING = DEMO_ENTRIES[0], DEMO_ENTRIES[2]
OTHER_ALERTS = 20
"""Alerts the other unit has before it is measured, so its list is not empty."""
ALERT_TIMEOUT = 60.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Target:
    ingest: str
    notifier: str
    notifier_pid: int
    dsn: str
    streams_per_key: int


@dataclass(frozen=True)
class Latencies:
    values: list[float]

    def q(self, quantile: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, math.ceil(quantile * len(ordered)) - 1)]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def line(self) -> str:
        return (f"median {self.median * 1000:7.1f} ms   p99 {self.q(0.99) * 1000:7.1f} ms   "
                f"max {max(self.values) * 1000:7.1f} ms")


# --- the stack -------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def own_stack(tmp: Path, streams_per_key: int) -> AsyncIterator[Target]:
    """PostgreSQL, the broker and the three services on free ports, in `tmp`."""
    logs = tmp / "logs"
    logs.mkdir(parents=True)
    ports = {name: free_port() for name in SERVICES}
    children: list[subprocess.Popen[bytes]] = []
    with EmbeddedDatabase(tmp / "pgdata", ephemeral=True) as database, \
            EmbeddedBroker(free_port(), logs / "broker.log") as broker:
        dsn = await database.create_database("giapranh")
        env = service_environment(
            dsn=dsn, bootstrap=broker.bootstrap_servers, host="127.0.0.1", ports=ports,
            data_dir=tmp, log_level="WARNING",
            extra={"GIAPRANH_NOTIFIER_MAX_STREAMS_PER_KEY": str(streams_per_key)})
        settings = CommonSettings.model_validate({
            "database_url": dsn, "kafka_bootstrap_servers": broker.bootstrap_servers,
            "topic_partitions": int(env["GIAPRANH_TOPIC_PARTITIONS"]),
            "kafka_idempotent_producer": False})
        await wait_for_broker(settings)
        await ensure_topics(settings)
        pool = await create_pool(settings)
        try:
            await seed_demo(pool, settings, tmp / "demo-keys.json")
        finally:
            await pool.close()
        try:
            for name in SERVICES:
                with open(logs / f"{name}.log", "ab") as log:
                    children.append(subprocess.Popen(
                        [sys.executable, "-m", f"services.{name}"], env=env, cwd=ROOT,
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True))
            urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
            await wait_ready(urls, dict(zip(SERVICES, children, strict=True)), logs)
            yield Target(urls["ingest"], urls["notifier"], children[SERVICES.index("notifier")].pid,
                         dsn, streams_per_key)
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


async def wait_ready(urls: dict[str, str], children: dict[str, subprocess.Popen[bytes]],
                     logs: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        for name, url in urls.items():
            while True:
                if children[name].poll() is not None:
                    raise SystemExit(f"{name} exited; see {logs / (name + '.log')}")
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = (await client.get(url + "/healthz")).json()
                    if (health.get("status") == "ok"
                            and health.get("reports", "consuming") == "consuming"
                            and health.get("hit_consumer", "ready") == "ready"):
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} not ready after {timeout:.0f} s")
                await asyncio.sleep(0.2)


def running_stack(data_dir: Path, dsn: str, streams_per_key: int) -> Target:
    try:
        details = json.loads((data_dir / "dev.lock").read_text())
        return Target(details["ingest"], details["notifier"],
                      int(details["children"]["notifier"]), dsn, streams_per_key)
    except (OSError, ValueError, KeyError):
        raise SystemExit(f"no running giapranh dev found in {data_dir}") from None


class Keys:
    """API keys issued for this run (label `bench-streams-<id>`), revoked at the end."""

    def __init__(self, dsn: str):
        self._dsn = dsn
        self.label = f"bench-streams-{uuid.uuid4().hex[:8]}"
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> Keys:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=2)
        return self

    async def issue(self, unit: str, count: int) -> list[str]:
        assert self._pool is not None
        pepper = CommonSettings().api_key_pepper.get_secret_value()  # GIAPRANH_API_KEY_PEPPER
        return [await issue_api_key(self._pool, unit, pepper, label=self.label)
                for _ in range(count)]

    async def __aexit__(self, *exc: object) -> None:
        assert self._pool is not None
        for unit in (STREAM_UNIT, OTHER_UNIT, SEER, OTHER_SEER):
            for key in await list_api_keys(self._pool, unit):
                if key.label == self.label:
                    await revoke_api_key(self._pool, key.id)
        await self._pool.close()


# --- load --------------------------------------------------------------------------------------

def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def report(ingest: httpx.AsyncClient, key: str, unit: str, entry: object) -> str:
    """A sighting of the entry's subject at `unit`; returns its event id."""
    event_id = str(uuid.uuid4())
    subject = {"name": entry.full_name, "national_id": entry.national_id}  # type: ignore[attr-defined]
    response = await ingest.post("/v1/sightings", headers=bearer(key), json={
        "event_id": event_id, "occurred_at": datetime.now(UTC).isoformat(),
        "subject": subject, "place": {"unit_code": unit}})
    if response.status_code != 202:
        raise SystemExit(f"ingest refused a sighting: {response.status_code} {response.text}")
    return event_id


@dataclass
class Streams:
    """`count` streams of one unit held open on `keys`; records when each receives each
    alert (by the alert's correlation id: the id of the sighting that raised it)."""

    notifier: str
    keys: list[str]
    per_key: int
    count: int
    arrivals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    opened: int = 0
    refused: list[str] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        limits = httpx.Limits(max_connections=self.count + 10, max_keepalive_connections=10)
        self._client = httpx.AsyncClient(base_url=self.notifier, limits=limits,
                                         timeout=httpx.Timeout(30, read=None))
        all_open = asyncio.Event()
        gate = asyncio.Semaphore(50)  # connection attempts at once
        for n in range(self.count):
            key = self.keys[n // self.per_key]
            self._tasks.append(asyncio.create_task(self._hold(key, gate, all_open)))
        try:
            await asyncio.wait_for(all_open.wait(), 120)
        except TimeoutError:
            raise SystemExit(f"only {self.opened} of {self.count} streams opened; "
                             f"refused: {self.refused[:3]}") from None
        # The notifier subscribes a stream as its response body starts: give the last ones
        # a moment, then check that a stream more on a full key is refused (all are held).
        await asyncio.sleep(1.0)

    async def _hold(self, key: str, gate: asyncio.Semaphore, all_open: asyncio.Event) -> None:
        assert self._client is not None
        arrivals, clock = self.arrivals, time.perf_counter
        async with gate:
            request = self._client.stream("GET", "/v1/alerts/stream", headers=bearer(key))
            response = await request.__aenter__()
        try:
            if response.status_code != 200:
                self.refused.append(f"{response.status_code} {(await response.aread())[:200]!r}")
                return
            self.opened += 1
            if self.opened == self.count:
                all_open.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    at = clock()
                    # The correlation id without decoding the whole alert.
                    start = line.find('"correlation_id":"')
                    if start >= 0:
                        start += len('"correlation_id":"')
                        arrivals[line[start:line.index('"', start)]].append(at)
        finally:
            await request.__aexit__(None, None, None)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


async def fan_out(ingest: httpx.AsyncClient, key: str, streams: Streams, alerts: int,
                  pause: float = 0.5) -> tuple[Latencies, int]:
    """Post `alerts` matching sightings one at a time; each one's delay to every stream."""
    delays: list[float] = []
    received = 0
    for _ in range(alerts):
        started = time.perf_counter()
        event_id = await report(ingest, key, SEER, WANTED)
        deadline = time.monotonic() + ALERT_TIMEOUT
        while len(streams.arrivals.get(event_id, ())) < streams.count:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        got = streams.arrivals.get(event_id, [])
        received += len(got)
        delays += [at - started for at in got]
        await asyncio.sleep(pause)
    return Latencies(delays or [float("nan")]), received


async def probe(notifier: str, key: str, requests: int) -> Latencies:
    """The other unit's requests, measured from a process of their own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--probe", notifier, key, str(requests),
        stdout=subprocess.PIPE, cwd=ROOT)
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise SystemExit("the latency probe failed")
    return Latencies(json.loads(out))


async def run_probe(notifier: str, key: str, requests: int) -> None:
    """`--probe`: GET /v1/alerts `requests` times in a row; prints the latencies (JSON)."""
    latencies = []
    async with httpx.AsyncClient(base_url=notifier, headers=bearer(key), timeout=30) as client:
        for n in range(requests + 10):  # the first 10 warm the connection up, not counted
            started = time.perf_counter()
            response = await client.get("/v1/alerts")
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or not response.json():
                raise SystemExit(f"GET /v1/alerts: {response.status_code} {response.text[:200]}")
            if n >= 10:
                latencies.append(elapsed)
    print(json.dumps(latencies))


class Notifier:
    def __init__(self, pid: int):
        self.process = psutil.Process(pid)

    def rss(self) -> float:
        """Resident memory, MiB."""
        return self.process.memory_info().rss / 2**20

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


async def cpu_share(notifier: Notifier, seconds: float) -> float:
    """The notifier's CPU use over `seconds` of nothing asked of it (share of one core)."""
    used, started = notifier.cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    return (notifier.cpu() - used) / (time.perf_counter() - started)


async def full_collections(notifier_url: str) -> float:
    """The notifier's full (generation 2) garbage collections so far (its /metrics)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{notifier_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith('python_gc_collections_total{generation="2"}'):
            return float(line.split()[-1])
    return float("nan")


def row(label: str, latencies: Latencies, extra: str = "") -> str:
    return f"  {label:<26}{latencies.line()}{extra}"


# --- the benchmark -------------------------------------------------------------------------------

async def benchmark(target: Target, args: argparse.Namespace) -> int:
    notifier = Notifier(target.notifier_pid)
    stream_keys_needed = math.ceil(args.streams / target.streams_per_key)
    async with Keys(target.dsn) as keys, \
            httpx.AsyncClient(base_url=target.ingest, timeout=30) as ingest:
        stream_keys = await keys.issue(STREAM_UNIT, stream_keys_needed)
        (probe_key,) = await keys.issue(OTHER_UNIT, 1)
        (seer_key,) = await keys.issue(SEER, 1)
        (other_seer_key,) = await keys.issue(OTHER_SEER, 1)
        say(f"{stream_keys_needed} keys for {STREAM_UNIT} ({target.streams_per_key} streams "
            f"each); {OTHER_ALERTS} alerts for {OTHER_UNIT} ...")
        for _ in range(OTHER_ALERTS):
            await report(ingest, other_seer_key, OTHER_SEER, MISSING)
        async with httpx.AsyncClient(base_url=target.notifier, headers=bearer(probe_key)) as c:
            deadline = time.monotonic() + ALERT_TIMEOUT
            while len((await c.get("/v1/alerts", params={"limit": 1000})).json()) < OTHER_ALERTS:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{OTHER_UNIT} did not get its alerts")
                await asyncio.sleep(0.2)

        say("with no stream open ...")
        rss_before = notifier.rss()
        idle_cpu_before = await cpu_share(notifier, args.idle)
        quiet = await probe(target.notifier, probe_key, args.requests)
        one = Streams(target.notifier, stream_keys[:1], 1, 1)
        await one.open()
        cpu_started = notifier.cpu()
        single, single_received = await fan_out(ingest, seer_key, one, args.alerts)
        single_cpu = (notifier.cpu() - cpu_started) / args.alerts
        await one.close()

        say(f"opening {args.streams} streams ...")
        streams = Streams(target.notifier, stream_keys, target.streams_per_key, args.streams)
        opened_at = time.perf_counter()
        await streams.open()
        open_seconds = time.perf_counter() - opened_at
        try:
            rss_open = notifier.rss()
            idle_cpu = await cpu_share(notifier, args.idle)
            full_gcs = await full_collections(target.notifier)
            idle = await probe(target.notifier, probe_key, args.requests)
            full_gcs = await full_collections(target.notifier) - full_gcs

            say(f"{args.alerts} alerts to {args.streams} streams ...")
            cpu_started = notifier.cpu()
            many, many_received = await fan_out(ingest, seer_key, streams, args.alerts)
            many_cpu = (notifier.cpu() - cpu_started) / args.alerts

            say("the other unit's requests while alerts reach the streams ...")
            flowing = asyncio.Event()

            async def keep_alerting() -> int:
                sent = 0
                while not flowing.is_set():
                    await report(ingest, seer_key, SEER, WANTED)
                    sent += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(flowing.wait(), args.interval)
                return sent

            alerting = asyncio.create_task(keep_alerting())
            busy = await probe(target.notifier, probe_key, args.requests)
            flowing.set()
            busy_alerts = await alerting
            await asyncio.sleep(2)
            rss_after = notifier.rss()
            still_open = streams.opened - len([t for t in streams._tasks if t.done()])
        finally:
            await streams.close()

    expected = args.alerts * args.streams
    n = args.streams
    print(f"\nlive alert streams: {n} on {STREAM_UNIT} ({stream_keys_needed} keys), opened in "
          f"{open_seconds:.1f} s; {still_open} still open at the end")
    print(f"notifier memory (RSS): {rss_before:.1f} MiB with no stream, {rss_open:.1f} MiB "
          f"with {n} (+{rss_open - rss_before:.1f} MiB, "
          f"{(rss_open - rss_before) * 1024 / n:.1f} KiB per stream), "
          f"{rss_after:.1f} MiB after the alerts")
    print(f"notifier CPU with nothing asked of it ({args.idle:g} s): "
          f"{idle_cpu_before * 100:.1f} % of a core with no stream, "
          f"{idle_cpu * 100:.1f} % with {n} idle streams")

    def ratio(measured: Latencies) -> str:
        return (f"   ratio {measured.median / quiet.median:.2f} / "
                f"{measured.q(0.99) / quiet.q(0.99):.2f}")

    print(f"\n{OTHER_UNIT}'s GET /v1/alerts ({args.requests} requests in a row, own process; "
          "ratios: median / p99 against no stream, 1.00 = not slowed):")
    print(row("no stream open", quiet))
    print(row(f"{n} idle streams", idle, ratio(idle)
              + f"   ({full_gcs:.0f} full garbage collection(s) in the notifier meanwhile)"))
    print(row(f"{n} streams + alerts", busy, ratio(busy)
              + f"   ({busy_alerts} alerts, one every {args.interval:g} s)"))
    print(f"\na new alert, from POST /v1/sightings to each stream receiving it "
          f"({args.alerts} alerts, one at a time):")
    print(row("1 stream", single, f"   ({single_received}/{args.alerts} received)"))
    print(row(f"{n} streams", many, f"   ({many_received}/{expected} received)"))
    print(f"  ratio {n} streams / 1 stream: {many.median / single.median:.2f} (median), "
          f"{many.q(0.99) / single.q(0.99):.2f} (p99), "
          f"{max(many.values) / max(single.values):.2f} (max)")
    print(f"  notifier CPU per alert: {single_cpu * 1000:.1f} ms with 1 stream, "
          f"{many_cpu * 1000:.1f} ms with {n} "
          f"({(many_cpu - single_cpu) / max(1, n - 1) * 1e6:.0f} µs per further stream)")
    return 0 if many_received == expected and single_received == args.alerts else 1


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--probe":
        asyncio.run(run_probe(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200,
                        help="the other unit's requests per measurement")
    parser.add_argument("--alerts", type=int, default=5, help="alerts timed to every stream")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between alerts while the other unit is measured")
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds the notifier's idle CPU is measured")
    parser.add_argument("--streams-per-key", type=int, default=5,
                        help="the notifier's GIAPRANH_NOTIFIER_MAX_STREAMS_PER_KEY")
    parser.add_argument("--data-dir", type=Path,
                        help="a running `giapranh dev`'s data directory (default: own stack)")
    parser.add_argument("--database-url", help="with --data-dir: its PostgreSQL DSN")
    args = parser.parse_args()
    if args.data_dir is not None:
        if not args.database_url:
            parser.error("--data-dir needs --database-url (giapranh dev prints it)")
        target = running_stack(args.data_dir, args.database_url, args.streams_per_key)
        sys.exit(asyncio.run(benchmark(target, args)))

    async def on_own_stack() -> int:
        with tempfile.TemporaryDirectory(prefix="giapranh-streams-") as tmp:
            say("starting an embedded stack ...")
            async with own_stack(Path(tmp), args.streams_per_key) as target:
                return await benchmark(target, args)

    sys.exit(asyncio.run(on_own_stack()))


if __name__ == "__main__":
    os.environ.setdefault("GIAPRANH_LOG_FORMAT", "text")
    main()
