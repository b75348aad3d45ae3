"""Ingest's writes: each accepted event and its outbox row in one PostgreSQL transaction."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
from pydantic import BaseModel, Field

from shared import audit
from shared.audit import Actor
from shared.db import DATABASE_ERRORS, server_process
from shared.errors import Conflict, Forbidden, NotFound, ServiceUnavailable, Unprocessable
from shared.events import (
    Event,
    WatchlistEntry,
    WatchlistEntryCancelled,
    WatchlistEntryUpserted,
    national_id_digits,
    utcnow,
)
from shared.settings import CommonSettings
from shared.topics import WATCHLIST, TopicSpec

OUTBOX_CHANNEL = "giapranh_outbox"


@dataclass(frozen=True)
class Accepted:
    event_id: UUID
    type: str
    recorded_at: datetime
    duplicate: bool
    """True when this was a retry of an event already accepted (nothing new was written)."""


log = logging.getLogger(__name__)

CONNECTION_LOST = (OSError, asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError)
"""The connection gone in the middle of a write, whose fate is then not known."""


@dataclass(frozen=True)
class Report:
    """One event to accept, with the fingerprint of the request body it came from."""

    event: Event
    fingerprint: bytes
    person_id: int | None = None
    """Who sent it (the key's person); None for events the system makes itself."""


def request_hash(canonical_body: str) -> bytes:
    return hashlib.sha256(canonical_body.encode()).digest()


DEFAULT_MAX_LOOKALIKES = 3


class TooManyLookalikes(Unprocessable):
    code = "too_many_lookalikes"


def fold(text: str) -> str:
    """Lower case, no diacritics (đ -> d), single spaces: how look-alike names compare."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "d"))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


def lookalike_keys(entry: WatchlistEntry) -> tuple[str | None, str | None]:
    """(folded name | birth year, national id digits): entries sharing either look alike."""
    year = entry.birth_year or (entry.birth_date.year if entry.birth_date else None)
    name = f"{fold(entry.full_name)}|{year or ''}" if entry.full_name else None
    digits = national_id_digits(entry.national_id) if entry.national_id else None
    return name, digits or None


def _as_stored(report: Report, row: asyncpg.Record | None) -> Accepted | None:
    """The acceptance of `report` if `row` (its id's stored event) is this same request:
    same unit, type and body; a duplicate unless this very report wrote it (the time ingest
    received it is stored with it)."""
    event = report.event
    if row is None or (row["unit_code"], row["type"], row["request_hash"]) != (
            event.producer_unit, event.type, report.fingerprint):
        return None
    return Accepted(event.event_id, row["type"], row["recorded_at"],
                    duplicate=row["recorded_at"] != event.recorded_at)


class IngestStore:
    def __init__(self, pool: asyncpg.Pool, settings: CommonSettings, *,
                 max_lookalikes: int = DEFAULT_MAX_LOOKALIKES):
        self._pool = pool
        self._settings = settings
        self._max_lookalikes = max_lookalikes
        self._known_units: set[str] = set()

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def unknown_units(self, codes: set[str]) -> set[str]:
        """The codes no unit has. Units are never deleted (events reference them), so a
        code once found is remembered: a report costs no round trip for its place."""
        asked = codes - self._known_units
        if not asked:
            return set()
        known = {row["code"] for row in await self._pool.fetch(
            "SELECT code FROM units WHERE code = ANY($1::text[])", list(asked))}
        if len(self._known_units) < 100_000:
            self._known_units |= known
        return asked - known

    async def record(self, event: Event, *, spec: TopicSpec, fingerprint: bytes,
                     person_id: int | None = None, timeout: float | None = None) -> Accepted:
        """Store `event` and its outbox row, or recognise a retry of the same request.

        A retry (same event id, same unit, same body fingerprint) returns the original
        acceptance and writes nothing; the same id with another body is a 409.
        """
        [accepted] = await self.record_many([Report(event, fingerprint, person_id)], spec=spec,
                                            timeout=timeout)
        return accepted

    async def record_many(self, reports: list[Report], *, spec: TopicSpec,
                          timeout: float | None = None) -> list[Accepted]:
        """Store a batch of events and their outbox rows in one transaction, all or none.
        Each outbox row is the event as `spec` publishes it (topic, key, encoding).

        With `timeout`: past it the connection is closed and what became of the batch is
        settled (`settle`): all stored, their acceptances; none, 503 to try again; not
        known, 503 to send it again with the same event ids."""
        if timeout is None:
            async with self._pool.acquire() as conn, conn.transaction():
                return await self._record(conn, reports, spec=spec)
        conn: asyncpg.Connection | None = None
        healthy = False
        try:
            async with asyncio.timeout(timeout):
                conn = await self._pool.acquire()
                # (named now: a connection lost is detached from its process at once)
                process = server_process(conn)
                transaction = conn.transaction()
                await transaction.start()
                try:
                    results = await self._record(conn, reports, spec=spec)
                except (Conflict, asyncpg.PostgresError) as exc:
                    if isinstance(exc, CONNECTION_LOST):
                        raise
                    await transaction.rollback()
                    healthy = True
                    raise
                await transaction.commit()
                healthy = True
        except (TimeoutError, *CONNECTION_LOST) as exc:
            if conn is None:
                if not isinstance(exc, TimeoutError):
                    raise  # (no connection: nothing was written)
                raise ServiceUnavailable(
                    "the database did not take the report within "
                    f"GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS ({timeout:g} s): try again",
                    retry_after=1) from None
            # Out of time or lost in the middle: the commit may have been done, its
            # answer lost. What became of the batch is settled on another connection.
            log.warning("a batch of %d report(s) was not written within %g s or its "
                        "connection was lost (%r): settling what became of it",
                        len(reports), timeout, exc)
            closing, conn = conn, None
            await self.let_go(closing, abort=True)
            try:
                stored = await self.settle(process, reports, timeout)
            except Exception:  # noqa: BLE001 - not known: said so
                raise ServiceUnavailable(
                    "the database did not answer within GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS "
                    f"({timeout:g} s) and the reports may have been stored: send them again "
                    "with the same event ids (a retry with them is never stored twice)",
                    retry_after=1) from None
            if all(accepted is not None for accepted in stored):
                return stored  # type: ignore[return-value]
            raise ServiceUnavailable(
                "the database did not store the reports within "
                f"GIAPRANH_INGEST_WRITE_TIMEOUT_SECONDS ({timeout:g} s): try again",
                retry_after=1) from None
        finally:
            if conn is not None:
                await self.let_go(conn, abort=not healthy)
        return results

    async def let_go(self, conn: asyncpg.Connection, *, abort: bool) -> None:
        """Give the connection back to the pool; with `abort`, closed at once first (a
        cancelled or broken connection: the pool would wait for ever for a silent one to
        acknowledge a cancel, or to roll back)."""
        if abort:
            try:
                conn.terminate()
            except asyncpg.InterfaceError:  # (lost: the pool already took it back)
                return
        await self._pool.release(conn)

    async def settle(self, process: tuple[int, datetime | None], reports: list[Report],
                     limit: float) -> list[Accepted | None]:
        """What became of a write whose connection was closed or lost before its answer
        came: on another connection its server process (`server_process`: pid and start,
        so that a later process given the same pid is left alone) is ended for good,
        waiting until it is gone so that its transaction has committed or rolled back;
        then each report is looked up. Raises when that cannot be done within `limit`
        seconds."""
        pid, started = process
        conn: asyncpg.Connection | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._pool.acquire()
                # (none when it already ended on seeing its client go)
                await conn.fetchval(
                    "SELECT pg_terminate_backend(pid, $3) FROM pg_stat_activity "
                    "WHERE pid = $1 AND ($2::timestamptz IS NULL OR backend_start = $2)",
                    pid, started, max(1, int((deadline - loop.time()) * 1000)))
                # (a process whose start this role may not see counts as still there)
                if await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND ("
                        "$2::timestamptz IS NULL OR backend_start = $2 OR backend_start IS NULL)",
                        pid, started):
                    raise TimeoutError(f"server process {pid} is still there")
                stored = await self.which_stored(conn, reports)
        except BaseException:
            if conn is not None:
                await self.let_go(conn, abort=True)  # (this one may be silent too)
            raise
        await self.let_go(conn, abort=False)
        return stored

    async def _record(
        self, conn: asyncpg.Connection, reports: list[Report], *, spec: TopicSpec
    ) -> list[Accepted]:
        results = await self._write(conn, reports, spec=spec)
        for result in results:
            if isinstance(result, Conflict | ServiceUnavailable):
                raise result
        return results  # type: ignore[return-value]

    async def _write(
        self, conn: asyncpg.Connection, reports: list[Report], *, spec: TopicSpec,
        alone: bool = False,
    ) -> list[Accepted | Conflict | ServiceUnavailable]:
        """Each report's acceptance, or the conflict of one whose id was already used for
        another request (it wrote nothing; the others are written all the same).

        `alone`: no transaction around, so the insert has committed once it answers. If
        the look-up of repeated ids after it then fails (cancelled, say), the reports it
        inserted are still accepted and only the repeated ones are refused, 503 naming
        their ids (a failure for all would tell a client that sent no event id to send
        again a report already stored)."""
        events = [r.event for r in reports]
        records = [spec.record(self._settings, e) for e in events]
        encoded = [value for _, _, value in records]
        # One statement, one round trip: the events, their outbox rows (in request order)
        # and, by the outbox's trigger, the NOTIFY that wakes the relay; atomic by itself.
        inserted = {
            row["event_id"]: row["recorded_at"]
            for row in await conn.fetch(
                """WITH input AS (
                       SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[],
                                            $5::timestamptz[], $6::timestamptz[], $7::bytea[],
                                            $8::bigint[], $9::text[], $10::text[])
                                WITH ORDINALITY
                             AS input (i, t, u, h, o, r, p, who, topic, key, n)),
                   written AS (
                       INSERT INTO events (event_id, type, unit_code, request_hash,
                                           occurred_at, recorded_at, payload, person_id)
                       SELECT i, t, u, h, o, r, convert_from(p, 'UTF8')::jsonb, who
                         FROM input
                       ON CONFLICT (event_id) DO NOTHING
                       RETURNING event_id, recorded_at),
                   queued AS (
                       INSERT INTO outbox (event_id, topic, key, payload)
                       SELECT input.i, input.topic, input.key, input.p
                         FROM input JOIN written ON written.event_id = input.i
                        ORDER BY input.n)
                   SELECT event_id, recorded_at FROM written""",
                [e.event_id for e in events], [e.type for e in events],
                [e.producer_unit for e in events], [r.fingerprint for r in reports],
                [e.occurred_at for e in events], [e.recorded_at for e in events], encoded,
                [r.person_id for r in reports], [topic for topic, _, _ in records],
                [key.decode() for _, key, _ in records],
            )
        }
        fresh = [r for r in reports if r.event.event_id in inserted]
        # (a second statement, only when some id was seen before: the first has committed)
        try:
            repeated = {
                row["event_id"]: row
                for row in await conn.fetch(
                    "SELECT event_id, type, unit_code, request_hash, recorded_at FROM events "
                    "WHERE event_id = ANY($1::uuid[])",
                    [r.event.event_id for r in reports if r.event.event_id not in inserted],
                )
            } if len(fresh) < len(reports) else {}
        except DATABASE_ERRORS as exc:
            if not alone:
                raise
            log.warning("%d report(s) written, but the look-up of %d repeated id(s) "
                        "failed: %r", len(fresh), len(reports) - len(fresh), exc)
            unread: str | None = type(exc).__name__
            repeated = {}
        else:
            unread = None
        results: list[Accepted | Conflict | ServiceUnavailable] = []
        for index, report in enumerate(reports):
            event = report.event
            if event.event_id in inserted:
                results.append(Accepted(event.event_id, event.type, inserted[event.event_id],
                                        duplicate=False))
                continue
            if unread is not None:
                results.append(ServiceUnavailable(
                    f"the database could not check the event id {event.event_id}, used "
                    f"before ({unread}): try again with it", field="event_id",
                    retry_after=1))
                continue
            accepted = _as_stored(report, repeated.get(event.event_id))
            if accepted is None:
                # Also a repeated id inside one batch with different bodies.
                where = f"{index}.event_id" if len(reports) > 1 else "event_id"
                results.append(Conflict(
                    f"event id {event.event_id} was already used for a different request",
                    field=where))
                continue
            results.append(dataclasses.replace(accepted, duplicate=True))
        return results

    @staticmethod
    async def which_stored(conn: asyncpg.Connection,
                           reports: list[Report]) -> list[Accepted | None]:
        """Each report's acceptance if it is stored (by this request or an earlier one
        with the same body), else None: for a write whose answer was lost."""
        rows = {row["event_id"]: row for row in await conn.fetch(
            "SELECT event_id, type, unit_code, request_hash, recorded_at FROM events "
            "WHERE event_id = ANY($1::uuid[])", [r.event.event_id for r in reports])}
        return [_as_stored(report, rows.get(report.event.event_id)) for report in reports]

    async def upsert_watchlist_entry(
        self, entry: WatchlistEntry, *, unit_code: str, actor: Actor | None = None
    ) -> tuple[WatchlistEntry, Accepted | None]:
        """Create or update an entry owned by `unit_code`; the server assigns the version.

        Re-sending the current content changes nothing and returns (entry, None).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT owner_unit, version, entry, cancelled_at FROM watchlist_entries "
                "WHERE entry_id = $1 FOR UPDATE",
                entry.entry_id,
            )
            if current is not None and current["owner_unit"] != unit_code:
                raise Forbidden(
                    f"watchlist entry {entry.entry_id} belongs to unit {current['owner_unit']}",
                    field="entry_id",
                )
            version = 1 if current is None else current["version"] + 1
            if current is not None and current["cancelled_at"] is None:
                unchanged = entry.model_copy(update={"version": current["version"]})
                if unchanged.model_dump(mode="json") == current["entry"]:
                    return unchanged, None
            stored = entry.model_copy(update={"version": version, "owner_unit": unit_code})
            name_key, id_key = lookalike_keys(stored)
            await self._check_lookalikes(conn, stored, name_key, id_key)
            await conn.execute(
                """INSERT INTO watchlist_entries
                       (entry_id, owner_unit, category, version, entry, valid_until, name_key,
                        id_key)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (entry_id) DO UPDATE SET
                       category = EXCLUDED.category, version = EXCLUDED.version,
                       entry = EXCLUDED.entry, valid_until = EXCLUDED.valid_until,
                       name_key = EXCLUDED.name_key, id_key = EXCLUDED.id_key,
                       cancelled_at = NULL, cancel_reason = NULL, updated_at = now()""",
                stored.entry_id, unit_code, stored.category.value, version,
                stored.model_dump(mode="json"), stored.valid_until, name_key, id_key,
            )
            event = WatchlistEntryUpserted(
                occurred_at=utcnow(), producer_unit=unit_code, entry=stored
            )
            [accepted] = await self._record(
                conn, [Report(event, request_hash(event.model_dump_json()),
                              actor.person_id if actor else None)], spec=WATCHLIST,
            )
            if actor is not None:
                await audit.record(conn, actor, "watchlist.upsert", subject=stored.entry_id,
                                   detail={"version": version, "event_id": event.event_id,
                                           "category": stored.category.value})
            return stored, accepted

    async def _check_lookalikes(self, conn: asyncpg.Connection, entry: WatchlistEntry,
                                name_key: str | None, id_key: str | None) -> None:
        """A unit may list at most `max_lookalikes` active entries with one name and birth
        year, or one national id: copies of another unit's wanted person must not crowd
        the real one out, nor bury the desks under their alerts."""
        # One writer per unit at a time, so concurrent requests cannot pass the count.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                           f"lookalikes:{entry.owner_unit}")
        for key, column, what, field in (
                (name_key, "name_key", "this name and birth year", "full_name"),
                (id_key, "id_key", "this national id", "national_id")):
            if key is None:
                continue
            count = await conn.fetchval(
                f"""SELECT count(*) FROM watchlist_entries
                     WHERE owner_unit = $1 AND {column} = $2 AND cancelled_at IS NULL
                       AND entry_id <> $3""", entry.owner_unit, key, entry.entry_id)
            if count >= self._max_lookalikes:
                raise TooManyLookalikes(
                    f"unit {entry.owner_unit} already lists {count} active entries with "
                    f"{what} (at most {self._max_lookalikes}, "
                    "GIAPRANH_MAX_LOOKALIKES_PER_UNIT); update or cancel one of them",
                    field=field)

    async def cancel_watchlist_entry(
        self, entry_id: str, *, unit_code: str, reason: str, actor: Actor | None = None
    ) -> Accepted:
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT owner_unit, version, cancelled_at FROM watchlist_entries "
                "WHERE entry_id = $1 FOR UPDATE",
                entry_id,
            )
            if current is None:
                raise NotFound(f"no watchlist entry {entry_id}", field="entry_id")
            if current["owner_unit"] != unit_code:
                raise Forbidden(
                    f"watchlist entry {entry_id} belongs to unit {current['owner_unit']}",
                    field="entry_id",
                )
            if current["cancelled_at"] is not None:
                raise Conflict(f"watchlist entry {entry_id} is already cancelled")
            version = current["version"] + 1
            await conn.execute(
                """UPDATE watchlist_entries
                      SET version = $2, cancelled_at = now(), cancel_reason = $3,
                          updated_at = now()
                    WHERE entry_id = $1""",
                entry_id, version, reason,
            )
            event = WatchlistEntryCancelled(
                occurred_at=utcnow(), producer_unit=unit_code, entry_id=entry_id,
                owner_unit=unit_code, version=version, reason=reason,
            )
            [accepted] = await self._record(
                conn, [Report(event, request_hash(event.model_dump_json()),
                              actor.person_id if actor else None)], spec=WATCHLIST,
            )
            if actor is not None:
                await audit.record(conn, actor, "watchlist.cancel", subject=entry_id,
                                   detail={"version": version, "event_id": event.event_id,
                                           "reason": reason})
            return accepted

    async def event_status(self, event_id: UUID, unit_code: str) -> EventStatus:
        row = await self._pool.fetchrow(
            """SELECT e.type, e.recorded_at, o.dispatched_at, e.redacted_at,
                      coalesce((SELECT array_agg(a.alert_id ORDER BY a.raised_at)
                                  FROM notifier_report_alerts a
                                 WHERE a.source_event_id = e.event_id),
                               '{}') AS alerts
                 FROM events e LEFT JOIN outbox o USING (event_id)
                WHERE e.event_id = $1 AND e.unit_code = $2""",
            event_id, unit_code,
        )
        if row is None:
            raise NotFound(f"no event {event_id} from unit {unit_code}", field="event_id")
        state = ("matched" if row["alerts"] else "purged" if row["redacted_at"]
                 else "relayed" if row["dispatched_at"] else "accepted")
        return EventStatus(
            event_id=event_id, type=row["type"], status=state, recorded_at=row["recorded_at"],
            relayed_at=row["dispatched_at"], alerts=row["alerts"],
            purged_at=row["redacted_at"],
        )

    async def own_entries(
        self, unit_code: str, *, include_cancelled: bool, limit: int, offset: int
    ) -> list[WatchlistEntryView]:
        rows = await self._pool.fetch(
            f"""SELECT {_ENTRY_COLUMNS} FROM watchlist_entries
                 WHERE owner_unit = $1 AND ($2 OR cancelled_at IS NULL)
                 ORDER BY updated_at DESC, entry_id LIMIT $3 OFFSET $4""",
            unit_code, include_cancelled, limit, offset,
        )
        return [WatchlistEntryView.from_row(row) for row in rows]

    async def own_entry(self, entry_id: str, unit_code: str) -> WatchlistEntryView:
        row = await self._pool.fetchrow(
            f"SELECT {_ENTRY_COLUMNS} FROM watchlist_entries "
            "WHERE entry_id = $1 AND owner_unit = $2",
            entry_id, unit_code,
        )
        if row is None:
            raise NotFound(f"unit {unit_code} has no watchlist entry {entry_id}", field="entry_id")
        return WatchlistEntryView.from_row(row)


_ENTRY_COLUMNS = "entry::text AS entry, cancelled_at, cancel_reason, updated_at"


class EventStatus(BaseModel):
    event_id: UUID
    type: str
    status: Literal["accepted", "relayed", "matched", "purged"]
    recorded_at: datetime
    relayed_at: datetime | None
    alerts: list[UUID] = Field(description="Alerts this event raised (empty: none yet).")
    purged_at: datetime | None = Field(None, description=(
        "When the sighting, having matched nothing, lost its subject after the retention "
        "period (GIAPRANH_SIGHTING_RETENTION_DAYS)."))


class WatchlistEntryView(BaseModel):
    entry: WatchlistEntry
    cancelled_at: datetime | None
    cancel_reason: str | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WatchlistEntryView:
        return cls(
            entry=WatchlistEntry.model_validate_json(row["entry"]),
            cancelled_at=row["cancelled_at"], cancel_reason=row["cancel_reason"],
            updated_at=row["updated_at"],
        )


async def relay_times(conn: asyncpg.Connection | asyncpg.Pool, event_ids: list[UUID]
                      ) -> dict[UUID, tuple[datetime, datetime | None]]:
    """When each event was received, and when the broker acknowledged it (None: not yet):
    the first hops of `giapranh bench`'s latency budget."""
    rows = await conn.fetch(
        """SELECT e.event_id, e.recorded_at, o.dispatched_at
             FROM events e JOIN outbox o USING (event_id)
            WHERE e.event_id = ANY($1::uuid[])""", event_ids)
    return {row["event_id"]: (row["recorded_at"], row["dispatched_at"]) for row in rows}

