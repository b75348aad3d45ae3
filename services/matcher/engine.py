"""The matching engine: pure, in memory, no Kafka or database inside.

It holds every unit's active watchlist entries and answers "which entries does this
reported subject match, how strongly and why". The same engine serves the stream matcher,
the evaluation harness (`python -m services.matcher.evaluate`) and the benchmarks.

Retrieval: exact-key hash indexes, never a scan. An entry is filed under its national id
digits, each plate (compact, and in OCR-class form so `30K2A2570` finds `30-K2 425.70`),
its folded given name with birth year, the one-letter deletions of that given name with
birth year (symmetric delete: finds one typo), surname + given + year, the full folded
name, and each alias with birth year. A query probes the same keys for its own values,
its birth year +-1, both name orders, and the one-letter deletions of its given name.
Buckets larger than `MAX_BUCKET` are skipped: a more specific key must find those.

Scoring: points per feature, like a Fellegi-Sunter model; each feature that speaks adds
a human-readable reason. Strong identifiers decide (id or plate exact); a name needs the
birth year to agree; a contradicting id or birth year, or a name whose marks differ (Hùng
vs Hưng) pulls the score down. `score = 1 - 2 ** (-points / 4)`; an alert needs
`PRODUCTION_THRESHOLD`.

Changes are incremental and idempotent under replays: `upsert` and `cancel` touch only the
entry's own keys, an older version never overwrites a newer one, and a cancelled entry is
remembered so a replayed upsert cannot revive it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime

from services.matcher.normalize import (
    Syllable,
    cccd_birth_year,
    compact_plate,
    deletions,
    id_digits,
    name_tokens,
    ocr_class,
    one_edit_apart,
    same_syllable,
)
from shared.events import MatchReason, Subject, WatchlistEntry

PRODUCTION_THRESHOLD = 0.75  # = 8 points
MAX_BUCKET = 300
GROUP_AT = 24  # a surname+given bucket this large is split by the names' syllables
MIN_DELETION_LENGTH = 3
MAX_NAME_EDITS = 2  # syllables one letter off that a name may still align with

# Points of evidence (log-odds flavoured; 8 make an alert).
ID_EXACT, ID_ONE_DIGIT, ID_DIFFERENT = 12.0, 4.0, -8.0
PLATE_EXACT, PLATE_OCR_ONE, PLATE_OCR_MORE = 12.0, 9.0, 5.0
NAME_FULL, NAME_REORDERED, NAME_DROPPED_MIDDLE, NAME_GIVEN_ONLY = 7.0, 7.0, 6.0, 1.0
NAME_TYPO, NAME_MARKS_DIFFER, NAME_UNRELATED = -1.0, -4.0, -3.0
NAME_OTHER_SYLLABLE = -3.0  # surname/given one letter off, but the query's is a name of its own
ALIAS = 4.0
BIRTH_DATE_EXACT, BIRTH_YEAR_EXACT, BIRTH_YEAR_ONE_OFF, BIRTH_YEAR_DIFFERENT = 4.0, 3.0, 2.0, -6.0
BIRTH_DATE_DIFFERENT = -2.0  # both full dates known, a year or less apart, not equal


BEST_NAME = max(NAME_FULL, NAME_REORDERED, ALIAS)
BEST_BIRTH = max(BIRTH_DATE_EXACT, BIRTH_YEAR_EXACT)


def _digits_int(digits: str | None) -> int:
    """The id's ASCII bytes as one integer: ids one digit apart differ in one byte."""
    return int.from_bytes(digits.encode(), "big") if digits else 0


def _one_byte_apart(a: int, b: int) -> bool:
    """Two same-length ids (as `_digits_int`) differ in exactly one digit: every differing
    bit lies within one byte."""
    x = a ^ b
    if not x:
        return False
    low = (x & -x).bit_length() - 1
    return (x.bit_length() - 1) >> 3 == low >> 3


def points_for(score: float) -> float:
    """The points a score needs (inverse of `score_of`)."""
    return -4 * math.log2(1 - score) if score < 1 else math.inf


def score_of(points: float) -> float:
    return 0.0 if points <= 0 else round(1 - 2 ** (-points / 4), 4)


@dataclass(frozen=True)
class Match:
    entry: WatchlistEntry
    score: float
    reasons: tuple[MatchReason, ...]


@dataclass(slots=True)
class _Name:
    text: str
    tokens: tuple[Syllable, ...]
    folded: str
    folds: frozenset[str]


@dataclass(slots=True)
class _Record:
    entry_id: str
    version: int
    category: str
    name: _Name | None
    aliases: tuple[_Name, ...]
    birth_year: int | None
    birth_date: date | None
    id_digits: str | None
    id_int: int
    plates: tuple[str, ...]
    valid_until: datetime | None
    raw: bytes
    name_key: object
    """What the name contribution depends on (name and aliases), shared by namesakes."""


def _name(text: str | None) -> _Name | None:
    if not text:
        return None
    tokens = name_tokens(text)
    shown = " ".join(unicodedata.normalize("NFC", text).split())
    if not tokens:
        return None
    return _Name(shown, tokens, " ".join(t.fold for t in tokens), frozenset(t.fold for t in tokens))


def _prepare(entry: WatchlistEntry) -> _Record:
    digits = id_digits(entry.national_id) if entry.national_id else None
    year = entry.birth_year or (entry.birth_date.year if entry.birth_date else None)
    name = _name(entry.full_name)
    aliases = tuple(n for n in (_name(a) for a in entry.aliases) if n is not None)
    return _Record(
        entry_id=entry.entry_id,
        version=entry.version,
        category=entry.category.value,
        name=name,
        aliases=aliases,
        birth_year=year or (cccd_birth_year(digits) if digits else None),
        birth_date=entry.birth_date,
        id_digits=digits or None,
        id_int=_digits_int(digits),
        plates=tuple(p for p in (compact_plate(p) for p in entry.plates) if p),
        valid_until=entry.valid_until,
        raw=entry.model_dump_json().encode(),
        name_key=(name.text if name else None) if not aliases
        else (name.text if name else None, tuple(a.text for a in aliases)),
    )


def _syllables(r: _Record) -> Iterator[str]:
    for name in (r.name, *r.aliases):
        if name is not None:
            yield from (t.fold for t in name.tokens)


def _variants(word: str) -> set[str]:
    """The word and its one-letter deletions (symmetric delete: one edit apart meet)."""
    return {word} | deletions(word) if len(word) >= MIN_DELETION_LENGTH else {word}


def _entry_keys(r: _Record) -> Iterator[str]:
    year = "" if r.birth_year is None else str(r.birth_year)
    if r.id_digits:
        yield "i" + r.id_digits
    for plate in r.plates:
        yield "p" + plate
        yield "o" + ocr_class(plate)
    if r.name is not None:
        folds = [t.fold for t in r.name.tokens]
        surname, given = folds[0], folds[-1]
        if len(folds) > 1:
            # Surname and given name together, one of them possibly one letter off (the
            # exact pair is filed once, under `t`).
            for variant in _variants(given):
                yield f"t{surname}|{variant}|{year}"
            for variant in _variants(surname):
                if variant != surname:
                    yield f"h{variant}|{given}|{year}"
        yield "f" + r.name.folded
    for alias in r.aliases:
        yield f"a{alias.folded}|{year}"


class _Groups(dict[frozenset[str], list[int]]):
    """A large surname + given name (+ year) bucket, its slots grouped by the syllables of
    the listed name. A query takes only the groups in which each of its middle syllables
    could align with a listed syllable (equal or one letter off), so the many namesakes
    with another middle name are never scored. `size` counts all slots (for MAX_BUCKET)."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def add(self, signature: frozenset[str], slot: int) -> None:
        self.setdefault(signature, []).append(slot)
        self.size += 1

    def discard(self, signature: frozenset[str], slot: int) -> None:
        group = self[signature]
        group.remove(slot)
        if not group:
            del self[signature]
        self.size -= 1


def _grouping_key(r: _Record) -> str | None:
    """The record's exact surname + given name (+ year) key: the namesake bucket that is
    split by syllables once it is large (its one-letter variants, probed only for typos,
    are left as plain lists to save memory)."""
    if r.name is None or len(r.name.tokens) < 2:
        return None
    year = "" if r.birth_year is None else str(r.birth_year)
    return f"t{r.name.tokens[0].fold}|{r.name.tokens[-1].fold}|{year}"


def _signature(r: _Record) -> frozenset[str]:
    assert r.name is not None
    return frozenset(t.fold for t in r.name.tokens)


def _neighbourhood(fold: str) -> frozenset[str]:
    """The fold and its one-letter deletions: two folds are within one edit (or one
    adjacent transposition) only if their neighbourhoods meet."""
    return frozenset({fold} | deletions(fold))


class _Query:
    __slots__ = ("birth_date", "id_digits", "id_int", "middles", "name", "plate", "subject",
                 "year")

    def __init__(self, subject: Subject):
        self.subject = subject
        self.name = _name(subject.name)
        self.id_digits = id_digits(subject.national_id) if subject.national_id else None
        self.id_int = _digits_int(self.id_digits)
        self.birth_date = subject.birth_date
        year = subject.birth_year or (subject.birth_date.year if subject.birth_date else None)
        if year is None and self.id_digits:
            year = cccd_birth_year(self.id_digits)
        self.year = year
        self.plate = compact_plate(subject.plate) if subject.plate else None
        self.middles: tuple[str, ...] = ()
        if self.name is not None and len(self.name.tokens) > 2:
            self.middles = tuple(t.fold for t in self.name.tokens[1:-1])

    def keys(self, surnames: Counter[str], vocabulary: Counter[str]) -> Iterator[str]:
        if self.id_digits:
            yield "i" + self.id_digits
        if self.plate:
            yield "p" + self.plate
            yield "o" + ocr_class(self.plate)
        if self.name is None:
            return
        years = [""] if self.year is None else [str(self.year - 1), str(self.year),
                                                str(self.year + 1), ""]
        folds = [t.fold for t in self.name.tokens]
        if self.year is None:
            yield "f" + self.name.folded  # no year to narrow by: every namesake is a candidate
        for year in years:
            yield f"a{self.name.folded}|{year}"
        if len(folds) < 2:
            return
        # A syllable one letter off a real name syllable is another name, which only an
        # exact birth date can lift to an alert: without one, probe such variants not at all.
        typo_reach = self.birth_date is not None
        for surname, given in _orders(folds[0], folds[-1], surnames):
            given_variants = (_variants(given) if typo_reach or not vocabulary[given]
                              else {given})
            surname_variants = (_variants(surname) if typo_reach or not vocabulary[surname]
                                else {surname})
            for year in years:
                for variant in given_variants:
                    yield f"t{surname}|{variant}|{year}"
                for variant in surname_variants:
                    yield f"h{variant}|{given}|{year}"
                    if variant != surname:
                        # A deletion of the typed surname may be a listed surname itself,
                        # whose exact pair is filed under `t` only.
                        yield f"t{variant}|{given}|{year}"


def _orders(first: str, last: str, surnames: Counter[str]) -> list[tuple[str, str]]:
    """(surname, given) readings of a name: as typed, given name first, or both when the
    watchlist's surnames cannot tell (e.g. a typo in the surname)."""
    first_is_surname, last_is_surname = surnames[first] > 0, surnames[last] > 0
    if first_is_surname and not last_is_surname:
        return [(first, last)]
    if last_is_surname and not first_is_surname:
        return [(last, first)]
    return [(first, last), (last, first)]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large index is built: it would walk the
    growing index again and again (building holds no reference cycles; refcounting still
    frees what is dropped). Measured: 1M entries in ~45 s instead of 58-72 s."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class MatchingEngine:
    def __init__(self, threshold: float = PRODUCTION_THRESHOLD, max_bucket: int = MAX_BUCKET):
        self.threshold = threshold
        self.max_bucket = max_bucket
        self._records: list[_Record | None] = []
        self._free: list[int] = []
        self._slot_of: dict[str, int] = {}
        self._tombstones: dict[str, int] = {}
        self._index: dict[str, int | list[int] | _Groups] = {}
        self._categories: Counter[str] = Counter()
        self._vocabulary: Counter[str] = Counter()
        """Folded name syllables of the listed names and aliases, with their counts."""
        self._surnames: Counter[str] = Counter()
        self._near: dict[str, set[str]] = {}
        """Symmetric-delete index of the listed name syllables: a one-letter deletion (or
        the syllable itself) -> the syllables that have it. Only grows: a stale syllable
        only widens the namesake filter, never narrows it."""
        self._near_known: set[str] = set()
        self.last_candidates = 0
        """How many entries the latest `match` call scored (for the candidates metric)."""

    def __len__(self) -> int:
        return len(self._slot_of)

    def get(self, entry_id: str) -> WatchlistEntry | None:
        slot = self._slot_of.get(entry_id)
        if slot is None:
            return None
        record = self._records[slot]
        assert record is not None
        return WatchlistEntry.model_validate_json(record.raw)

    def size_by_category(self) -> dict[str, int]:
        return {category: n for category, n in self._categories.items() if n}

    # ------------------------------------------------------------------ changes

    def upsert(self, entry: WatchlistEntry) -> bool:
        """Add or replace an entry; False if a same-or-newer version is already known."""
        slot = self._slot_of.get(entry.entry_id)
        current = self._records[slot] if slot is not None else None
        newest = max(current.version if current else 0, self._tombstones.get(entry.entry_id, 0))
        if entry.version <= newest:
            return False
        if current is not None:
            self._remove(entry.entry_id)
        self._tombstones.pop(entry.entry_id, None)
        record = _prepare(entry)
        slot = self._free.pop() if self._free else len(self._records)
        if slot == len(self._records):
            self._records.append(record)
        else:
            self._records[slot] = record
        self._slot_of[entry.entry_id] = slot
        self._categories[record.category] += 1
        self._vocabulary.update(_syllables(record))
        if record.name is not None:
            self._surnames[record.name.tokens[0].fold] += 1
            for token in record.name.tokens:
                if token.fold not in self._near_known:
                    self._near_known.add(token.fold)
                    for variant in _neighbourhood(token.fold):
                        self._near.setdefault(variant, set()).add(token.fold)
        index = self._index
        signature = None
        grouping = _grouping_key(record)
        for key in set(_entry_keys(record)):
            bucket = index.get(key)
            if bucket is None:
                index[key] = slot
            elif type(bucket) is int:
                index[key] = [bucket, slot]
            elif type(bucket) is list:
                bucket.append(slot)
                if len(bucket) >= GROUP_AT and key == grouping:
                    index[key] = self._grouped(bucket)
            else:
                if signature is None:
                    signature = _signature(record)
                bucket.add(signature, slot)  # type: ignore[union-attr]
        return True

    def _grouped(self, slots: list[int]) -> _Groups:
        groups = _Groups()
        for slot in slots:
            record = self._records[slot]
            assert record is not None
            groups.add(_signature(record), slot)
        return groups

    def cancel(self, entry_id: str, version: int) -> bool:
        """Stop matching an entry at once; False if a newer version is already known."""
        slot = self._slot_of.get(entry_id)
        current = self._records[slot] if slot is not None else None
        if current is not None and current.version >= version:
            return False
        if version <= self._tombstones.get(entry_id, 0):
            return False
        if current is not None:
            self._remove(entry_id)
        self._tombstones[entry_id] = version
        return True

    def load(self, entries: Iterable[WatchlistEntry]) -> None:
        """Upsert many entries (a snapshot), with the cyclic garbage collector paused."""
        with gc_paused():
            for entry in entries:
                self.upsert(entry)

    def _remove(self, entry_id: str) -> None:
        slot = self._slot_of.pop(entry_id)
        record = self._records[slot]
        assert record is not None
        for key in set(_entry_keys(record)):
            bucket = self._index.get(key)
            if type(bucket) is int:
                if bucket == slot:
                    del self._index[key]
            elif type(bucket) is list:
                bucket.remove(slot)
                if len(bucket) == 1:
                    self._index[key] = bucket[0]
            elif bucket is not None:
                bucket.discard(_signature(record), slot)
                if not bucket:
                    del self._index[key]
        self._records[slot] = None
        self._free.append(slot)
        self._categories[record.category] -= 1
        self._vocabulary.subtract(_syllables(record))
        if record.name is not None:
            self._surnames[record.name.tokens[0].fold] -= 1

    # ------------------------------------------------------------------ matching

    def candidates(self, subject: Subject) -> set[int]:
        """Slots retrieved by the query's keys (an inspection aid and a benchmark figure)."""
        return self._candidates(_Query(subject))

    def _candidates(self, query: _Query) -> set[int]:
        found: set[int] = set()
        index, cap = self._index, self.max_bucket
        nears: list[set[str]] | None = None
        for key in query.keys(self._surnames, self._vocabulary):
            bucket = index.get(key)
            if bucket is None:
                continue
            kind = type(bucket)
            if kind is int:
                found.add(bucket)  # type: ignore[arg-type]
            elif kind is list:
                if len(bucket) <= cap:  # type: ignore[arg-type]
                    found.update(bucket)  # type: ignore[arg-type]
            elif bucket.size <= cap:  # type: ignore[union-attr]
                if nears is None:
                    # For each middle syllable of the query, the listed syllables it could
                    # align with (equal, or one letter off): a group is kept only if its
                    # name has one of each.
                    nears = [self._near_syllables(fold) for fold in query.middles]
                for signature, slots in bucket.items():  # type: ignore[union-attr]
                    for near in nears:
                        if signature.isdisjoint(near):
                            break
                    else:
                        found.update(slots)
        return found

    def _near_syllables(self, fold: str) -> set[str]:
        near: set[str] = set()
        for variant in _neighbourhood(fold):
            listed = self._near.get(variant)
            if listed:
                near |= listed
        return near

    def match_entry(self, subject: Subject, entry_id: str, *, at: datetime) -> Match | None:
        """Score one listed entry against `subject` without retrieval (late matching)."""
        slot = self._slot_of.get(entry_id)
        if slot is None:
            return None
        return self._judge(_Query(subject), slot, at, _Caches(), points_for(self.threshold))

    def match(self, subject: Subject, *, at: datetime) -> list[Match]:
        """Entries matching `subject` at or above the threshold, best first.

        Entries whose `valid_until` is before `at` no longer match.
        """
        query = _Query(subject)
        caches = _Caches()
        needed = points_for(self.threshold)
        candidates = self._candidates(query)
        self.last_candidates = len(candidates)
        judge = self._judge
        matches = [match for slot in candidates
                   if (match := judge(query, slot, at, caches, needed)) is not None]
        matches.sort(key=lambda m: (-m.score, m.entry.entry_id))
        return matches


    def _judge(
        self, query: _Query, slot: int, at: datetime, caches: _Caches, needed: float
    ) -> Match | None:
        record = self._records[slot]
        if record is None or (record.valid_until is not None and record.valid_until < at):
            return None
        evaluated = _evaluate(query, record, self._vocabulary, needed, caches)
        if evaluated is None:
            return None
        points, reasons = evaluated
        score = score_of(points)
        if score < self.threshold:
            return None
        explained = tuple(MatchReason(feature=feature, detail=template.format(*args))
                          for feature, template, args in reasons)
        return Match(WatchlistEntry.model_validate_json(record.raw), score, explained)


# ------------------------------------------------------------------------- scoring


Reason = tuple[str, str, tuple[object, ...]]
"""(feature, detail template, arguments): formatted into a MatchReason only for alerts."""


Alignment = tuple[list[int | None], int, int, int] | None


class _Caches:
    """Per-query memo: alignments by listed name text, name contributions by name key."""

    __slots__ = ("aligned", "named")

    def __init__(self) -> None:
        self.aligned: dict[str, Alignment] = {}
        self.named: dict[object, _Named] = {}


_Named = tuple[float, str, str, tuple[object, ...]] | None


def _evaluate(
    q: _Query, r: _Record, vocabulary: Counter[str], needed: float, caches: _Caches,
) -> tuple[float, list[Reason]] | None:
    """Points and reasons of `r` for `q`, or None as soon as `needed` is out of reach.

    The cheap features come first and bound what is left: an entry whose id contradicts
    the query's is dropped before any name is looked at, unless a plate could still lift it.
    """
    points = 0.0
    reasons: list[Reason] = []
    if q.id_digits and r.id_digits:
        if q.id_int == r.id_int:
            points += ID_EXACT
            reasons.append(("national_id", "national id {} exact", (r.id_digits,)))
        elif len(q.id_digits) == len(r.id_digits):
            if _one_byte_apart(q.id_int, r.id_int):
                points += ID_ONE_DIGIT
                reasons.append(("national_id", "national id {} one digit off {}",
                                (q.id_digits, r.id_digits)))
            else:
                points += ID_DIFFERENT
                reasons.append(("national_id", "national id {} differs from {}",
                                (q.id_digits, r.id_digits)))
    plate_possible = PLATE_EXACT if q.plate and r.plates else 0.0
    name_possible = BEST_NAME if q.name is not None else 0.0
    if points + plate_possible + BEST_BIRTH + name_possible < needed:
        return None

    if plate_possible:
        points += _score_plate(q.plate, r.plates, reasons)  # type: ignore[arg-type]
    birth = _birth_evidence(q, r)
    if birth is not None:
        points += birth[0]
    if q.name is not None:
        if points + BEST_NAME < needed:
            return None  # no name could lift it to an alert: skip the alignment
        key = r.name_key
        named = caches.named.get(key, _MISSING)
        if named is _MISSING:
            named = caches.named[key] = _score_name(q.name, r, vocabulary, caches.aligned)
        if named is not None:
            points += named[0]
            reasons.append((named[1], named[2], named[3]))
    if birth is not None:
        reasons.append(("birth", birth[1], birth[2]))
    return points, reasons


_MISSING = object()


_PLATE_EXACT_TEXT = "plate {} exact"
_PLATE_OCR_TEXT = "plate {} ≈ {} (camera confusion {})"


def _score_plate(plate: str, plates: tuple[str, ...], reasons: list[Reason]) -> float:
    if plate in plates:
        reasons.append(("plate", _PLATE_EXACT_TEXT, (plate,)))
        return PLATE_EXACT
    cls = ocr_class(plate)
    for listed in plates:
        if len(listed) == len(plate) and ocr_class(listed) == cls:
            differing = [f"{a}/{b}" for a, b in zip(plate, listed, strict=True) if a != b]
            value = PLATE_OCR_ONE if len(differing) == 1 else PLATE_OCR_MORE
            reasons.append(("plate", _PLATE_OCR_TEXT, (plate, listed, ", ".join(differing))))
            return value
    return 0.0


def _align(query: _Name, listed: _Name, vocabulary: Counter[str]) -> Alignment:
    """Match each query syllable to a distinct listed one: exact first, then one letter off.

    Returns (listed position per query syllable, typos, syllables whose marks differ,
    one-letter differences where the query's syllable is itself a name syllable of the
    watchlist, on the listed surname or given name: `Đảo` for `Đạt` or `Phan` for `Phạm`
    is another name, `Thnah` for `Thanh` a typo), or None if some query syllable matches
    nothing.
    """
    if len(query.folds - listed.folds) > MAX_NAME_EDITS:
        return None  # cheap rejection before aligning
    if query.folded == listed.folded:  # same letters in the same order: marks decide
        conflicts = sum(same_syllable(a, b) is False
                        for a, b in zip(query.tokens, listed.tokens, strict=True))
        return list(range(len(query.tokens))), 0, conflicts, 0
    telling = {0, len(listed.tokens) - 1}
    free = list(range(len(listed.tokens)))
    positions: list[int | None] = [None] * len(query.tokens)
    conflicts = 0
    for qi, qt in enumerate(query.tokens):
        for li in free:
            verdict = same_syllable(qt, listed.tokens[li])
            if verdict is not None:
                positions[qi] = li
                conflicts += not verdict
                free.remove(li)
                break
    typos = other_names = 0
    for qi, qt in enumerate(query.tokens):
        if positions[qi] is not None:
            continue
        for li in free:
            if one_edit_apart(qt.fold, listed.tokens[li].fold):
                positions[qi] = li
                if li in telling and vocabulary[qt.fold]:
                    other_names += 1
                else:
                    typos += 1
                free.remove(li)
                break
        else:
            return None
    return positions, typos, conflicts, other_names


def _cached_align(
    qname: _Name, listed: _Name, vocabulary: Counter[str], cache: dict[str, Alignment]
) -> Alignment:
    """`_align`, once per written name within a query: namesakes share the result."""
    if listed.text not in cache:
        cache[listed.text] = _align(qname, listed, vocabulary)
    return cache[listed.text]


def _score_name(qname: _Name, r: _Record, vocabulary: Counter[str],
                cache: dict[str, Alignment]) -> _Named:
    """(points, feature, template, arguments) of the best of the entry's name and aliases
    for the query's name; the same for every entry with the same name and aliases."""
    best: _Named = None
    if r.name is not None:
        aligned = _cached_align(qname, r.name, vocabulary, cache)
        if aligned is not None:
            positions, typos, conflicts, other_names = aligned
            last = len(r.name.tokens) - 1
            if last in positions:
                if len(qname.tokens) == len(r.name.tokens):
                    ordered = positions == sorted(positions)  # type: ignore[type-var]
                    value = NAME_FULL if ordered else NAME_REORDERED
                    how = "full name" if ordered else "full name, given name first"
                elif 0 in positions and len(qname.tokens) > 1:
                    value, how = NAME_DROPPED_MIDDLE, "surname and given name, middle dropped"
                else:
                    value, how = NAME_GIVEN_ONLY, "given name only"
                value += (NAME_TYPO * typos + NAME_MARKS_DIFFER * conflicts
                          + NAME_OTHER_SYLLABLE * other_names)
                best = (value, "name", "{}: {} ≈ {}{}",
                        (how, qname.text, r.name.text, _NameNotes(qname, typos, other_names,
                                                                   conflicts)))
    for alias in r.aliases:
        aligned = _cached_align(qname, alias, vocabulary, cache)
        if (aligned is not None and aligned[1] == aligned[2] == aligned[3] == 0
                and len(qname.tokens) == len(alias.tokens)):
            if best is None or ALIAS > best[0]:
                best = (ALIAS, "alias", "alias: {} = {}", (qname.text, alias.text))
    if best is None and r.name is not None and not r.aliases:
        best = (NAME_UNRELATED, "name", "name {} unlike {}", (qname.text, r.name.text))
    return best


@dataclass(frozen=True, slots=True)
class _NameNotes:
    """The parenthesis after a name reason, formatted only when the reason is shown."""

    query: _Name
    typos: int
    other_names: int
    conflicts: int

    def __format__(self, spec: str) -> str:
        notes = []
        if self.typos:
            notes.append(f"{self.typos} typo")
        if self.other_names:
            notes.append(f"{self.other_names} syllable(s) one letter off another name")
        if self.conflicts:
            notes.append(f"{self.conflicts} syllable(s) with other marks")
        if not any(t.marked for t in self.query.tokens):
            notes.append("no diacritics on query")
        return f" ({', '.join(notes)})" if notes else ""


def _birth_evidence(q: _Query, r: _Record) -> tuple[float, str, tuple[object, ...]] | None:
    if q.birth_date and r.birth_date:
        # Full dates are written down, not worked out from an age: no off-by-one leniency.
        if q.birth_date == r.birth_date:
            return BIRTH_DATE_EXACT, "birth date {} exact", (r.birth_date,)
        if abs(q.birth_date.year - r.birth_date.year) <= 1:
            return BIRTH_DATE_DIFFERENT, "birth date {} vs {}", (q.birth_date, r.birth_date)
        return BIRTH_YEAR_DIFFERENT, "birth date {} vs {}", (q.birth_date, r.birth_date)
    if q.year is None or r.birth_year is None:
        return None
    gap = abs(q.year - r.birth_year)
    if gap == 0:
        return BIRTH_YEAR_EXACT, "birth year {}", (r.birth_year,)
    if gap == 1:
        return BIRTH_YEAR_ONE_OFF, "birth year {} vs {} (age off by one?)", (q.year, r.birth_year)
    return BIRTH_YEAR_DIFFERENT, "birth year {} vs {}", (q.year, r.birth_year)
