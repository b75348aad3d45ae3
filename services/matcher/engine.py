"""The matching engine: pure, in memory, no Kafka or database inside.

It holds every unit's active watchlist entries and answers "which entries does this
reported subject match, how strongly and why". The same engine serves the stream matcher,
the evaluation harness (`python -m services.matcher.evaluate`) and the benchmarks.

Retrieval: hash lookups, never a scan. An entry is filed under its national id digits,
each plate (compact, and in OCR-class form so `30K2A2570` finds `30-K2 425.70`), its full
folded name, each alias with birth year, and, for a name of two or more syllables, under
surname|given -> birth year -> each middle syllable (and "any middle"). A query reads its
name as written, given name first or surname last; for each reading it probes its birth
year +-1 and, when it has a middle name, only the listed middle syllables equal to or one
letter off its own, so the crowd of namesakes with other middle names is never scored.
One-letter typos in a surname or given name are found from the query side: the listed
syllables one letter off (a symmetric-delete index over the vocabulary, not per entry)
are probed too. An id is also filed under three pairs of its blocks (`_id_near_keys`),
so an id one digit off finds its entry even when the name has a typo too.

Variants are knowledge, not typos (`normalize.VARIANTS`): Huỳnh = Hoàng, Võ = Vũ,
Phước = Phúc, i = y after a consonant. A syllable's fold is its canonical spelling, so
variants meet under the same keys at no extra cost, and the reason names the variant.
A name written without spaces (`NGUYENVANHUNG`, `Sarươl`, `HLy`) is also read cut into
the fewest listed syllables (`normalize.segment`), and both readings are matched.
`scan` scores every entry, and the tests hold the two to the same answers.

No bucket is ever skipped. One that grows past `MAX_BUCKET` becomes a crowd: its entries
grouped by everything scoring reads (name and aliases, birth year and date, id, plates,
validity), then by listing unit. A query scores each distinct identity of a crowd once
and any query takes at most `COPIES_PER_OWNER` copies (entries alike in all of that) per
listing unit (the rest counted in `omitted`): a unit that lists ten thousand copies of
another unit's wanted person costs one scoring and cannot hide the real entry, which is
its own identity or its own unit's.

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
import functools
import gc
import math
import sys
import unicodedata
import weakref
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple

from services.matcher.normalize import (
    Syllable,
    cccd_birth_year,
    compact_plate,
    deletions,
    id_digits,
    name_tokens,
    ocr_class,
    one_edit_apart,
    segment,
    spellings,
    syllable,
    variant_conflict,
    variant_kind,
)
from shared.events import MatchReason, Subject, WatchlistEntry

PRODUCTION_THRESHOLD = 0.75  # = 8 points
MAX_BUCKET = 300
COPIES_PER_OWNER = 3
"""Matches one query takes from one identity of a crowd per listing unit."""
MAX_NAME_EDITS = 2  # syllables one letter off that a name may still align with

# Points of evidence (log-odds flavoured; 8 make an alert).
ID_EXACT, ID_ONE_DIGIT, ID_DIFFERENT = 12.0, 4.0, -8.0
PLATE_EXACT, PLATE_OCR_ONE, PLATE_OCR_MORE = 12.0, 9.0, 5.0
NAME_FULL, NAME_REORDERED, NAME_DROPPED_MIDDLE, NAME_GIVEN_ONLY = 7.0, 7.0, 6.0, 1.0
NAME_TYPO, NAME_MARKS_DIFFER, NAME_UNRELATED = -1.0, -4.0, -3.0
NAME_OTHER_SYLLABLE = -3.0  # surname/given one letter off, but the query's is a name of its own
NAME_SHUFFLED = 0.0  # the same syllables, but given and middle names swapped: another name
ALIAS = 4.0
BIRTH_DATE_EXACT, BIRTH_YEAR_EXACT, BIRTH_YEAR_ONE_OFF, BIRTH_YEAR_DIFFERENT = 4.0, 3.0, 2.0, -6.0
BIRTH_DATE_DIFFERENT = -2.0  # both full dates known, a year or less apart, not equal


_MISSING = object()

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


_CODE_LENGTH = 1 << 56
_CODE_PLATES = 1 << 60
_CODE_DIGITS = _CODE_LENGTH - 1
_ONE_DIGIT_CODES = frozenset(d << 4 * i for i in range(14) for d in range(1, 16))
"""`_id_code` differences of ids one digit apart."""


def _id_code(digits: str | None, plates: bool) -> int:
    """An id of up to 14 ASCII digits as one small integer, a digit per four bits, with
    its length and whether the entry has plates: what `MatchingEngine._match` needs to drop
    a namesake whose id differs without fetching its record (`_ONE_DIGIT_CODES`). 0 for
    anything else, which is then judged from the record."""
    if not digits or len(digits) > 14 or not digits.isascii():
        return 0
    return int(digits, 16) | len(digits) * _CODE_LENGTH | (_CODE_PLATES if plates else 0)


def points_for(score: float) -> float:
    """The points a score needs (inverse of `score_of`)."""
    return -4 * math.log2(1 - score) if score < 1 else math.inf


def score_of(points: float) -> float:
    return 0.0 if points <= 0 else round(1 - 2 ** (-points / 4), 4)


_SCORES: dict[float, float] = {}
"""`score_of` of the points met so far: sums of a few constants, a few hundred values;
`round` to four places costs more than the rest of a candidate's arithmetic."""


def _score(points: float) -> float:
    score = _SCORES.get(points)
    if score is None:
        if len(_SCORES) >= 10_000:
            _SCORES.clear()
        score = _SCORES[points] = score_of(points)
    return score


class Match(NamedTuple):
    entry: WatchlistEntry
    score: float
    reasons: tuple[MatchReason, ...]


@dataclass(slots=True, weakref_slot=True, eq=False)
class _Name:
    text: str
    tokens: tuple[Syllable, ...]
    folded: str
    folds: frozenset[str]
    marked: bool
    """Some syllable carries a diacritic."""
    joined: bool = False
    """Cut into listed syllables: it was written without (some) spaces."""


def _joined_reading(name: _Name, known: Callable[[str], int | None]) -> _Name | None:
    """The name with each token no listed syllable has (`NGUYENVANHUNG`, `Sarươl`, `HLy`)
    cut into listed syllables, or None if there is none such to cut."""
    for token in name.tokens:  # the common case first: every syllable is listed
        if len(token.text) >= 3 and not known(token.fold):
            break
    else:
        return None
    tokens: list[Syllable] = []
    cut = False
    for token in name.tokens:
        if len(token.text) >= 3 and not known(token.fold):
            pieces = segment(token.text, known)
            if pieces is not None:
                tokens.extend(syllable(piece) for piece in pieces)
                cut = True
                continue
        tokens.append(token)
    if not cut:
        return None
    return _Name(name.text, tuple(tokens), " ".join(t.fold for t in tokens),
                 frozenset(t.fold for t in tokens), any(t.marked for t in tokens), joined=True)


@dataclass(slots=True)
class _Record:
    # What scoring reads of every candidate first, together in memory.
    name_key: object
    """What the name contribution depends on (name and aliases), shared by namesakes:
    hashed by identity, since namesakes share their `_Name` objects."""
    birth_year: int | None
    valid_until: datetime | None
    entry_id: str
    name: _Name | None
    aliases: tuple[_Name, ...]
    id_digits: str | None
    birth_date: date | None
    plates: tuple[str, ...]
    id_int: int
    stored: tuple[object, ...] | bytes
    """The entry as `_stored` keeps it, decoded by `_entry` for each alert."""
    owner: str
    version: int
    category: str


def _name(text: str | None) -> _Name | None:
    if not text:
        return None
    text = unicodedata.normalize("NFC", text)
    tokens = name_tokens(text)
    if not tokens:
        return None
    shown = " ".join(text.split())
    folds = [t.fold for t in tokens]
    return _Name(shown, tokens, " ".join(folds), frozenset(folds), any([t.marked for t in tokens]))


class _SharedNames:
    """One `_Name` for every entry written with the same name: namesakes are common, and
    scoring a query against many of them then reads one object (fewer cache misses, less
    memory). Held weakly: a name no entry uses any more is dropped."""

    def __init__(self) -> None:
        self._by_text: weakref.WeakValueDictionary[str, _Name] = weakref.WeakValueDictionary()

    def __call__(self, text: str | None) -> _Name | None:
        if not text:
            return None
        name = self._by_text.get(text)
        if name is None:
            name = _name(text)
            if name is not None:
                self._by_text[text] = name
        return name


_YEARS: dict[int, int] = {}
"""One int object per birth year, shared by the records (read for every candidate)."""


def _prepare(entry: WatchlistEntry, names: _SharedNames) -> _Record:
    digits = id_digits(entry.national_id) if entry.national_id else None
    year = entry.birth_year or (entry.birth_date.year if entry.birth_date else None)
    year = year or (cccd_birth_year(digits) if digits else None)
    name = names(entry.full_name)
    aliases = tuple(n for n in (names(a) for a in entry.aliases) if n is not None)
    owner = sys.intern(entry.owner_unit)
    year = None if year is None else _YEARS.setdefault(year, year)
    return _Record(
        entry_id=entry.entry_id,
        version=entry.version,
        category=entry.category.value,
        name=name,
        aliases=aliases,
        birth_year=year,
        birth_date=entry.birth_date,
        id_digits=digits or None,
        id_int=_digits_int(digits),
        plates=tuple(p for p in (compact_plate(p) for p in entry.plates) if p),
        valid_until=entry.valid_until,
        owner=owner,
        stored=_stored(entry.model_dump_json(exclude_defaults=True).encode(),
                       (entry.entry_id, owner, name.text if name else None, digits, year)),
        name_key=name if not aliases else (name, aliases),
    )


# ----------------------------------------------------------------- the stored entry
#
# An alert carries the listed entry exactly as `WatchlistEntry.model_validate_json` reads
# it back from its JSON (`model_dump_json(exclude_defaults=True)`). Decoding that JSON for
# every alert was a sixth of the matching time, so the entry is read back once, when it is
# listed, and its field values kept (`_stored`); an alert builds a new `WatchlistEntry`
# from them the way `model_construct` does, without validating again (`_entry`): the same
# field values, the same fields set, equal to what decoding the JSON gives. An entry the
# JSON does not read back plainly keeps its JSON, decoded as before.

_ENTRY_FIELDS = tuple(WatchlistEntry.model_fields)
_ENTRY_DEFAULTS: dict[str, object] = {
    name: None if field.is_required() else field.default
    for name, field in WatchlistEntry.model_fields.items()}
_LAYOUTS: list[tuple[str, ...]] = []
"""The fields set of stored entries (a few combinations), each once, in field order."""
_LAYOUT_SETS: list[frozenset[str]] = []
"""`_LAYOUTS` as sets: an alert's `__pydantic_fields_set__` is copied from one (copying a
set costs less than building it from a tuple)."""
_LAYOUT_OF: dict[frozenset[str], tuple[int, tuple[int, ...]] | None] = {}
"""Fields set -> (its number in `_LAYOUTS`, where `_SHARED` fields are in it), or None
if entries with these fields set are not kept as values."""
_SHARED = ("entry_id", "owner_unit", "full_name", "national_id", "birth_year")
"""Fields whose value the record mostly holds anyway (`_stored`'s `shared`)."""
_new_object = object.__new__
_set_attribute = object.__setattr__
_decode_json = WatchlistEntry.model_validate_json


def _stored(raw: bytes, shared: tuple[object, ...]) -> tuple[object, ...] | bytes:
    """The values of the fields set of the entry `raw` decodes to, in field order, then
    the number of its layout; or `raw` itself if it does not decode plainly. A value
    equal to its field's in `shared` (the values of `_SHARED`, as the record holds them)
    is kept once."""
    try:
        entry = _decode_json(raw)
    except ValueError:
        return raw  # decoding it fails at each alert, as it always did
    if (type(entry) is not WatchlistEntry or entry.__pydantic_extra__ is not None
            or entry.__pydantic_private__ is not None):
        return raw
    values = entry.__dict__
    fields_set = frozenset(entry.__pydantic_fields_set__)
    layout = _LAYOUT_OF.get(fields_set, _MISSING)
    if layout is _MISSING:
        layout = _LAYOUT_OF[fields_set] = _layout(values, fields_set)
    if layout is None:
        return raw
    number, share_at = layout  # type: ignore[misc]
    kept = [values[name] for name in _LAYOUTS[number]]
    for at, value in zip(share_at, shared, strict=True):
        if at >= 0 and kept[at] == value and type(kept[at]) is type(value):
            kept[at] = value
    kept.append(number)
    return tuple(kept)


def _layout(values: dict[str, object], fields_set: frozenset[str]
            ) -> tuple[int, tuple[int, ...]] | None:
    """A new layout, checked on the first entry that has it: what does not depend on an
    entry's data (the order of the fields, the defaults of those not set) is checked once."""
    if (tuple(values) != _ENTRY_FIELDS or not fields_set <= values.keys()
            or any(values[name] is not _ENTRY_DEFAULTS[name]
                   for name in _ENTRY_FIELDS if name not in fields_set)):
        return None
    names = tuple(name for name in _ENTRY_FIELDS if name in fields_set)
    _LAYOUTS.append(names)
    _LAYOUT_SETS.append(frozenset(names))
    return len(_LAYOUTS) - 1, tuple(names.index(f) if f in names else -1 for f in _SHARED)


def _entry(stored: tuple[object, ...] | bytes) -> WatchlistEntry:
    """The listed entry, as `WatchlistEntry.model_validate_json` of its JSON gives it."""
    if type(stored) is bytes:
        return WatchlistEntry.model_validate_json(stored)
    layout: int = stored[-1]  # type: ignore[assignment]
    values = _ENTRY_DEFAULTS.copy()
    values.update(zip(_LAYOUTS[layout], stored))  # (zip stops before the layout number)
    entry = _new_object(WatchlistEntry)
    _set_attribute(entry, "__dict__", values)
    _set_attribute(entry, "__pydantic_fields_set__", set(_LAYOUT_SETS[layout]))
    _set_attribute(entry, "__pydantic_extra__", None)
    _set_attribute(entry, "__pydantic_private__", None)
    return entry


def _syllables(r: _Record) -> Iterator[str]:
    for name in (r.name, *r.aliases):
        if name is not None:
            yield from (t.fold for t in name.tokens)


def _entry_keys(r: _Record) -> Iterator[str]:
    """The flat keys of an entry: id, plates, full name, aliases."""
    if r.id_digits and len(r.id_digits) not in ID_BLOCKS:  # else filed in `_id_near`
        yield "i" + r.id_digits
    for plate in r.plates:
        yield "p" + plate
        yield "o" + ocr_class(plate)
    if r.name is not None:
        yield "f" + r.name.folded
    year = "" if r.birth_year is None else str(r.birth_year)
    for alias in r.aliases:
        yield f"a{alias.folded}|{year}"


ANY_MIDDLE = ""

ID_BLOCKS = (12, 9)
"""Id lengths filed by their blocks (`_id_near_keys`): the 12-digit CCCD and the 9-digit
CMND. Ids of other lengths are filed whole."""


def _id_near_keys(digits: str | None) -> tuple[int, ...]:
    """Keys under which ids one digit apart (or equal) meet. The id is dealt into blocks
    (a CCCD into four, every fourth digit; a CMND into three); a changed digit leaves all
    blocks but one intact, so the id is filed under each set of blocks that leaves one
    out: four keys of nine digits (a CMND: three of six). Dealt, not cut, so that every
    block holds some of the last, most varied digits; a key of leading digits (province,
    century, birth year) would be shared by thousands. Keys of fewer digits were measured
    to bring ~1.7 unrelated entries per query on the 1,000,000-entry benchmark."""
    if not digits:
        return ()
    n = len(digits)
    if n == 12:
        a, b, c, d = digits[0::4], digits[1::4], digits[2::4], digits[3::4]
        return (10**9 + int(b + c + d), 2 * 10**9 + int(a + c + d),
                3 * 10**9 + int(a + b + d), 4 * 10**9 + int(a + b + c))
    if n == 9:
        a, b, c = digits[0::3], digits[1::3], digits[2::3]
        return (5 * 10**9 + int(b + c), 6 * 10**9 + int(a + c), 7 * 10**9 + int(a + b))
    return ()


def _name_keys(r: _Record) -> tuple[str, int | None, set[str]] | None:
    """Where a name of two or more syllables is filed: surname|given, birth year, and the
    keys under them.

    The keys are `ANY_MIDDLE` (every namesake born that year) and each middle syllable: a
    query with a middle name takes only the namesakes whose middle names it could align
    with, not the whole crowd of Nguyễn ... Hùng born that year. Names one letter off are
    found from the query side, through the vocabulary (`MatchingEngine._typo_neighbours`),
    so nothing more is filed per entry.
    """
    if r.name is None or len(r.name.tokens) < 2:
        return None
    folds = [t.fold for t in r.name.tokens]
    return f"{folds[0]}|{folds[-1]}", r.birth_year, {ANY_MIDDLE, *folds[1:-1]}


def _identity(r: _Record) -> tuple[object, ...]:
    """Everything scoring reads of an entry: entries alike in it score alike."""
    return (r.name_key, r.birth_year, r.birth_date, r.id_digits, r.plates, r.valid_until)


def _copies(r: _Record) -> tuple[object, ...]:
    """Entries of one unit alike in everything scoring reads are copies: one query takes
    only a few of them."""
    return (r.owner, r.name_key, r.birth_year, r.birth_date, r.id_digits, r.plates,
            r.valid_until)  # (owner, *_identity(r)), inlined


class _Crowd:
    """A bucket grown past the engine's bucket size: slots by identity, then by unit."""

    __slots__ = ("groups", "size")

    def __init__(self) -> None:
        self.groups: dict[tuple[object, ...], dict[str, list[int]]] = {}
        self.size = 0

    def add(self, record: _Record, slot: int) -> None:
        by_owner = self.groups.setdefault(_identity(record), {})
        by_owner.setdefault(record.owner, []).append(slot)
        self.size += 1

    def remove(self, record: _Record, slot: int) -> None:
        identity = _identity(record)
        by_owner = self.groups[identity]
        slots = by_owner[record.owner]
        slots.remove(slot)
        if not slots:
            del by_owner[record.owner]
            if not by_owner:
                del self.groups[identity]
        self.size -= 1

    def slots(self) -> list[int]:
        return [slot for by_owner in self.groups.values() for slots in by_owner.values()
                for slot in slots]


Bucket = int | array | _Crowd
"""One slot; or a few, as an array of unsigned ints (reading one reads no int objects
scattered over the heap, and it takes half the memory of a list); or a crowd."""
_NO_CROWDS: list = []  # shared, never appended to


def _neighbourhood(fold: str) -> frozenset[str]:
    """The fold and its one-letter deletions: two folds are within one edit (or one
    adjacent transposition) only if their neighbourhoods meet."""
    return frozenset({fold} | deletions(fold))


class _Query:
    __slots__ = ("birth_date", "id_digits", "id_int", "name", "plate", "subject", "year")

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

    def keys(self, engine: MatchingEngine) -> Iterator[str]:
        """The flat keys to probe: id, plates, full name (without a year), aliases."""
        if self.id_digits and len(self.id_digits) not in ID_BLOCKS:
            yield "i" + self.id_digits
        if self.plate:
            yield "p" + self.plate
            yield "o" + ocr_class(self.plate)
        if self.name is None:
            return
        if self.year is None:
            yield "f" + self.name.folded  # no year to narrow by: every namesake is a candidate
        if engine._alias_names.get(self.name.folded):
            years = ("",) if self.year is None else (str(self.year - 1), str(self.year),
                                                     str(self.year + 1), "")
            for year in years:
                yield f"a{self.name.folded}|{year}"

    def pair_probes(self, engine: MatchingEngine) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(surname|given, keys) to look up in the name pairs, for every birth year."""
        if self.name is None or len(self.name.tokens) < 2:
            return
        vocabulary, surnames = engine._vocabulary, engine._surnames
        folds = [t.fold for t in self.name.tokens]
        written = [t.written for t in self.name.tokens]
        # A surname or given name one letter off a real name syllable is another name,
        # which only more evidence can lift to an alert: an exact birth date, or an id one
        # digit off. Such names are looked for only with a birth date (an entry whose id is
        # one digit off is retrieved through `_id_near` whatever its name); a syllable no
        # listed name has is a typo, and its neighbours are always looked for.
        typo_reach = self.birth_date is not None
        for surname_at, given_at in _readings(folds, surnames, vocabulary):
            surname, given = folds[surname_at], folds[given_at]
            # The listed middle syllables the first other syllable could align with (equal
            # or one letter off): a listed name without any of them cannot align.
            other = 0 if 0 not in (surname_at, given_at) else (
                1 if 1 not in (surname_at, given_at) else 2)
            keys = engine._near_middles(folds[other]) if other < len(folds) else (ANY_MIDDLE,)
            yield f"{surname}|{given}", keys
            if typo_reach or not vocabulary.get(given):
                for variant in engine._typo_neighbours(given, written[given_at]):
                    yield f"{surname}|{variant}", keys
            if typo_reach or not vocabulary.get(surname):
                for variant in engine._typo_neighbours(surname, written[surname_at]):
                    if surnames.get(variant):
                        yield f"{variant}|{given}", keys


def _readings(folds: list[str], surnames: Counter[str], vocabulary: Counter[str]
              ) -> list[tuple[int, int]]:
    """(surname, given name) positions in a name as typed (`Nguyễn Văn Luân`), reversed
    (`Luân Văn Nguyễn`) or with the surname moved last (`Văn Luân Nguyễn`); the watchlist's
    surnames decide which, all of them when they cannot (e.g. a typo in the first
    syllable, which then belongs to no listed name)."""
    last = len(folds) - 1
    typed, reversed_ = (0, last), (last, 0)
    moved = [(last, last - 1)] if last >= 2 else []
    first_is_surname, last_is_surname = bool(surnames.get(folds[0])), bool(surnames.get(folds[-1]))
    if first_is_surname and not last_is_surname:
        return [typed]
    if last_is_surname and not first_is_surname and vocabulary.get(folds[0]):
        return [reversed_, *moved]
    return [typed, reversed_, *moved]


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
        self._needed = (threshold, points_for(threshold))
        """(threshold, the points it needs), for `_match`."""
        self.max_bucket = max_bucket
        self._records: list[_Record | None] = []
        self._id_codes = array("Q")
        """`_id_code` of each slot's record (0: none, or a free slot)."""
        self._names = _SharedNames()
        self._free: list[int] = []
        self._slot_of: dict[str, int] = {}
        self._tombstones: dict[str, int] = {}
        self._index: dict[str, Bucket] = {}
        """Flat keys (ids, plates, full names, aliases) -> slots."""
        self._id_near: dict[int, Bucket] = {}
        """Pairs of id blocks (`_id_near_keys`) -> slots: ids one digit off meet here."""
        self._pairs: dict[str, dict[int | None, dict[str, Bucket]]] = {}
        """surname|given -> birth year -> `ANY_MIDDLE` or a middle syllable -> slots: one
        lookup in a big table per name reading, the rest in small ones."""
        self._alias_names: Counter[str] = Counter()
        self._categories: Counter[str] = Counter()
        self._vocabulary: Counter[str] = Counter()
        """Folded name syllables of the listed names and aliases, with their counts."""
        self._surnames: Counter[str] = Counter()
        self._near: dict[str, set[str]] = {}
        """Symmetric-delete index of the listed name syllables: a one-letter deletion (or
        the syllable itself) -> the syllables that have it. Only grows: a stale syllable
        only widens the namesake filter, never narrows it."""
        self._near_known: set[str] = set()
        self._near_memo: dict[str, tuple[str, ...]] = {}
        self._typo_memo: dict[str, tuple[str, ...]] = {}
        self._middles: Counter[str] = Counter()
        """Folded middle syllables of the listed names, with their counts."""
        self._middle_memo: dict[str, tuple[str, ...]] = {}
        self.last_candidates = 0
        """How many entries the latest `match` call scored (for the candidates metric)."""
        self.crowds_met = 0
        """Crowds (buckets past `max_bucket`) met by queries so far (for a metric)."""
        self.last_crowds: list[int] = _NO_CROWDS
        """The sizes of the crowds the latest `match` met."""
        self.last_omitted = 0
        """Copies the latest `match` left out (over `COPIES_PER_OWNER` per unit)."""

    def __len__(self) -> int:
        return len(self._slot_of)

    def get(self, entry_id: str) -> WatchlistEntry | None:
        slot = self._slot_of.get(entry_id)
        if slot is None:
            return None
        record = self._records[slot]
        assert record is not None
        return _entry(record.stored)

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
        record = _prepare(entry, self._names)
        slot = self._free.pop() if self._free else len(self._records)
        code = _id_code(record.id_digits, bool(record.plates))
        if slot == len(self._records):
            self._records.append(record)
            self._id_codes.append(code)
        else:
            self._records[slot] = record
            self._id_codes[slot] = code
        self._slot_of[entry.entry_id] = slot
        self._categories[record.category] += 1
        self._vocabulary.update(_syllables(record))
        if record.name is not None:
            self._surnames[record.name.tokens[0].fold] += 1
            for token in record.name.tokens:
                if token.fold not in self._near_known:
                    self._near_known.add(token.fold)
                    self._near_memo.clear()
                    self._typo_memo.clear()
                    self._middle_memo.clear()
                    for spelling in spellings(token.fold):  # `Huynk` finds Hoàng too
                        for variant in _neighbourhood(spelling):
                            self._near.setdefault(variant, set()).add(token.fold)
            for token in record.name.tokens[1:-1]:
                if not self._middles.get(token.fold):
                    self._middle_memo.clear()
                self._middles[token.fold] += 1
        for key in set(_entry_keys(record)):
            self._file(self._index, key, slot, record)
        for number in _id_near_keys(record.id_digits):
            self._file(self._id_near, number, slot, record)
        filed = _name_keys(record)
        if filed is not None:
            pair, year, keys = filed
            years = self._pairs.get(pair)
            if years is None:
                years = self._pairs[pair] = {}
            table = years.get(year)
            if table is None:
                table = years[year] = {}
            for key in keys:
                self._file(table, key, slot, record)
        self._alias_names.update(alias.folded for alias in record.aliases)
        return True

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

    def discard(self, entry_id: str) -> bool:
        """Forget an entry, leaving no tombstone: a replica told it may no longer see it
        takes it again if it is shared again, whatever its version."""
        if entry_id not in self._slot_of:
            return False
        self._remove(entry_id)
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
            self._unfile(self._index, key, slot, record)
        for number in _id_near_keys(record.id_digits):
            self._unfile(self._id_near, number, slot, record)
        filed = _name_keys(record)
        if filed is not None:
            pair, year, keys = filed
            years = self._pairs[pair]
            table = years[year]
            for key in keys:
                self._unfile(table, key, slot, record)
            if not table:
                del years[year]
                if not years:
                    del self._pairs[pair]
        self._alias_names.subtract(alias.folded for alias in record.aliases)
        self._records[slot] = None
        self._id_codes[slot] = 0
        self._free.append(slot)
        self._categories[record.category] -= 1
        self._vocabulary.subtract(_syllables(record))
        if record.name is not None:
            self._surnames[record.name.tokens[0].fold] -= 1
            self._middles.subtract(token.fold for token in record.name.tokens[1:-1])

    def _file(self, table: dict, key: object, slot: int, record: _Record) -> None:
        bucket = table.get(key)
        if bucket is None:
            table[key] = slot
        elif type(bucket) is int:
            table[key] = array("I", (bucket, slot))
        elif type(bucket) is array:
            bucket.append(slot)
            if len(bucket) > self.max_bucket:
                crowd = table[key] = _Crowd()
                records = self._records
                for member in bucket:
                    crowd.add(records[member] if member != slot else record, member)
        else:
            bucket.add(record, slot)

    def _unfile(self, table: dict, key: object, slot: int, record: _Record) -> None:
        bucket = table.get(key)
        if type(bucket) is int:
            if bucket == slot:
                del table[key]
        elif type(bucket) is array:
            bucket.remove(slot)
            if len(bucket) == 1:
                table[key] = bucket[0]
        elif bucket is not None:
            bucket.remove(record, slot)
            if bucket.size <= self.max_bucket // 2:  # a list again, and no crowd reported
                slots = bucket.slots()
                if not slots:
                    del table[key]
                else:
                    table[key] = slots[0] if len(slots) == 1 else array("I", slots)

    # ------------------------------------------------------------------ matching

    def candidates(self, subject: Subject) -> set[int]:
        """Slots retrieved by the query's keys (an inspection aid and a benchmark figure);
        of a crowd, one slot per identity and unit."""
        found: set[int] = set()
        crowds: list[_Crowd] = []
        for query in self._queries(subject):
            more, met = self._candidates(query)
            found |= more
            crowds += met
        for crowd in crowds:
            for by_owner in crowd.groups.values():
                found.update(slots[0] for slots in by_owner.values())
        return found

    def _candidates(self, query: _Query) -> tuple[set[int], list]:
        found: set[int] = set()
        crowds: dict[int, _Crowd] | None = None
        index, near = self._index, self._id_near
        # The id, or one digit off it; then the flat keys.
        buckets = ([near.get(number) for number in _id_near_keys(query.id_digits)]
                   if query.id_digits else [])
        buckets += [index.get(key) for key in query.keys(self)]
        for bucket in buckets:
            if bucket is None:
                continue
            if type(bucket) is int:
                found.add(bucket)
            elif type(bucket) is array:
                found.update(bucket)
            else:
                crowds = crowds or {}
                crowds[id(bucket)] = bucket
        years = (None,) if query.year is None else (query.year - 1, query.year,
                                                    query.year + 1, None)
        pairs = self._pairs
        name = query.name
        for pair, keys in (query.pair_probes(self) if name is not None and len(name.tokens) >= 2
                           else ()):
            by_year = pairs.get(pair)
            if by_year is None:
                continue
            for year in years:
                table = by_year.get(year)
                if table is None:
                    continue
                for key in keys:
                    bucket = table.get(key)
                    if bucket is None:
                        continue
                    if type(bucket) is int:
                        found.add(bucket)
                    elif type(bucket) is array:
                        found.update(bucket)
                    else:
                        crowds = crowds or {}
                        crowds[id(bucket)] = bucket
        return found, list(crowds.values()) if crowds else _NO_CROWDS

    def _typo_neighbours(self, word: str, written: str | None = None) -> tuple[str, ...]:
        """The listed syllables one letter off `word` (or off its `written` spelling, `Li`
        for `ly`): a deletion of one is, or equals, a deletion of the other (a superset:
        the scorer's `one_edit_apart` decides)."""
        spelled = written is not None and written != word
        key = f"{word}|{written}" if spelled else word
        memo = self._typo_memo.get(key)
        if memo is None:
            near = set(self._near_syllables(word))
            if spelled:
                near.update(self._near_syllables(written))  # type: ignore[arg-type]
            near.discard(word)
            memo = tuple(sorted(near))
            if len(self._typo_memo) >= 100_000:
                self._typo_memo.clear()
            self._typo_memo[key] = memo
        return memo

    def _near_middles(self, fold: str) -> tuple[str, ...]:
        """The listed middle syllables equal to `fold` or one letter off it: the keys
        under which a name that `fold` could align with is filed."""
        near = self._middle_memo.get(fold)
        if near is None:
            middles = self._middles
            near = tuple(other for other in self._near_syllables(fold) if middles.get(other))
            if len(self._middle_memo) >= 100_000:
                self._middle_memo.clear()
            self._middle_memo[fold] = near
        return near

    def _near_syllables(self, fold: str) -> tuple[str, ...]:
        """The listed syllables equal to `fold` or one letter off it (memoised until a new
        syllable is listed)."""
        near = self._near_memo.get(fold)
        if near is None:
            found: set[str] = set()
            for variant in _neighbourhood(fold):
                listed = self._near.get(variant)
                if listed:
                    found |= listed
            near = tuple(sorted(found))
            if len(self._near_memo) >= 100_000:
                self._near_memo.clear()
            self._near_memo[fold] = near
        return near

    def _queries(self, subject: Subject) -> list[_Query]:
        """The query as written and, when its name has a token no listed name has that cuts
        into listed syllables (`NGUYENVANHUNG`), also as so cut: both are matched, since a
        typo may look like two names run together."""
        query = _Query(subject)
        cut = self._cut(query)
        return [query] if cut is None else [query, cut]

    def _cut(self, query: _Query) -> _Query | None:
        """`query` with its name read cut into listed syllables, if it can be."""
        if query.name is None:
            return None
        reading = _joined_reading(query.name, self._vocabulary.get)
        if reading is None:
            return None
        cut = _Query(query.subject)
        cut.name = reading
        return cut

    def match_entry(self, subject: Subject, entry_id: str, *, at: datetime) -> Match | None:
        """Score one listed entry against `subject` without retrieval (late matching)."""
        slot = self._slot_of.get(entry_id)
        if slot is None:
            return None
        needed = points_for(self.threshold)
        found = [m for q in self._queries(subject)
                 if (m := self._judge(q, slot, at, _Caches(), needed)) is not None]
        return max(found, key=lambda m: m.score) if found else None

    def match(self, subject: Subject, *, at: datetime) -> list[Match]:
        """Entries matching `subject` at or above the threshold, best first.

        Entries whose `valid_until` is before `at` no longer match.
        """
        query = _Query(subject)
        matches = self._match(query, at)
        if query.name is None:
            return matches  # (nothing to cut)
        cut = self._cut(query)
        if cut is None:
            return matches
        scored, crowds, omitted = self.last_candidates, self.last_crowds, self.last_omitted
        more = self._match(cut, at)
        self.last_candidates += scored
        self.last_omitted += omitted
        if crowds:
            self.last_crowds = [*crowds, *self.last_crowds]
        return _best_of(matches, more)

    def _match(self, query: _Query, at: datetime) -> list[Match]:
        caches = _Caches()
        threshold = self.threshold
        if threshold != self._needed[0]:
            self._needed = (threshold, points_for(threshold))
        needed = self._needed[1]
        nearly = needed - 0.01
        candidates, crowds = self._candidates(query)
        records, vocabulary = self._records, self._vocabulary
        evaluate = _evaluate
        matches: list[Match] = []
        append = matches.append
        # Most namesakes of a report with an id have another id: drop them before scoring
        # (an id more than one digit off costs more points than a name and birth date
        # give, unless a plate could make up for it; ids of another length say nothing).
        id_int = query.id_int if ID_DIFFERENT + BEST_BIRTH + BEST_NAME < needed else 0
        id_bits, plate = id_int.bit_length(), query.plate  # the same bit length: as many digits
        # The same test on `_id_code`s, without fetching the record: differences in the
        # digits only (the same length; plates only if the query has none), and more than
        # one digit. What it cannot tell is told from the record below.
        code = _id_code(query.id_digits, False) if id_int else 0
        mask = ~0 if plate else ~_CODE_PLATES
        codes, one_digit = self._id_codes, _ONE_DIGIT_CODES

        scored = len(candidates)
        # (-score, entry id, ...): sorted as they are, best first; entry ids never repeat
        kept: list[tuple[float, str, _Record, list[Reason | _Explained]]] = []
        keep = kept.append
        for slot in candidates:
            if code and (listed := codes[slot]):
                differs = (listed ^ code) & mask
                if 0 < differs <= _CODE_DIGITS and differs not in one_digit:
                    continue
            record = records[slot]
            if (id_int and record is not None and record.id_int and record.id_int != id_int
                    and record.id_int.bit_length() == id_bits
                    and not (plate and record.plates)
                    and not _one_byte_apart(id_int, record.id_int)):
                continue
            if record is None or (record.valid_until is not None and record.valid_until < at):
                continue
            evaluated = evaluate(query, record, vocabulary, needed, caches)
            # (points first: `score_of` costs more, and rounds, hence the margin)
            if (evaluated is not None and evaluated[0] >= nearly
                    and (score := _score(evaluated[0])) >= threshold):
                keep((-score, record.entry_id, record, evaluated[1]))
        omitted = 0
        if crowds:
            self.crowds_met += len(crowds)
            seen: set[tuple[object, ...]] = set()
            for crowd in crowds:
                for identity, by_owner in crowd.groups.items():
                    if identity in seen:
                        continue
                    seen.add(identity)
                    scored += 1
                    first = records[next(iter(by_owner.values()))[0]]
                    evaluated = self._evaluate_member(query, first, at, caches, needed)
                    if evaluated is None or (score := _score(evaluated[0])) < threshold:
                        continue
                    for slots in by_owner.values():
                        taken = [s for s in slots[:COPIES_PER_OWNER + 1] if s not in candidates]
                        for slot in taken[:COPIES_PER_OWNER]:
                            member = records[slot]
                            keep((-score, member.entry_id, member, evaluated[1]))
                        omitted += max(0, len(slots) - COPIES_PER_OWNER)
        # At most COPIES_PER_OWNER copies from one unit (entries alike in everything
        # scoring reads): ingest refuses more, and building them all, an entry each,
        # would cost more than everything else.
        if len(kept) > 1:  # best first: the order of the matches
            kept.sort()
        if len(kept) > COPIES_PER_OWNER:
            per_class: dict[tuple[object, ...], int] = {}
            for negated, _, record, reasons in kept:
                copies = _copies(record)
                taken_here = per_class.get(copies, 0)
                if taken_here >= COPIES_PER_OWNER:
                    omitted += 1
                    continue
                per_class[copies] = taken_here + 1
                append(_alert(record, -negated, reasons))
        else:
            for negated, _, record, reasons in kept:
                append(_alert(record, -negated, reasons))
        self.last_candidates = scored
        self.last_crowds = [crowd.size for crowd in crowds] if crowds else _NO_CROWDS
        self.last_omitted = omitted
        return matches

    def _evaluate_member(self, query: _Query, record: _Record | None, at: datetime,
                         caches: _Caches, needed: float
                         ) -> tuple[float, list[Reason | _Explained]] | None:
        """`_evaluate` with the cheap id and validity checks `match` makes first."""
        if record is None or (record.valid_until is not None and record.valid_until < at):
            return None
        id_int = query.id_int if ID_DIFFERENT + BEST_BIRTH + BEST_NAME < needed else 0
        if (id_int and record.id_int and record.id_int != id_int
                and record.id_int.bit_length() == id_int.bit_length()
                and not (query.plate and record.plates)
                and not _one_byte_apart(id_int, record.id_int)):
            return None
        return _evaluate(query, record, self._vocabulary, needed, caches)

    def scan(self, subject: Subject, *, at: datetime) -> list[Match]:
        """`match` without the indexes: every entry is scored. Slow; the reference the
        indexed retrieval must agree with (tests, audits of a surprising non-match)."""
        found: list[Match] = []
        needed = points_for(self.threshold)
        for query in self._queries(subject):
            caches = _Caches()
            matches = [match for slot in range(len(self._records))
                       if (match := self._judge(query, slot, at, caches, needed)) is not None]
            found = _best_of(found, matches)
        found.sort(key=lambda m: (-m.score, m.entry.entry_id))
        return found

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
        return _alert(record, score, reasons)


def _best_of(first: list[Match], second: list[Match]) -> list[Match]:
    """Both readings' matches, each entry once, with its better score; best first."""
    best = {m.entry.entry_id: m for m in first}
    for m in second:
        known = best.get(m.entry.entry_id)
        if known is None or m.score > known.score:
            best[m.entry.entry_id] = m
    return sorted(best.values(), key=lambda m: (-m.score, m.entry.entry_id))


def _alert(record: _Record, score: float, reasons: list[Reason | _Explained]) -> Match:
    return _new_tuple(Match, (_entry(record.stored), score,  # = Match(...), one call less
                              tuple([_explain(reason) for reason in reasons])))


_new_tuple = tuple.__new__


# ------------------------------------------------------------------------- scoring


Reason = tuple[str, str, tuple[object, ...]]
"""(feature, detail template, arguments): formatted into a MatchReason only for alerts."""


Alignment = tuple[list[int | None], int, int, int, tuple[tuple[int, int], ...]] | None


class _Caches:
    """Per-query memo: alignments by listed name, name contributions by name key,
    birth evidence by birth year."""

    __slots__ = ("aligned", "birth", "named")

    def __init__(self) -> None:
        self.aligned: dict[_Name, Alignment] = {}
        self.named: dict[object, tuple[float, _Explained] | None] = {}
        self.birth: dict[int | None, tuple[float, _Explained] | None] = {}
        """Birth evidence by the entry's birth year, when no two full dates meet."""


_Named = tuple[float, str, str, tuple[object, ...]] | None


class _Explained:
    """A reason shared by every namesake of one query: formatted once, if it alerts."""

    __slots__ = ("args", "built", "feature", "template")

    def __init__(self, feature: str, template: str, args: tuple[object, ...]):
        self.feature, self.template, self.args = feature, template, args
        self.built: MatchReason | None = None

    def reason(self) -> MatchReason:
        if self.built is None:
            self.built = _explain((self.feature, self.template, self.args))
        return self.built


_BIRTH_REASONS: dict[tuple[str, tuple[object, ...]], MatchReason] = {}

_validate_reason = MatchReason.__pydantic_validator__.validate_python
"""`MatchReason(**fields)` without the Python of `BaseModel.__init__` around it."""


def _explain(reason: Reason | _Explained) -> MatchReason:
    if type(reason) is _Explained:
        built = reason.built
        return built if built is not None else reason.reason()
    feature, template, args = reason  # type: ignore[misc]
    if feature != "birth":
        return _validate_reason({"feature": feature, "detail": template.format(*args)})
    # Birth reasons repeat across reports (`birth year 1985`): one object each.
    built = _BIRTH_REASONS.get((template, args))
    if built is None:
        if len(_BIRTH_REASONS) >= 50_000:
            _BIRTH_REASONS.clear()
        built = _BIRTH_REASONS[(template, args)] = _validate_reason(
            {"feature": feature, "detail": template.format(*args)})
    return built


def _evaluate(
    q: _Query, r: _Record, vocabulary: Counter[str], needed: float, caches: _Caches,
) -> tuple[float, list[Reason | _Explained]] | None:
    """Points and reasons of `r` for `q`, or None as soon as `needed` is out of reach.

    The cheap features come first and bound what is left: an entry whose id contradicts
    the query's is dropped before any name is looked at, unless a plate could still lift it.
    """
    points = 0.0
    reasons: list[Reason | _Explained] = []
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
    if q.birth_date is None or r.birth_date is None:  # then the birth years decide
        birth = caches.birth.get(r.birth_year, _MISSING)
        if birth is _MISSING:
            birth = caches.birth[r.birth_year] = _birth_reason(q, r)
    else:
        birth = _birth_reason(q, r)
    if birth is not None:
        points += birth[0]
    if q.name is not None:
        if points + BEST_NAME < needed:
            return None  # no name could lift it to an alert: skip the alignment
        key = r.name_key
        named = caches.named.get(key, _MISSING)
        if named is _MISSING:
            scored = _score_name(q.name, r, vocabulary, caches.aligned)
            named = caches.named[key] = (
                None if scored is None else (scored[0], _Explained(*scored[1:])))
        if named is not None:
            points += named[0]
            reasons.append(named[1])
    if birth is not None:
        reasons.append(birth[1])
    return points, reasons


def _birth_reason(q: _Query, r: _Record) -> tuple[float, _Explained] | None:
    """`_birth_evidence` with its reason, formatted once if it alerts."""
    birth = _birth_evidence(q, r)
    return None if birth is None else (birth[0], _Explained("birth", birth[1], birth[2]))



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
    """Match each query syllable to a distinct listed one: exact (or another spelling of the
    same name) first, then one letter off.

    Returns (listed position per query syllable, typos, syllables whose marks differ,
    one-letter differences where the query's syllable is itself a name syllable of the
    watchlist, on a surname or given name of either name: `Đảo` for `Đạt` or `Phan` for
    `Phạm` is another name, `Thnah` for `Thanh` a typo; (query, listed) positions written
    as variants, `Huỳnh` for `Hoàng`), or None if some query syllable matches nothing.
    """
    folds = query.folds
    if len(folds) > MAX_NAME_EDITS and (  # cheap rejection before aligning
            folds.isdisjoint(listed.folds) if len(folds) == MAX_NAME_EDITS + 1
            else len(folds - listed.folds) > MAX_NAME_EDITS):
        return None
    tokens = listed.tokens
    if query.folded == listed.folded:  # same names in the same order: marks decide
        conflicts = 0
        variants: tuple[tuple[int, int], ...] = ()
        i = 0
        for a, b in zip(query.tokens, tokens, strict=True):  # `same_syllable`, inlined
            if a.written != b.written:
                variants += ((i, i),)
                conflicts += variant_conflict(a, b)
            elif a.marked and b.marked and (a.shape != b.shape or a.tone != b.tone):
                conflicts += 1
            i += 1
        return list(range(i)), 0, conflicts, 0, variants
    free = list(range(len(tokens)))
    positions: list[int | None] = [None] * len(query.tokens)
    conflicts = 0
    variants = ()
    unaligned = False
    query_last, last = len(query.tokens) - 1, len(tokens) - 1
    for qi, qt in enumerate(query.tokens):
        fold = qt.fold
        for li in free:
            if tokens[li].fold == fold:  # `same_syllable`, inlined: this runs per candidate
                if (qi == query_last and li != last and tokens[last].fold == fold
                        and last in free):
                    li = last  # a repeated syllable (`Thanh Thanh`): the last is the given name
                lt = tokens[li]
                if qt.written != lt.written:
                    variants += ((qi, li),)
                    conflicts += variant_conflict(qt, lt)
                else:
                    conflicts += qt.marked and lt.marked and (qt.shape != lt.shape
                                                              or qt.tone != lt.tone)
                positions[qi] = li
                free.remove(li)
                break
        else:
            unaligned = True
    if not unaligned:
        return positions, 0, conflicts, 0, variants
    telling = (0, len(tokens) - 1)
    query_telling = (0, len(query.tokens) - 1)
    typos = other_names = 0
    for qi, qt in enumerate(query.tokens):
        if positions[qi] is not None:
            continue
        for li in free:
            lt = tokens[li]
            if one_edit_apart(qt.fold, lt.fold) or (
                    (qt.spelled or lt.spelled) and _spelled_off(qt, lt)):
                positions[qi] = li
                if (li in telling or qi in query_telling) and vocabulary[qt.fold]:
                    other_names += 1
                else:
                    typos += 1
                free.remove(li)
                break
        else:
            return None
    return positions, typos, conflicts, other_names, variants


def _spelled_off(typed: Syllable, listed: Syllable) -> bool:
    """One letter off another spelling of the listed syllable (`Huynk` for Hoàng), when
    their canonical folds are not one letter apart (`_align` tries those first)."""
    if one_edit_apart(typed.written, listed.written):
        return True
    return any(one_edit_apart(typed.written, w) for w in spellings(listed.fold))


def _cached_align(
    qname: _Name, listed: _Name, vocabulary: Counter[str], cache: dict[_Name, Alignment]
) -> Alignment:
    """`_align`, once per written name within a query: namesakes share the result (and
    their `_Name`, by which it is kept: found without reading the name)."""
    aligned = cache.get(listed, _MISSING)
    if aligned is _MISSING:
        aligned = cache[listed] = _align(qname, listed, vocabulary)
    return aligned  # type: ignore[return-value]


@functools.cache
def _reorderings(n: int) -> tuple[tuple[tuple[int, ...], float, str], ...]:
    """The orders a full name of `n` syllables may be written in, as the listed position
    of each written syllable: its own, given name and surname swapped (`Luân Văn Nguyễn`),
    reversed, and the surname moved last (`Văn Luân Nguyễn`)."""
    return ((tuple(range(n)), NAME_FULL, "full name"),
            ((n - 1, *range(1, n - 1), 0), NAME_REORDERED, "full name, given name first"),
            (tuple(range(n - 1, -1, -1)), NAME_REORDERED, "full name, given name first"),
            ((*range(1, n), 0), NAME_REORDERED, "full name, surname last"))


def _order(positions: list[int], listed: _Name) -> tuple[float, str]:
    """Points for a full name by the listed position of each query syllable. Orders other
    than those of `_reorderings` (`Nguyễn Đức Minh` for `Nguyễn Minh Đức`) make another
    name. A repeated syllable (`Hoàng Hoàng Thiện Cường`) may stand in either place."""
    if positions == sorted(positions):
        return NAME_FULL, "full name"
    tokens = listed.tokens
    for order, points, how in _reorderings(len(positions)):
        if all(a == b or tokens[a].fold == tokens[b].fold
               for a, b in zip(positions, order, strict=True)):
            return points, how
    return NAME_SHUFFLED, "the same syllables in another order"


def _in_order(positions: list[int]) -> bool:
    """The written syllables keep the listed order, read as written, given name first
    (first and last swapped) or with the surname moved last."""
    if positions == sorted(positions):
        return True
    inner = positions[1:-1]
    if positions[-1] == 0 and positions[0] == max(positions) and inner == sorted(inner):
        return True
    return positions[-1] == 0 and positions[:-1] == sorted(positions[:-1])


def _score_name(qname: _Name, r: _Record, vocabulary: Counter[str],
                cache: dict[_Name, Alignment]) -> _Named:
    """(points, feature, template, arguments) of the best of the entry's name and aliases
    for the query's name; the same for every entry with the same name and aliases."""
    best: _Named = None
    if r.name is not None:
        aligned = _cached_align(qname, r.name, vocabulary, cache)
        if aligned is not None:
            positions, typos, conflicts, other_names, variants = aligned
            last = len(r.name.tokens) - 1
            if last in positions:
                if len(qname.tokens) == len(r.name.tokens):
                    value, how = _order(positions, r.name)  # type: ignore[arg-type]
                elif 0 in positions and len(qname.tokens) > 1 and _in_order(positions):
                    value, how = NAME_DROPPED_MIDDLE, "surname and given name, middle dropped"
                else:
                    value, how = NAME_GIVEN_ONLY, "given name only"
                value += (NAME_TYPO * typos + NAME_MARKS_DIFFER * conflicts
                          + NAME_OTHER_SYLLABLE * other_names)
                best = (value, "name", "{}: {} ≈ {}{}",
                        (how, qname.text, r.name.text, _NameNotes(
                            qname, typos, other_names, conflicts, r.name, variants)))
    for alias in r.aliases:
        aligned = _cached_align(qname, alias, vocabulary, cache)
        if (aligned is not None and aligned[1] == aligned[2] == aligned[3] == 0
                and len(qname.tokens) == len(alias.tokens)
                and (best is None or ALIAS > best[0])):
            best = (ALIAS, "alias", "alias: {} = {}{}",
                    (qname.text, alias.text,
                     _NameNotes(qname, 0, 0, 0, alias, aligned[4], marks=False)))
    if best is None and r.name is not None and not r.aliases:
        best = (NAME_UNRELATED, "name", "name {} unlike {}", (qname.text, r.name.text))
    return best


def _variant_notes(query: _Name, listed: _Name | None, variants: tuple[tuple[int, int], ...]
                   ) -> tuple[tuple[str, str, str, str], ...]:
    """(where, as typed, as listed, what) of each syllable written as another spelling."""
    if not variants or listed is None:
        return ()
    last = len(listed.tokens) - 1
    return tuple(
        ("surname" if li == 0 else "given name" if li == last else "middle name",
         query.tokens[qi].text.capitalize(), listed.tokens[li].text.capitalize(),
         variant_kind(listed.tokens[li].fold))
        for qi, li in variants)


@dataclass(slots=True)
class _NameNotes:
    """The parenthesis after a name reason, formatted only when the reason is shown."""

    query: _Name
    typos: int
    other_names: int
    conflicts: int
    listed: _Name | None = None
    variants: tuple[tuple[int, int], ...] = ()
    """(query, listed) positions of syllables written as another spelling of the name."""
    marks: bool = True

    def __format__(self, spec: str) -> str:
        if not (self.variants or self.typos or self.other_names or self.conflicts
                or self.query.joined or (self.marks and not self.query.marked)):
            return ""  # (the common case: nothing to note)
        notes = [f"{where} {typed} = {listed}: {what}" for where, typed, listed, what
                 in _variant_notes(self.query, self.listed, self.variants)]
        if self.query.joined:
            notes.append("written without spaces")
        if self.typos:
            notes.append(f"{self.typos} typo")
        if self.other_names:
            notes.append(f"{self.other_names} syllable(s) one letter off another name")
        if self.conflicts:
            notes.append(f"{self.conflicts} syllable(s) with other marks")
        if self.marks and not self.query.marked:
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
