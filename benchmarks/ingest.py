"""Ingest throughput: single and batch sightings, accepted and relayed to the broker.

    python benchmarks/ingest.py [--singles 3000] [--batches 60] [--batch-size 1000]
        [--native-requests 20000] [--polite-seconds 20]

Starts its own embedded stack (PostgreSQL in a temp dir, Tansu on a free port) and the
ingest service as a real uvicorn process, then measures from a load generator on the same
machine (it shares the 2 cores with the service, the database and the broker):
- single requests: accepted sightings/s with `--concurrency` requests in flight;
- batch requests: accepted sightings/s, and end to end: from the first request until the
  relay has published the last outbox row to the broker;
- with a native client (ApacheBench, `ab`: `apt install apache2-utils`; a Python client
  saturates first), single requests at 32 in flight, then far beyond the capacity (512 in
  flight against an instance taking 64 at once, GIAPRANH_MAX_REQUESTS_IN_FLIGHT): every
  request answered 202 or 503 `overloaded`, how fast, and no client timeout (`ab` asks
  again at once after a refusal, so at 512 in flight the service mostly answers retries);
- 512 polite clients (`--polite-seconds` each way): each posts again as soon as it is
  answered, and after a refusal waits its `Retry-After`, exactly (the clients refused
  together come back together) or with up to 1 s more at random; every answer timed, by
  status, as read and at its arrival at the socket (the kernel's time, on Linux: the
  generator's own lag on the shared cores left out). Skip `ab` with `--native-requests 0`;
  `--client-nice 10` runs the generator and `ab` below the service's priority.
Targets (issue 3): batch ingest >= 10,000 sightings/s end to end; (issue 16) single
requests >= 1,500 sightings/s with a native client at 32 in flight; beyond the capacity,
refusals in under 50 ms and no timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from rich.progress import Progress
from stack import console, ingest_process, prepare, run_on_embedded_stack, wait_up

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
    conn, keys = await prepare(dsn, bootstrap, tmp, partitions=4)
    headers = {"Authorization": f"Bearer {keys['CA-31212']}"}
    try:
        with ingest_process(
                dsn, bootstrap, 4,
                # One key sends everything here: its rate limit would be what is measured.
                GIAPRANH_REQUESTS_PER_MINUTE_PER_KEY="100000000",
                # No matcher runs here to record verdicts: the reconciler would publish every
                # report again after 30 s, in the middle of the measures.
                GIAPRANH_RECONCILE_AFTER_SECONDS="3600",
                GIAPRANH_MAX_REQUESTS_IN_FLIGHT=str(args.max_in_flight),
                # ... and its unit's cap on requests in flight, none but the instance's.
                GIAPRANH_MAX_REQUESTS_IN_FLIGHT_PER_UNIT="0") as port:
            if args.client_nice:
                # The service, PostgreSQL and the broker started at the usual priority; the
                # load generator (this process, and `ab` started from it) yields to them.
                os.nice(args.client_nice)
            limits = httpx.Limits(max_connections=args.concurrency)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers,
                                         timeout=60, limits=limits) as client:
                await wait_up(client)
                singles = [("/v1/sightings", sighting(i)) for i in range(args.singles)]
                single_seconds = await run_requests(client, singles, args.concurrency,
                                                    "single requests")
                await wait_relayed(conn, args.singles)

                batches = [("/v1/sightings/batch",
                            {"sightings": [sighting(b * args.batch_size + i)
                                           for i in range(args.batch_size)]})
                           for b in range(args.batches)]
                total = args.batches * args.batch_size
                started = time.perf_counter()
                batch_seconds = await run_requests(client, batches, 4, "batch requests")
                await wait_relayed(conn, args.singles + total)
                end_to_end = time.perf_counter() - started
            native = overload = None
            if shutil.which("ab") and args.native_requests:
                url = f"http://127.0.0.1:{port}/v1/sightings"
                native = apache_bench(url, headers["Authorization"], tmp,
                                      args.native_requests, 32)
                overload = apache_bench(url, headers["Authorization"], tmp,
                                        args.native_requests, args.overload_concurrency)
            polite = [await polite_clients("127.0.0.1", port, headers["Authorization"],
                                           args.overload_concurrency, args.polite_seconds,
                                           jitter=jitter)
                      for jitter in (0.0, 1.0)]
    finally:
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
    for jitter, figures in zip(("exactly", "and up to 1 s more, at random"), polite):
        print(f"polite clients, {args.overload_concurrency}, each waiting the Retry-After of a "
              f"refusal {jitter}: {figures}")
    if native is None or overload is None:
        print("native client   : `ab` not found (apt install apache2-utils): not measured")
        return
    rate = native["rate"]
    print(f"native, 32 in flight : {native['complete']} requests, {rate:8.0f} sightings/s, "
          f"{native['non2xx']} not 202, {native['failed']} failed; p50 {native['p50']} ms, "
          f"p99 {native['p99']} ms, slowest {native['max']} ms (target >= "
          f"{TARGET_SINGLE_PER_SECOND}: ratio {rate / TARGET_SINGLE_PER_SECOND:.2f}, "
          f"{'met' if rate >= TARGET_SINGLE_PER_SECOND else 'NOT met'})")
    print(f"overload, {args.overload_concurrency} in flight (instance takes {args.max_in_flight}): "
          f"{overload['complete']} answered, {overload['non2xx']} refused 503, "
          f"{overload['rate']:.0f} answers/s, {overload['failed']} failed (timeouts, resets); "
          f"p50 {overload['p50']} ms, p99 {overload['p99']} ms, slowest {overload['max']} ms")
    print(f"refusals         : {overload['refusals']}")


TARGET_SINGLE_PER_SECOND = 1_500
BODY = {"occurred_at": "2026-11-20T21:14:00+07:00",
        "subject": {"name": "TRAN VAN KHACH", "national_id": "099 091 004 217"},
        "place": {"unit_code": "CA-31212", "address": "bến phà Thốt Nốt"}}


def apache_bench(url: str, authorization: str, tmp: Path, requests: int,
                 concurrency: int) -> dict[str, object]:
    """`ab` posting the same sighting without an event id (each is a new report); its
    figures, and how the 503s it received were answered (timed by a probe beside it)."""
    body = tmp / "sighting.json"
    body.write_text(json.dumps(BODY))
    probe_times: list[tuple[int, float]] = []
    with subprocess.Popen(
            ["ab", "-q", "-s", "30", "-c", str(concurrency), "-n", str(requests), "-p", str(body),
             "-T", "application/json", "-H", f"Authorization: {authorization}", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as ab:
        # A probe beside the load: the time of each answer and its status.
        with httpx.Client(timeout=30, headers={"Authorization": authorization}) as probe:
            time.sleep(0.5)
            while ab.poll() is None and len(probe_times) < 200:
                started = time.perf_counter()
                try:
                    status = probe.post(url, json=BODY).status_code
                except httpx.HTTPError:
                    status = 0
                probe_times.append((status, (time.perf_counter() - started) * 1000))
                time.sleep(0.02)
        output = ab.communicate()[0]
    number = lambda pattern: re.search(pattern, output)
    found = {
        "complete": int(number(r"Complete requests:\s+(\d+)").group(1)),
        "failed": int(number(r"Failed requests:\s+(\d+)").group(1))
        - int((number(r"Non-2xx responses:\s+(\d+)") or [0, 0])[1]),
        "non2xx": int((number(r"Non-2xx responses:\s+(\d+)") or [0, 0])[1]),
        "rate": float(number(r"Requests per second:\s+([\d.]+)").group(1)),
        "p50": int(number(r"\n\s+50%\s+(\d+)").group(1)),
        "p99": int(number(r"\n\s+99%\s+(\d+)").group(1)),
        "max": int(number(r"\n\s+100%\s+(\d+)").group(1)),
    }
    refused = sorted(ms for status, ms in probe_times if status == 503)
    accepted = sorted(ms for status, ms in probe_times if status == 202)
    pick = lambda values, q: values[min(len(values) - 1, int(q * len(values)))]
    found["refusals"] = (
        f"probe beside the load: {len(refused)} of {len(probe_times)} refused 503, answered in "
        f"p50 {pick(refused, 0.5):.1f} ms, p99 {pick(refused, 0.99):.1f} ms, slowest "
        f"{refused[-1]:.1f} ms (target < 50 ms); {len(accepted)} accepted"
        if refused else f"probe beside the load: none of {len(probe_times)} refused")
    return found


SO_TIMESTAMPNS = 35
"""Linux: a socket option asking the kernel for the time each packet arrived (recvmsg)."""


async def polite_clients(host: str, port: int, authorization: str, clients: int,
                         seconds: float, jitter: float = 0.0, timeout: float = 30) -> str:
    """`clients` keep-alive connections, each posting a sighting as soon as its last one
    was answered, and after a 503 or 429 waiting what its `Retry-After` asks, as
    `giapranh post` and any well-behaved client does (`ab` ignores it: each refused client
    asks again at once, so the service answers its own retries), plus up to `jitter` s at
    random (without it, the clients refused together come back together, and the last of
    the wave waits for every one before it). The time of every answer,
    by status; a client timing out or losing its connection counts as failed.

    Each answer is timed twice: until this process read it, and until it arrived at the
    client's socket (the kernel's receive time of its last packet, SO_TIMESTAMPNS on Linux).
    The load generator is a Python event loop sharing the two cores with the service: an
    answer can wait in its socket for the generator's own turn, which is not the
    service's latency.

    Raw HTTP/1.1 over non-blocking sockets: httpx costs the load generator several times
    more per request than the service spends refusing it."""
    loop = asyncio.get_running_loop()
    body = json.dumps(BODY).encode()
    request = (f"POST /v1/sightings HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: {authorization}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    read_times: dict[int, list[float]] = {}
    arrival_times: dict[int, list[float]] = {}
    failed = 0
    deadline = time.monotonic() + seconds
    ancillary = socket.CMSG_SPACE(16)

    async def connect() -> socket.socket:
        nonlocal failed
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # (not Linux: read times only)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
                return sock
            except (TimeoutError, OSError):  # (counted, and tried again)
                sock.close()
                failed += 1
                await asyncio.sleep(0.1)

    async def readable(sock: socket.socket) -> None:
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())

    async def answer(sock: socket.socket) -> tuple[int, dict[str, str], int | None]:
        """One response: its status, its header fields, when its last packet arrived."""
        data, arrived = bytearray(), None
        while True:
            try:
                chunk, extra, _, _ = sock.recvmsg(65536, ancillary)
            except BlockingIOError:
                await readable(sock)
                continue
            if not chunk:
                raise ConnectionError("closed by the service")
            for level, kind, value in extra:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds_, nanoseconds = struct.unpack("qq", value[:16])
                    arrived = seconds_ * 1_000_000_000 + nanoseconds
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = data[:end].decode("latin-1").lower().split("\r\n")
            fields = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
            if len(data) >= end + 4 + int(fields.get("content-length", 0)):
                return int(head[0].split(" ", 2)[1]), fields, arrived

    async def client() -> None:
        nonlocal failed
        sock = await connect()
        try:
            while time.monotonic() < deadline:
                sent, started = time.time_ns(), time.perf_counter()
                try:
                    async with asyncio.timeout(timeout):
                        await loop.sock_sendall(sock, request)
                        status, fields, arrived = await answer(sock)
                except (TimeoutError, OSError):
                    failed += 1
                    sock.close()
                    sock = await connect()
                    continue
                read = (time.perf_counter() - started) * 1000
                read_times.setdefault(status, []).append(read)
                arrival_times.setdefault(status, []).append(
                    read if arrived is None else (arrived - sent) / 1e6)
                if fields.get("connection") == "close":
                    sock.close()
                    sock = await connect()
                if status in (429, 503):
                    await asyncio.sleep(float(fields.get("retry-after", 1))
                                        + random.uniform(0, jitter))
        finally:
            sock.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    pick = lambda values, q: values[min(len(values) - 1, int(q * len(values)))]
    parts = []
    for status, times in sorted(read_times.items()):
        times.sort()
        arrivals = sorted(arrival_times[status])
        parts.append(f"{len(times)} answered {status} ({len(times) / seconds:.0f}/s) in p50 "
                     f"{pick(times, 0.5):.1f} ms, p99 {pick(times, 0.99):.1f} ms, slowest "
                     f"{times[-1]:.1f} ms (at the socket: p50 {pick(arrivals, 0.5):.1f}, "
                     f"p99 {pick(arrivals, 0.99):.1f} ms)")
    refused = sorted(t for status in (429, 503) for t in read_times.get(status, []))
    arrived = sorted(t for status in (429, 503) for t in arrival_times.get(status, []))
    verdict = (f"refusals p99 {pick(refused, 0.99):.1f} ms as read, "
               f"{pick(arrived, 0.99):.1f} ms at the socket (target < 50 ms: "
               f"{'met' if pick(arrived, 0.99) < 50 and not failed else 'NOT met'} at the "
               f"socket, {'met' if pick(refused, 0.99) < 50 and not failed else 'NOT met'} "
               f"as read)"
               if refused else "none refused (not beyond the capacity)")
    return "; ".join(parts) + f"; {failed} failed (timeouts, resets); {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--native-requests", type=int, default=20_000)
    parser.add_argument("--overload-concurrency", type=int, default=512)
    parser.add_argument("--polite-seconds", type=float, default=20.0)
    parser.add_argument("--client-nice", type=int, default=0,
                        help="run the load generator (and ab) at this niceness, as clients "
                             "on other machines would not take the service's cores")
    parser.add_argument("--max-in-flight", type=int, default=64,
                        help="GIAPRANH_MAX_REQUESTS_IN_FLIGHT of the measured instance")
    run_on_embedded_stack(benchmark, parser.parse_args())

if __name__ == "__main__":
    main()
