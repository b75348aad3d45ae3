"""`giapranh dev`: the whole system on the embedded stack, with demo data.

Starts PostgreSQL (data kept in `<data dir>/pgdata`) and a Tansu broker (memory only),
applies migrations, seeds the demo directory, then runs ingest, matcher and notifier as
child processes exactly as production runs them (`python -m services.<name>`), each
configured through `GIAPRANH_*` environment variables. Child output goes to the console
with a name prefix and to `<data dir>/logs/<name>.log`. Ctrl-C stops everything in order.

Only one `giapranh dev` runs per data directory: a second one finds the lock and says
where the running stack is, instead of failing on a taken port.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from giapranh.demo import EXAMPLE_SIGHTING, EXAMPLE_SIGHTING_UNIT, seed_demo
from giapranh.embedded import (
    EmbeddedBroker,
    EmbeddedDatabase,
    EmbeddedStackError,
    port_is_free,
)
from shared.db import create_pool
from shared.kafka import ensure_topics, wait_for_broker
from shared.settings import CommonSettings

SERVICES = ("ingest", "matcher", "notifier")
READY_TIMEOUT_SECONDS = 60.0
RESTART_BACKOFF_SECONDS = 1.0
MAX_RESTART_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class DevOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    ingest_port: int = 8000
    notifier_port: int = 8001
    matcher_port: int = 8002
    broker_port: int = 9092
    log_level: str = "INFO"
    demo: bool = True

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"


def service_environment(*, dsn: str, bootstrap: str, host: str, ports: dict[str, int],
                        data_dir: Path, log_level: str,
                        extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the services on the embedded stack (`giapranh dev`, chaos)."""
    return {
        **os.environ,
        "GIAPRANH_ENVIRONMENT": "development",
        "GIAPRANH_DATABASE_URL": dsn,
        "GIAPRANH_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "GIAPRANH_KAFKA_IDEMPOTENT_PRODUCER": "false",
        "GIAPRANH_KAFKA_SESSION_TIMEOUT_SECONDS": "2",
        "GIAPRANH_KAFKA_FETCH_MAX_WAIT_MS": "20",
        "GIAPRANH_TOPIC_PARTITIONS": "4",
        "GIAPRANH_LOG_LEVEL": log_level,
        "GIAPRANH_LOG_FORMAT": os.environ.get("GIAPRANH_LOG_FORMAT", "text"),
        "GIAPRANH_INGEST_HOST": host, "GIAPRANH_INGEST_PORT": str(ports["ingest"]),
        "GIAPRANH_NOTIFIER_HOST": host, "GIAPRANH_NOTIFIER_PORT": str(ports["notifier"]),
        "GIAPRANH_MATCHER_HOST": host, "GIAPRANH_MATCHER_PORT": str(ports["matcher"]),
        "GIAPRANH_MATCHER_URL": f"http://{host}:{ports['matcher']}",
        "GIAPRANH_MATCHER_DATA_DIR": str(data_dir / "matcher"),
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


class AlreadyRunning(Exception):
    pass


class DevLock:
    """An exclusive lock on `<data dir>/dev.lock`, holding the running stack's details."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / "dev.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the stack's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            details = handle.read()
            handle.close()
            raise AlreadyRunning(details) from None
        self._file = handle

    def publish(self, details: dict[str, object]) -> None:
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(details))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def already_running_message(details: str) -> str:
    try:
        info = json.loads(details)
    except json.JSONDecodeError:
        return "giapranh dev is already running for this data directory (starting up)."
    return (
        f"giapranh dev is already running (pid {info['pid']}) for this data directory.\n"
        f"  ingest:   {info['ingest']}\n  notifier: {info['notifier']}\n"
        f"  matcher:  {info['matcher']}\n  broker:   {info['broker']}\n"
        "Stop it with Ctrl-C in its terminal, or use another --data-dir and ports."
    )


class _Output:
    """Copies a child's output to its log file and, prefixed, to the console."""

    _console_lock = threading.Lock()

    def __init__(self, name: str, stream: IO[bytes], log_path: Path):
        self._name = name
        self._stream = stream
        self._log_path = log_path
        self.thread = threading.Thread(target=self._pump, name=f"out-{name}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        with open(self._log_path, "ab") as log_file:
            for line in iter(self._stream.readline, b""):
                log_file.write(line)
                log_file.flush()
                text = line.decode(errors="replace").rstrip()
                with self._console_lock:
                    print(f"{self._name:<8} | {text}", flush=True)


class DevStack:
    def __init__(self, options: DevOptions):
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.database = EmbeddedDatabase(self.data_dir / "pgdata")
        self.broker = EmbeddedBroker(options.broker_port, self.logs / "broker.log", options.host)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._outputs: list[_Output] = []
        self._lock: DevLock | None = None
        self._stop = threading.Event()
        self._dsn: str | None = None

    def _check_ports(self) -> None:
        o = self.options
        wanted = {"--ingest-port": o.ingest_port, "--notifier-port": o.notifier_port,
                  "--matcher-port": o.matcher_port, "--broker-port": o.broker_port}
        taken = [f"{port} ({flag})" for flag, port in wanted.items()
                 if not port_is_free(o.host, port)]
        if taken:
            raise EmbeddedStackError(
                f"port(s) already in use on {o.host}: {', '.join(taken)}; "
                "choose others with the options named"
            )

    def _environment(self, dsn: str) -> dict[str, str]:
        o = self.options
        return service_environment(
            dsn=dsn, bootstrap=self.broker.bootstrap_servers, host=o.host,
            ports={"ingest": o.ingest_port, "notifier": o.notifier_port,
                   "matcher": o.matcher_port},
            data_dir=self.data_dir, log_level=o.log_level)

    async def _prepare(self, env: dict[str, str]) -> dict[str, str]:
        settings = CommonSettings.model_validate(
            {"database_url": env["GIAPRANH_DATABASE_URL"],
             "kafka_bootstrap_servers": env["GIAPRANH_KAFKA_BOOTSTRAP_SERVERS"],
             "topic_partitions": int(env["GIAPRANH_TOPIC_PARTITIONS"]),
             "kafka_idempotent_producer": False}
        )
        await wait_for_broker(settings)
        await ensure_topics(settings)
        pool = await create_pool(settings)
        try:
            if self.options.demo:
                return await seed_demo(pool, settings, self.data_dir / "demo-keys.json")
            return {}
        finally:
            await pool.close()

    def _spawn(self, name: str, env: dict[str, str]) -> None:
        child = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert child.stdout is not None
        self.children[name] = child
        self._outputs.append(_Output(name, child.stdout, self.logs / f"{name}.log"))

    def _wait_ready(self) -> None:
        o = self.options
        health = {"ingest": o.url(o.ingest_port), "notifier": o.url(o.notifier_port),
                  "matcher": o.url(o.matcher_port)}
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        pending = dict(health)
        while pending:
            for name in list(pending):
                child = self.children[name]
                if child.poll() is not None:
                    raise EmbeddedStackError(
                        f"{name} exited with code {child.returncode} while starting; "
                        f"see {self.logs / (name + '.log')}"
                    )
                try:
                    body = httpx.get(pending[name] + "/healthz", timeout=1.0).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if (body.get("status") == "ok" and body.get("hit_consumer", "ready") == "ready"
                        and body.get("reports", "consuming") == "consuming"):
                    del pending[name]
            if time.monotonic() > deadline:
                raise EmbeddedStackError(f"not ready after {READY_TIMEOUT_SECONDS:.0f} s: "
                                         f"{', '.join(pending)}")
            time.sleep(0.2)

    def _banner(self, keys: dict[str, str], started: float) -> str:
        o = self.options
        lines = [
            "",
            f"giapranh is running ({time.monotonic() - started:.1f} s). Ctrl-C stops everything.",
            f"  duty desk      {o.url(o.notifier_port)}/desk  (sign in with a unit's key)",
            f"  ingest API     {o.url(o.ingest_port)}/docs",
            f"  notifier API   {o.url(o.notifier_port)}/docs",
            f"  matcher        {o.url(o.matcher_port)}/healthz",
            f"  metrics        {o.url(o.ingest_port)}/metrics (and on each service)",
            f"  Kafka (Tansu)  {self.broker.bootstrap_servers}",
            f"  PostgreSQL     {self.database.dsn('giapranh')}",
            f"  logs           {self.logs}",
        ]
        if keys:
            lines += ["", "API keys of the demo units (also in "
                      f"{self.data_dir / 'demo-keys.json'}):"]
            lines += [f"  {code:<10} {key}" for code, key in keys.items()]
            example = json.dumps(EXAMPLE_SIGHTING, ensure_ascii=False)
            lines += [
                "", f"Try it: {EXAMPLE_SIGHTING_UNIT} reports a sighting of a subject "
                "wanted by CA-30307 (Long Xuyên):",
                f"  curl -s -X POST {o.url(o.ingest_port)}/v1/sightings \\",
                f"    -H 'Authorization: Bearer {keys[EXAMPLE_SIGHTING_UNIT]}' \\",
                f"    -H 'Content-Type: application/json' -d '{example}'",
                f"and watch it arrive on {o.url(o.notifier_port)}/desk signed in as CA-30307, or:",
                f"  curl -s {o.url(o.notifier_port)}/v1/alerts "
                f"-H 'Authorization: Bearer {keys['CA-30307']}'",
            ]
        return "\n".join(lines) + "\n"

    def run(self) -> int:
        lock = DevLock(self.data_dir)
        try:
            lock.acquire()
        except AlreadyRunning as running:
            print(already_running_message(str(running)), file=sys.stderr)
            return 1
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run(lock)
        except EmbeddedStackError as exc:
            print(f"giapranh dev: {exc}", file=sys.stderr)
            return 1
        finally:
            self._shutdown()
            lock.release()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, lock: DevLock) -> int:
        started = time.monotonic()
        self._check_ports()
        self.logs.mkdir(parents=True, exist_ok=True)
        print(f"starting PostgreSQL ({self.data_dir / 'pgdata'}) and the broker ...", flush=True)
        self.database.start()
        dsn = self._dsn = asyncio.run(self.database.create_database("giapranh"))
        self.broker.start()
        env = self._environment(dsn)
        keys = asyncio.run(self._prepare(env))
        for name in SERVICES:
            self._spawn(name, env)
        self._lock = lock
        self._publish_details()
        self._wait_ready()
        print(self._banner(keys, started), flush=True)
        self._supervise(env)
        return 0

    def _publish_details(self) -> None:
        """Where the stack is, and its children's process ids, in the lock file."""
        o = self.options
        assert self._lock is not None
        self._lock.publish({
            "pid": os.getpid(), "ingest": o.url(o.ingest_port),
            "notifier": o.url(o.notifier_port), "matcher": o.url(o.matcher_port),
            "broker": self.broker.bootstrap_servers, "database": self._dsn,
            "children": {name: child.pid for name, child in self.children.items()}})

    def _supervise(self, env: dict[str, str]) -> None:
        """Restart a child that exits, after a backoff that doubles while it keeps
        crashing (1 s up to 30 s; back to 1 s once it ran a minute), and say so."""
        backoff = {name: RESTART_BACKOFF_SECONDS for name in SERVICES}
        started = {name: time.monotonic() for name in SERVICES}
        due: dict[str, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            for name, child in list(self.children.items()):
                if name in due or child.poll() is None:
                    continue
                if now - started[name] > 60:
                    backoff[name] = RESTART_BACKOFF_SECONDS
                due[name] = now + backoff[name]
                print(f"giapranh dev: {name} exited with code {child.returncode}; restarting "
                      f"in {backoff[name]:.0f} s (see {self.logs / (name + '.log')})",
                      file=sys.stderr, flush=True)
                backoff[name] = min(backoff[name] * 2, MAX_RESTART_BACKOFF_SECONDS)
            for name, at in list(due.items()):
                if now >= at and not self._stop.is_set():
                    del due[name]
                    self._spawn(name, env)
                    self._publish_details()
                    started[name] = time.monotonic()
                    print(f"giapranh dev: {name} restarted", file=sys.stderr, flush=True)
            self._stop.wait(0.2)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stop.is_set():
            return
        print("\nstopping giapranh dev ...", flush=True)
        self._stop.set()

    def _shutdown(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for output in self._outputs:
            output.thread.join(timeout=2)
        self.broker.stop()
        self.database.stop()
