"""The matching engine: pure, in memory, no Kafka or database inside.

It holds every unit's active watchlist entries in exact-key indexes and answers "which
entries does this reported subject match, how strongly and why". Changes are incremental:
`upsert` and `cancel` touch only the entry's own index keys, and both are idempotent under
replays thanks to entry versions (an older version never overwrites a newer one, and a
cancelled entry is remembered so a replayed upsert cannot revive it).

The same engine serves the stream matcher, the evaluation harness and the benchmarks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from shared.events import MatchReason, Subject, WatchlistEntry, national_id_digits

PRODUCTION_THRESHOLD = 0.8


@dataclass(frozen=True)
class Match:
    entry: WatchlistEntry
    score: float
    reasons: tuple[MatchReason, ...]


def _id_keys(entry: WatchlistEntry) -> Iterator[str]:
    if entry.national_id:
        yield "id:" + national_id_digits(entry.national_id)


class MatchingEngine:
    def __init__(self, threshold: float = PRODUCTION_THRESHOLD):
        self.threshold = threshold
        self._entries: dict[str, WatchlistEntry] = {}
        self._tombstones: dict[str, int] = {}
        self._index: dict[str, set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, entry_id: str) -> WatchlistEntry | None:
        return self._entries.get(entry_id)

    def upsert(self, entry: WatchlistEntry) -> bool:
        """Add or replace an entry; False if a same-or-newer version is already known."""
        current = self._entries.get(entry.entry_id)
        newest_known = max(
            current.version if current else 0, self._tombstones.get(entry.entry_id, 0)
        )
        if entry.version <= newest_known:
            return False
        if current is not None:
            self._unindex(current)
        self._tombstones.pop(entry.entry_id, None)
        self._entries[entry.entry_id] = entry
        for key in _id_keys(entry):
            self._index[key].add(entry.entry_id)
        return True

    def cancel(self, entry_id: str, version: int) -> bool:
        """Stop matching an entry at once; False if a newer version is already known."""
        current = self._entries.get(entry_id)
        if current is not None and current.version >= version:
            return False
        if version <= self._tombstones.get(entry_id, 0):
            return False
        if current is not None:
            self._unindex(current)
            del self._entries[entry_id]
        self._tombstones[entry_id] = version
        return True

    def load(self, entries: Iterable[WatchlistEntry]) -> None:
        for entry in entries:
            self.upsert(entry)

    def size_by_category(self) -> dict[str, int]:
        sizes: dict[str, int] = defaultdict(int)
        for entry in self._entries.values():
            sizes[entry.category.value] += 1
        return dict(sizes)

    def match(self, subject: Subject, *, at: datetime) -> list[Match]:
        """Entries matching `subject` at or above the threshold, best first.

        Entries whose `valid_until` is before `at` no longer match.
        """
        matches: list[Match] = []
        if subject.national_id:
            digits = national_id_digits(subject.national_id)
            for entry_id in self._index.get("id:" + digits, ()):
                entry = self._entries[entry_id]
                if entry.valid_until is not None and entry.valid_until < at:
                    continue
                reason = MatchReason(
                    feature="national_id", detail=f"national id {digits} exact"
                )
                matches.append(Match(entry, 1.0, (reason,)))
        matches = [m for m in matches if m.score >= self.threshold]
        matches.sort(key=lambda m: (-m.score, m.entry.entry_id))
        return matches

    def _unindex(self, entry: WatchlistEntry) -> None:
        for key in _id_keys(entry):
            bucket = self._index.get(key)
            if bucket is not None:
                bucket.discard(entry.entry_id)
                if not bucket:
                    del self._index[key]
