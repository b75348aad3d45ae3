"""API keys: issued to a person of a unit with a role, stored as HMAC-SHA256 hashes only,
resolved to a principal.

The unit and person of a request always come from its key, never from a request body. The
HTTP dependency that reads the key from the headers lives in `shared.http`; this module is
the credential store the services and the admin CLI share.

Roles, each allowed what the one before it is: `reporter` (reports and watchlist entries,
reads its unit's alerts), `desk` (also acknowledges, confirms, rejects and closes alerts),
`unit_admin` (also its unit's people, keys, webhook and audit log), `province_admin` (also
the directory, and the keys and audit log of every unit under its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import asyncpg

API_KEY_PREFIX = "gpk_"


KEYS_CHANNEL = "giapranh_keys"
"""NOTIFY channel: the id of each key revoked (a trigger sends it)."""

KEY_CHANGES_CHANNEL = "giapranh_key_changes"
"""NOTIFY channel: any change of a key (its id) or of a unit (`*`): cached principals go."""

log = logging.getLogger(__name__)


Role = Literal["reporter", "desk", "unit_admin", "province_admin"]
ROLES: tuple[str, ...] = get_args(Role)
"""Least to most allowed."""

LAST_USED_EVERY = 60.0
"""Seconds between two writes of one key's last-used time (per process)."""


def role_rank(role: str) -> int:
    return ROLES.index(role)


@dataclass(frozen=True)
class Principal:
    """Who sent a request: a person of a unit, through one key."""

    unit_code: str
    role: str
    key_id: int
    expires_at: datetime | None = None
    person_id: int | None = None
    person_name: str | None = None

    def may(self, role: str) -> bool:
        """Whether this key's role is `role` or above."""
        return role_rank(self.role) >= role_rank(role)

    @property
    def is_admin(self) -> bool:
        """A province admin: may change the directory."""
        return self.role == "province_admin"


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as `giapranh keys list` shows it: never the key itself."""

    id: int
    unit_code: str
    key_prefix: str
    role: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    person_id: int
    person_name: str
    last_used_at: datetime | None
    replaced_by: int | None


def hash_api_key(key: str, pepper: str) -> bytes:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).digest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


DUTY_DESK = "duty desk"
"""The person a key belongs to when none is named: the unit's duty desk as a whole."""


async def person_id(conn: asyncpg.Connection | asyncpg.Pool, unit_code: str, name: str,
                    kind: str = "officer") -> int:
    """The id of the person `name` of `unit_code`, recorded now if new."""
    found = await conn.fetchval(
        """INSERT INTO people (unit_code, name, kind) VALUES ($1, $2, $3)
           ON CONFLICT (unit_code, name) DO NOTHING RETURNING id""", unit_code, name, kind)
    if found is None:
        found = await conn.fetchval(
            "SELECT id FROM people WHERE unit_code = $1 AND name = $2", unit_code, name)
    return int(found)


async def issue_api_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    unit_code: str,
    pepper: str,
    *,
    role: str = "unit_admin",
    person: str | None = None,
    label: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Create a key for a person of a unit (default: its duty desk) and return it; only its
    hash is stored."""
    return (await issue_api_key_row(conn, unit_code, pepper, role=role, person=person,
                                    label=label, expires_at=expires_at))[1]


async def issue_api_key_row(
    conn: asyncpg.Connection | asyncpg.Pool, unit_code: str, pepper: str, *,
    role: str, person: str | None = None, label: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[int, str]:
    """`issue_api_key`, also returning the new key's id."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    who = await person_id(conn, unit_code, person or DUTY_DESK,
                          "officer" if person else "duty_desk")
    key = new_api_key()
    key_id = await conn.fetchval(
        """INSERT INTO api_keys (unit_code, key_prefix, key_hash, role, label, expires_at,
                                 person_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        unit_code, key[:12], hash_api_key(key, pepper), role, label, expires_at, who,
    )
    return int(key_id), key


async def rotate_api_key(conn: asyncpg.Connection, key_id: int, pepper: str,
                         grace: timedelta) -> tuple[int, str, datetime] | None:
    """Replace a working key by a new one for the same person, role and unit; the old one
    keeps working for `grace` (or until it expired anyway). Returns (new id, new key, when
    the old one stops) or None if there is no working key `key_id`. Run in a transaction."""
    old = await conn.fetchrow(
        f"""SELECT k.id, k.unit_code, k.role, k.label, k.expires_at, p.name, p.kind
              FROM api_keys k JOIN people p ON p.id = k.person_id
              JOIN units u ON u.code = k.unit_code
             WHERE k.id = $1 AND {VALID_KEY} FOR UPDATE OF k""", key_id)
    if old is None:
        return None
    new_id, key = await issue_api_key_row(
        conn, old["unit_code"], pepper, role=old["role"],
        person=None if old["kind"] == "duty_desk" else old["name"], label=old["label"],
        expires_at=old["expires_at"])
    ends = await conn.fetchval(
        """UPDATE api_keys SET replaced_by = $2,
                  expires_at = LEAST(coalesce(expires_at, 'infinity'), now() + $3::interval)
            WHERE id = $1 RETURNING expires_at""", key_id, new_id, grace)
    return new_id, key, ends


async def list_api_keys(conn: asyncpg.Connection | asyncpg.Pool,
                        unit_code: str | None = None, *,
                        units: list[str] | None = None) -> list[ApiKeyInfo]:
    """Keys of one unit, of some units, or all (never the keys themselves)."""
    rows = await conn.fetch(
        """SELECT k.id, k.unit_code, k.key_prefix, k.role, k.label, k.created_at,
                  k.revoked_at, k.expires_at, k.person_id, p.name AS person_name,
                  k.last_used_at, k.replaced_by
             FROM api_keys k JOIN people p ON p.id = k.person_id
            WHERE ($1::text IS NULL OR k.unit_code = $1)
              AND ($2::text[] IS NULL OR k.unit_code = ANY($2::text[]))
            ORDER BY k.id""", unit_code, units)
    return [ApiKeyInfo(**dict(row)) for row in rows]


async def key_info(conn: asyncpg.Connection | asyncpg.Pool, key_id: int) -> ApiKeyInfo | None:
    rows = await conn.fetch(
        """SELECT k.id, k.unit_code, k.key_prefix, k.role, k.label, k.created_at,
                  k.revoked_at, k.expires_at, k.person_id, p.name AS person_name,
                  k.last_used_at, k.replaced_by
             FROM api_keys k JOIN people p ON p.id = k.person_id WHERE k.id = $1""", key_id)
    return ApiKeyInfo(**dict(rows[0])) if rows else None


async def revoke_api_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: int) -> bool:
    """Revoke a key at once (its open streams close); False if there was no active key with
    that id."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return status != "UPDATE 0"


async def units_under(conn: asyncpg.Connection | asyncpg.Pool, unit_code: str) -> list[str]:
    """`unit_code` and every unit below it in the directory."""
    rows = await conn.fetch(
        """WITH RECURSIVE below (code) AS (
               SELECT $1::text
               UNION SELECT u.code FROM units u JOIN below b ON u.parent_code = b.code)
           SELECT code FROM below ORDER BY code""", unit_code)
    return [row["code"] for row in rows]


class KeyStore:
    """Resolves API keys to principals (a key of a merged or ended unit resolves to none).

    With `cache_seconds`, a resolved key is kept that long in memory, so a request costs
    no database round trip for it; `watch` keeps the cache honest: it LISTENs for every
    change of a key or a unit (revocation, expiry, rotation, merge: triggers NOTIFY
    `giapranh_key_changes`) and drops what changed at once. While it is not listening (not
    started, connection lost) nothing is cached: every request asks the database.
    """

    MAX_CACHED = 50_000

    def __init__(self, pool: asyncpg.Pool, pepper: str, *, cache_seconds: float = 0.0):
        self._pool = pool
        self._pepper = pepper
        self._used: dict[int, float] = {}
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, Principal]] = {}
        self._generation = 0
        """Bumped by every change notification: a look-up that started before one is not
        cached (it may have read the key just before the change)."""
        self.listening = False

    async def principal(self, key: str) -> Principal | None:
        digest = hash_api_key(key, self._pepper)
        if self.listening:
            cached = self._cache.get(digest)
            if cached is not None:
                until, principal = cached
                if time.monotonic() < until and (
                        principal.expires_at is None
                        or principal.expires_at > datetime.now(UTC)):
                    await self._mark_used(principal.key_id)
                    return principal
                del self._cache[digest]
        generation = self._generation
        row = await self._pool.fetchrow(
            f"""SELECT k.id, k.unit_code, k.role, k.expires_at, k.person_id, p.name
                  FROM api_keys k JOIN units u ON u.code = k.unit_code
                  JOIN people p ON p.id = k.person_id
                 WHERE k.key_hash = $1 AND {VALID_KEY}""",
            digest,
        )
        if row is None:
            return None  # (never cached: a key issued a moment later works at once)
        await self._mark_used(row["id"])
        principal = Principal(unit_code=row["unit_code"], role=row["role"], key_id=row["id"],
                              expires_at=row["expires_at"], person_id=row["person_id"],
                              person_name=row["name"])
        if self.listening and self._cache_seconds and generation == self._generation:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self._cache_seconds, principal)
        return principal

    def forget(self, key_id: int | None = None) -> None:
        """Drop the cached principal of `key_id` (None: all)."""
        self._generation += 1
        if key_id is None:
            self._cache.clear()
            return
        for digest in [d for d, (_, p) in self._cache.items() if p.key_id == key_id]:
            self._cache.pop(digest, None)

    def _on_change(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            self.forget(None if payload == "*" else int(payload))
        except ValueError:
            self.forget()

    async def watch(self, database_url: str, *, check_every: float = 5.0) -> None:
        """Listen for key and unit changes for as long as it runs; the cache works only
        while this listens (a lost connection empties it until listening again)."""
        if not self._cache_seconds:
            return
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(database_url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _: lost.set())
                await conn.add_listener(KEY_CHANGES_CHANNEL, self._on_change)
                self.forget()
                self.listening = True
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), check_every)
                    if not lost.is_set():  # a link that died silently delivers nothing
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), check_every)
            except (OSError, TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                log.warning("key cache off until its database listener is back: %r", exc)
            finally:
                self.listening = False
                self.forget()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(1.0)

    async def _mark_used(self, key_id: int) -> None:
        """Record the key's last use, at most once a minute per key and process."""
        now = time.monotonic()
        if now - self._used.get(key_id, -LAST_USED_EVERY) < LAST_USED_EVERY:
            return
        self._used[key_id] = now
        if len(self._used) > 100_000:
            self._used.clear()
        await self._pool.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)

    async def still_valid(self, key_ids: list[int]) -> set[int]:
        """Which of these keys still work (not revoked, not expired, unit active)."""
        rows = await self._pool.fetch(
            f"""SELECT k.id FROM api_keys k JOIN units u ON u.code = k.unit_code
                 WHERE k.id = ANY($1::bigint[]) AND {VALID_KEY}""", key_ids)
        return {row["id"] for row in rows}


VALID_KEY = """k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
               AND (u.active_to IS NULL OR u.active_to > now())"""


def internal_token(pepper: str) -> str:
    """The token services present to each other's internal endpoints (the matcher's
    `/internal/check`): derived from the deployment's key pepper, which every service
    has, so no other secret needs distributing; never an API key."""
    return hmac.new(pepper.encode(), b"giapranh internal v1", hashlib.sha256).hexdigest()
