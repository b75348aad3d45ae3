"""Group commit: single reports that arrive together are written in one transaction.

Each `POST /v1/sightings` used to cost its own transaction (BEGIN, two INSERTs, NOTIFY,
COMMIT: five round trips and a WAL flush). Here a request queues its report and waits; a
few writer tasks each take every report waiting (up to `max_group`), write them with their
outbox rows in one statement (one round trip, one commit), and answer each request only
once it has committed. The guarantee is the one a request had alone: 202 means stored with its outbox
row; a failure answers every request of the group with the error, and none was stored.
Under load the groups grow by themselves; alone, a report waits for nobody.

A report whose id was already used for another request is answered 409 alone: it wrote
nothing, and the rest of its group is committed. Two reports with one id never share a
group (the second waits for the next), so a retry racing its original is recognised as a
repeat.

Load shedding: when the oldest report waiting has waited longer than `max_wait_seconds`,
the database is not keeping up; a new report is refused at once with 503 `overloaded` and
`Retry-After`, instead of joining a queue its client would time out in.

A group's write is given `write_timeout_seconds`. Past it the writer lets go of the group
and goes on with the next one (a writer stuck for ever on a lock or a silent connection
would keep the oldest wait growing, and ingest would refuse every report until it came
back). The group's connection is closed at once, not cancelled (a silent connection never
acknowledges a cancel), and what became of the write is settled apart: on another
connection the group's server process is ended (`pg_terminate_backend`, waiting until it
is gone, so its transaction has committed or rolled back for good), then its reports are
looked up. Those stored are answered 202 as usual (the statement may commit just as the
time runs out, its answer lost); the others 503 (not stored: try again). When even that
cannot be settled in time, 503 says the report may have been stored and names its event
id: a retry with it is never stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg

from services.ingest.store import CONNECTION_LOST, Accepted, IngestStore, Report
from shared import metrics
from shared.db import server_process
from shared.errors import Conflict, Overloaded, ServiceUnavailable
from shared.topics import TopicSpec

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                      asyncpg.AdminShutdownError, asyncpg.QueryCanceledError)
"""The database's own refusals that say nothing about the reports: retried by the client."""


@dataclass(eq=False)
class _Waiting:
    report: Report
    since: float
    future: asyncio.Future[Accepted] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    def __init__(self, store: IngestStore, spec: TopicSpec, *, writers: int = 3,
                 max_group: int = 500, max_wait_seconds: float = 1.0,
                 write_timeout_seconds: float = 10.0):
        self._store = store
        self._spec = spec
        self._writers = writers
        self._max_group = max_group
        self.max_wait_seconds = max_wait_seconds
        self.write_timeout_seconds = write_timeout_seconds
        self._queue: deque[_Waiting] = deque()
        self._writing: dict[int, float] = {}  # (a group being written: its oldest report's time)
        self._wake = asyncio.Event()
        self._settling: set[asyncio.Task[None]] = set()
        self.running = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def oldest_wait(self) -> float:
        """Seconds the oldest report not yet answered has waited, in the queue or in a
        writer (0 when none waits): a writer stuck on the database counts, or a burst
        that one writer took whole would hide a database that stopped."""
        since = [*self._writing.values(), *([self._queue[0].since] if self._queue else [])]
        return time.monotonic() - min(since) if since else 0.0

    async def record(self, report: Report) -> Accepted:
        """Store `report` with its outbox row, in a group; its acceptance once committed."""
        if not self.running:  # (not started, or stopping: write it alone)
            return (await self._store.record_many(
                [report], spec=self._spec, timeout=self.write_timeout_seconds))[0]
        waited = self.oldest_wait()
        if waited > self.max_wait_seconds:
            metrics.HTTP_REJECTIONS.labels(service="ingest", reason="overloaded").inc()
            raise Overloaded(
                f"reports have waited {waited:.1f} s to be written, more than "
                f"GIAPRANH_INGEST_MAX_WAIT_SECONDS ({self.max_wait_seconds:g} s): the "
                "database is not keeping up; try again after 1 s", retry_after=1)
        waiting = _Waiting(report, time.monotonic())
        self._queue.append(waiting)
        self._wake.set()
        return await asyncio.shield(waiting.future)

    async def run(self) -> None:
        """The writers, for as long as it runs; reports still waiting when it stops are
        answered 503 (none of them was written)."""
        self.running = True
        try:
            await asyncio.gather(*(self._write_groups() for _ in range(self._writers)))
        finally:
            self.running = False
            for task in list(self._settling):
                task.cancel()
            while self._queue:
                waiting = self._queue.popleft()
                if not waiting.future.done():
                    waiting.future.set_exception(ServiceUnavailable(
                        "ingest is stopping: try again", retry_after=1))

    def _take(self) -> list[_Waiting]:
        group: list[_Waiting] = []
        ids: set[UUID] = set()
        later: list[_Waiting] = []
        while self._queue and len(group) < self._max_group:
            waiting = self._queue.popleft()
            event_id = waiting.report.event.event_id
            if event_id in ids:
                later.append(waiting)  # the same id twice: the next group takes it
                continue
            ids.add(event_id)
            group.append(waiting)
        self._queue.extendleft(reversed(later))
        return group

    async def _write_groups(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            group = self._take()
            if not group:
                continue
            try:
                await self._write(group)
            except Exception as exc:  # noqa: BLE001 - a fault of ours: this group fails,
                # answered, and the writer goes on (a dead writer would hold every request)
                log.exception("writing %d report(s) failed", len(group))
                fault = type(exc).__name__
                for waiting in group:
                    event_id = waiting.report.event.event_id
                    self._refuse([waiting], lambda: ServiceUnavailable(
                        f"ingest could not store the report ({fault}): try again with the "
                        f"same event id {event_id} (it may have been stored)",
                        field="event_id", retry_after=1))

    async def _settle_apart(self, group: list[_Waiting], conn: asyncpg.Connection,
                            process: tuple[int, datetime | None]) -> None:
        """The group's connection closed, and what became of its write settled by a task
        of its own: the writer goes on with the next group at once."""
        await self._store.let_go(conn, abort=True)
        task = asyncio.create_task(self._settle(group, process))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, group: list[_Waiting],
                      process: tuple[int, datetime | None]) -> None:
        """What became of a group whose write ran out of time (its connection is closed):
        its server process ended for good on another connection, then each report
        answered as stored (202) or not (503)."""
        reports = [waiting.report for waiting in group]
        limit = self.write_timeout_seconds
        try:
            stored = await self._store.settle(process, reports, limit)
        except BaseException as exc:  # unknown: the client retries with the event id
            log.warning("could not settle %d report(s) whose write ran out of time: %r",
                        len(group), exc)
            metrics.HTTP_REJECTIONS.labels(service="ingest", reason="unsettled").inc(
                len(group))
            for waiting in group:
                event_id = waiting.report.event.event_id
                self._refuse([waiting], lambda: ServiceUnavailable(
                    "the database did not answer within GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS "
                    f"({limit:g} s) and the report may have been stored: try again with the "
                    f"same event id {event_id} (a retry with it is never stored twice)",
                    field="event_id", retry_after=1))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for waiting, accepted in zip(group, stored, strict=True):
            if waiting.future.done():
                continue
            if accepted is not None:
                waiting.future.set_result(accepted)
            else:
                self._refuse([waiting], lambda: ServiceUnavailable(
                    "the database did not store the report within "
                    f"GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS ({limit:g} s): try again",
                    retry_after=1))

    @staticmethod
    def _refuse(group: list[_Waiting], error: Callable[[], ServiceUnavailable]) -> None:
        for waiting in group:
            if not waiting.future.done():
                waiting.future.set_exception(error())

    @staticmethod
    def _fail(group: list[_Waiting], exc: BaseException) -> None:
        """Every request of the group answered 503 (none of its reports was stored), or,
        for a report the database refused by itself, that refusal (a server error)."""
        log.warning("%d report(s) could not be written: %r", len(group), exc)
        for waiting in group:
            if waiting.future.done():
                continue
            if isinstance(exc, asyncpg.PostgresError) and not isinstance(
                    exc, _CONNECTION_ERRORS):
                waiting.future.set_exception(exc)
            else:
                waiting.future.set_exception(ServiceUnavailable(
                    f"the database cannot store reports now ({type(exc).__name__}): "
                    "try again", retry_after=1))

    async def _write(self, group: list[_Waiting]) -> None:
        token = id(group)
        self._writing[token] = min(waiting.since for waiting in group)
        try:
            await self._write_group(group)
        finally:
            self._writing.pop(token, None)

    async def _write_group(self, group: list[_Waiting]) -> None:
        conn: asyncpg.Connection | None = None
        try:
            # (`_write`'s insert is one statement: atomic without a transaction around it,
            # which would cost two more round trips)
            async with asyncio.timeout(self.write_timeout_seconds):
                conn = await self._store.pool.acquire()
                # (named now: a connection lost is detached from its process at once)
                process = server_process(conn)
                results = await self._store._write(
                    conn, [waiting.report for waiting in group], spec=self._spec,
                    alone=True)
        except TimeoutError:
            log.warning("%d report(s) not written within %g s: settling what became of "
                        "them apart", len(group), self.write_timeout_seconds)
            if conn is None:  # (no connection in time: nothing was written)
                self._refuse(group, lambda: ServiceUnavailable(
                    "the database did not take the report within "
                    f"GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS ({self.write_timeout_seconds:g} "
                    "s): try again", retry_after=1))
                return
            await self._settle_apart(group, conn, process)
            return
        except CONNECTION_LOST as exc:
            if conn is None:  # (no connection: nothing was written)
                self._fail(group, exc)
                return
            # Lost in the middle of the write: it may have committed before its answer
            # was lost, so what became of it is settled like a write out of time.
            log.warning("the connection writing %d report(s) was lost (%r): settling what "
                        "became of them apart", len(group), exc)
            await self._settle_apart(group, conn, process)
            return
        except asyncpg.PostgresError as exc:
            if conn is not None:
                await self._store.let_go(conn, abort=False)  # (the connection is fine)
            if len(group) > 1 and not isinstance(exc, _CONNECTION_ERRORS):
                # One report the database refuses must not fail the others waiting with
                # it: each is written alone, and only its own request gets the error.
                for waiting in group:
                    await self._write([waiting])
                return
            self._fail(group, exc)
            return
        except BaseException as exc:
            if conn is not None:
                await self._store.let_go(conn, abort=True)
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(
                        ServiceUnavailable(
                            "ingest is stopping: try again with the same event id "
                            f"{waiting.report.event.event_id} (it may have been stored)",
                            field="event_id", retry_after=1)
                        if isinstance(exc, asyncio.CancelledError) else exc)
            raise
        metrics.GROUP_COMMIT_SIZE.observe(len(group))
        for waiting, result in zip(group, results, strict=True):
            if waiting.future.done():
                continue
            if isinstance(result, Conflict):
                waiting.future.set_exception(Conflict(result.message, field="event_id"))
            elif isinstance(result, ServiceUnavailable):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)
        # (answered first: stored is stored; a connection that failed after the write is
        # not kept)
        await self._store.let_go(conn, abort=any(
            isinstance(result, ServiceUnavailable) for result in results))

