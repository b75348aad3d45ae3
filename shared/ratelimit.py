"""Rate limits per API key: a token bucket per key, in the memory of each process.

Each instance of a service limits on its own, so behind a load balancer that spreads a
key's requests over N instances the effective limit is up to N times the setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.errors import TooManyRequests


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimit:
    """At most `per_minute` actions per key, in bursts of up to `burst` (default: a
    minute's worth)."""

    per_minute: float
    what: str
    burst: float | None = None
    _buckets: dict[object, _Bucket] = field(default_factory=dict)

    def take(self, key: object, now: float | None = None) -> None:
        """Spend one action of `key`, or raise `TooManyRequests` saying when to retry."""
        now = time.monotonic() if now is None else now
        rate, capacity = self.per_minute / 60.0, self.burst or self.per_minute
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(capacity, now)
            if len(self._buckets) > 100_000:  # forget idle keys rather than grow forever
                self._forget_full(now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1:
            raise TooManyRequests(
                f"more than {self.per_minute:g} {self.what} per minute with this key",
                retry_after=(1 - bucket.tokens) / rate)
        bucket.tokens -= 1

    def _forget_full(self, now: float) -> None:
        rate, capacity = self.per_minute / 60.0, self.burst or self.per_minute
        for key in [k for k, b in self._buckets.items()
                    if b.tokens + (now - b.updated) * rate >= capacity]:
            del self._buckets[key]
