"""API keys: issued to a unit, stored as HMAC-SHA256 hashes only, resolved to a principal.

The unit identity of a request always comes from its key, never from a request body. The
HTTP dependency that reads the key from the headers lives in `shared.http`; this module is
the credential store the services and the admin CLI share.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

API_KEY_PREFIX = "gpk_"


KEYS_CHANNEL = "giapranh_keys"
"""NOTIFY channel: the id of each key revoked (a trigger sends it)."""


@dataclass(frozen=True)
class Principal:
    unit_code: str
    role: str
    key_id: int
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


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


def hash_api_key(key: str, pepper: str) -> bytes:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).digest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


async def issue_api_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    unit_code: str,
    pepper: str,
    *,
    role: str = "unit",
    label: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Create a key for a unit and return it; only its hash is stored."""
    key = new_api_key()
    await conn.execute(
        """INSERT INTO api_keys (unit_code, key_prefix, key_hash, role, label, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        unit_code, key[:12], hash_api_key(key, pepper), role, label, expires_at,
    )
    return key


async def list_api_keys(conn: asyncpg.Connection | asyncpg.Pool,
                        unit_code: str | None = None) -> list[ApiKeyInfo]:
    rows = await conn.fetch(
        """SELECT id, unit_code, key_prefix, role, label, created_at, revoked_at, expires_at
             FROM api_keys
            WHERE $1::text IS NULL OR unit_code = $1 ORDER BY id""", unit_code)
    return [ApiKeyInfo(**dict(row)) for row in rows]


async def revoke_api_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: int) -> bool:
    """Revoke a key at once; False if there was no active key with that id."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return status != "UPDATE 0"


class KeyStore:
    """Resolves API keys to principals (a key of a merged or ended unit resolves to none)."""

    def __init__(self, pool: asyncpg.Pool, pepper: str):
        self._pool = pool
        self._pepper = pepper

    async def principal(self, key: str) -> Principal | None:
        row = await self._pool.fetchrow(
            f"""SELECT k.id, k.unit_code, k.role, k.expires_at
                  FROM api_keys k JOIN units u ON u.code = k.unit_code
                 WHERE k.key_hash = $1 AND {VALID_KEY}""",
            hash_api_key(key, self._pepper),
        )
        if row is None:
            return None
        return Principal(unit_code=row["unit_code"], role=row["role"], key_id=row["id"],
                         expires_at=row["expires_at"])

    async def still_valid(self, key_ids: list[int]) -> set[int]:
        """Which of these keys still work (not revoked, not expired, unit active)."""
        rows = await self._pool.fetch(
            f"""SELECT k.id FROM api_keys k JOIN units u ON u.code = k.unit_code
                 WHERE k.id = ANY($1::bigint[]) AND {VALID_KEY}""", key_ids)
        return {row["id"] for row in rows}


VALID_KEY = """k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
               AND (u.active_to IS NULL OR u.active_to > now())"""
