"""The audit log: who did what, append-only, each record chained to the one before.

Every change a person makes through the APIs or the admin CLI is recorded here, in the
transaction of the change itself: watchlist entries, alert steps (acknowledge, confirm,
reject, close), webhooks, keys, people and the directory. Reports (sightings, incidents)
record their person on the event itself (ingest's `events.person_id`), which is the system
of record for them; chaining every report would put one lock in front of the hot path.

A record's hash is SHA-256 over the previous record's hash and the record's canonical text
(`canonical`), computed here and not in the database, so that verification does not trust
anything stored in the database but the rows. Writers take one transaction-scoped lock and
the last id + 1, so ids are consecutive: a deleted record shows as a gap. The table refuses
UPDATE, DELETE and TRUNCATE (a trigger); whoever gets past that (a superuser turning the
trigger off, a restored backup) breaks the chain, and `giapranh audit verify` names the
first record that no longer matches. Keep the head hash it prints somewhere else: a chain
cut at its end verifies, and only an outside copy of the head tells.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.auth import Principal

AUDIT_LOCK_ID = 0x6A1A_A0D1
GENESIS = bytes(32)
"""The `prev_hash` of the first record."""


@dataclass(frozen=True)
class Actor:
    """Who acted: a person through a key, or an operator at the CLI (`person_name` says
    which OS user)."""

    unit_code: str | None
    person_id: int | None
    person_name: str | None
    key_id: int | None

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        return cls(principal.unit_code, principal.person_id, principal.person_name,
                   principal.key_id)

    @classmethod
    def operator(cls) -> Actor:
        import getpass

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(None, None, f"cli:{user}", None)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    unit_code: str | None
    person_id: int | None
    person_name: str | None
    key_id: int | None
    action: str
    subject: str | None
    detail: str
    prev_hash: bytes
    hash: bytes


def canonical(id: int, at: datetime, unit_code: str | None, person_id: int | None,
              person_name: str | None, key_id: int | None, action: str,
              subject: str | None, detail: str) -> bytes:
    """The exact bytes a record's hash covers."""
    return json.dumps(
        [id, at.astimezone(UTC).isoformat(timespec="microseconds"), unit_code, person_id,
         person_name, key_id, action, subject, detail],
        ensure_ascii=False, separators=(",", ":")).encode()


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    return hashlib.sha256(prev_hash + body).digest()


def detail_text(detail: dict[str, Any] | None) -> str:
    return json.dumps(detail or {}, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      default=str)


async def record(conn: asyncpg.Connection, actor: Actor, action: str, *,
                 subject: str | None = None, unit_code: str | None = None,
                 detail: dict[str, Any] | None = None) -> int:
    """Append a record in the caller's transaction (call it last in the transaction: the
    chain's lock is held until commit). `unit_code` is the unit the record belongs to
    (default: the actor's). Returns the record's id."""
    if not conn.is_in_transaction():
        raise RuntimeError("audit records are written in the transaction of their change")
    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK_ID)
    last = await conn.fetchrow("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
    record_id = 1 if last is None else last["id"] + 1
    prev = GENESIS if last is None else bytes(last["hash"])
    at = datetime.now(UTC)
    owner = unit_code if unit_code is not None else actor.unit_code
    text = detail_text(detail)
    digest = chain_hash(prev, canonical(record_id, at, owner, actor.person_id,
                                        actor.person_name, actor.key_id, action, subject, text))
    await conn.execute(
        """INSERT INTO audit_log (id, at, unit_code, person_id, person_name, key_id, action,
                                  subject, detail, prev_hash, hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        record_id, at, owner, actor.person_id, actor.person_name, actor.key_id, action,
        subject, text, prev, digest)
    return record_id


@dataclass(frozen=True)
class Verification:
    checked: int
    head: bytes | None
    broken_at: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def _rows(conn: asyncpg.Connection, batch: int) -> AsyncIterator[asyncpg.Record]:
    after = 0
    while True:
        rows = await conn.fetch(
            "SELECT * FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2", after, batch)
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1]["id"]


async def verify(conn: asyncpg.Connection, *, batch: int = 5000,
                 progress: Any = None) -> Verification:
    """Recompute the chain from the first record; stop at the first that does not match.
    `progress(done)` is called after each batch."""
    prev = GENESIS
    expected_id = 1
    checked = 0
    async for row in _rows(conn, batch):
        if row["id"] != expected_id:
            return Verification(checked, prev, expected_id,
                                f"record {expected_id} is missing (the next is {row['id']})")
        if bytes(row["prev_hash"]) != prev:
            return Verification(checked, prev, row["id"],
                                "its previous hash is not the hash of the record before it")
        digest = chain_hash(prev, canonical(
            row["id"], row["at"], row["unit_code"], row["person_id"], row["person_name"],
            row["key_id"], row["action"], row["subject"], row["detail"]))
        if digest != bytes(row["hash"]):
            return Verification(checked, prev, row["id"],
                                "its content does not match its hash (edited)")
        prev = digest
        expected_id += 1
        checked += 1
        if progress is not None and checked % batch == 0:
            progress(checked)
    return Verification(checked, prev if checked else None)


async def records_of(conn: asyncpg.Connection | asyncpg.Pool, units: list[str], *,
                     before: int | None = None, limit: int = 100) -> list[AuditRecord]:
    """The records of these units, newest first."""
    rows = await conn.fetch(
        """SELECT * FROM audit_log
            WHERE unit_code = ANY($1::text[]) AND ($2::bigint IS NULL OR id < $2)
            ORDER BY id DESC LIMIT $3""", units, before, limit)
    return [AuditRecord(**{k: (bytes(v) if isinstance(v, bytes | memoryview) else v)
                           for k, v in dict(row).items()}) for row in rows]
