"""Normalisation of what officers type: Vietnamese names, national ids, number plates.

Names: NFC, the eth `Ð` (U+00D0) read as `Đ`, case and spacing folded. Each syllable is
kept in three forms:
- `fold`: plain ASCII (`Hùng` -> `hung`), for comparing with text typed without marks;
- `shape`: tone marks removed, vowel shapes kept (`Hùng` -> `hung`, `Hưng` -> `hưng`);
- `tone`: which of the five tone marks the syllable carries, wherever it was placed,
  so old-style `Hoà`/`Thuỷ` equal new-style `Hòa`/`Thủy`.
Two marked syllables with the same fold but another shape or tone are different names
(Hùng vs Hưng): evidence against. A syllable typed without marks is compared by fold.

Variants are knowledge, not typos: spellings that write one name (`VARIANTS`: the southern
surnames Huỳnh for Hoàng and Võ for Vũ, southern given names Phước for Phúc, Nhựt for Nhật,
Huê for Hoa, and i for y after a consonant, Lí for Lý) share one canonical fold, used by
the index and the comparisons alike; `written` keeps the fold as typed, for the reason a
duty officer reads ("surname Huỳnh = Hoàng (southern variant)"). A variant holds only with
its tone (Huê is Hoa; Huệ and Hòa are other names): `variant_conflict`.

Everything here is table-driven (`str.translate`), since it runs for every report.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

_TONE_MARKS = {"\u0300": "2", "\u0301": "1", "\u0303": "3", "\u0309": "4", "\u0323": "5"}
_SHAPE_MARKS = {"\u0302", "\u0306", "\u031b"}  # circumflex, breve, horn


def _tables() -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    strip_tone: dict[int, str] = {}
    tone_only: dict[int, str] = {}
    fold: dict[int, str] = {}
    for code in range(0x00C0, 0x1EFF + 1):
        char = chr(code)
        decomposed = unicodedata.normalize("NFD", char.lower())
        base = decomposed[0]
        if not ("a" <= base <= "z") and base not in "đ":
            continue
        marks = decomposed[1:]
        if any(m not in _TONE_MARKS and m not in _SHAPE_MARKS for m in marks):
            continue
        shape = unicodedata.normalize("NFC", base + "".join(m for m in marks if m in _SHAPE_MARKS))
        tone = "".join(_TONE_MARKS[m] for m in marks if m in _TONE_MARKS)
        strip_tone[code] = shape
        tone_only[code] = tone
        fold[code] = "d" if base == "đ" else base
    for code in range(ord("a"), ord("z") + 1):
        tone_only[code] = ""
    for char in "đĐ":
        strip_tone[ord(char)] = "đ"
        fold[ord(char)] = "d"
    return strip_tone, tone_only, fold


_STRIP_TONE, _TONE_ONLY, _FOLD = _tables()
_ETH = str.maketrans({"Ð": "Đ", "ð": "đ"})
_NON_NAME = re.compile(r"[^\w\s]|\d|_")


VARIANTS: dict[str, tuple[tuple[str, ...], str, str]] = {
    # canonical fold: (other spellings' folds, what they are, the tone they share)
    "hoang": (("huynh",), "southern variant", "2"),  # Hoàng = Huỳnh
    "vu": (("vo",), "southern variant", "3"),  # Vũ = Võ
    "phuc": (("phuoc",), "southern variant", "1"),  # Phúc = Phước
    "nhat": (("nhut",), "southern variant", "5"),  # Nhật = Nhựt
    "hoa": (("hue",), "southern variant", ""),  # Hoa = Huê (Huệ, Hòa are other names)
}
"""Spellings of one name, which hold only with their tone (`_TONE_MARKS` digits, "" for
none). The i/y spellings (`IY_INITIALS` + i = + y, any tone) come on top."""

IY_INITIALS = ("h", "k", "l", "m", "n", "qu", "s", "t", "th", "v")
"""Consonants after which a final i and y write one name (Lí = Lý, Quí = Quý, Vi = Vy)."""
IY_KIND = "i/y spelling"

_CANONICAL: dict[str, str] = {other: canonical for canonical, (others, _, _) in VARIANTS.items()
                              for other in others}
_CANONICAL.update({f"{initial}i": f"{initial}y" for initial in IY_INITIALS})
_SPELLINGS: dict[str, tuple[str, ...]] = {}
for _written, _canonical in _CANONICAL.items():
    _SPELLINGS[_canonical] = (*_SPELLINGS.get(_canonical, (_canonical,)), _written)


def canonical_fold(fold: str) -> str:
    """The fold every spelling of a name shares (`huynh` -> `hoang`, `li` -> `ly`)."""
    return _CANONICAL.get(fold, fold)


def spellings(canonical: str) -> tuple[str, ...]:
    """Every written fold of a canonical fold, itself first."""
    return _SPELLINGS.get(canonical, (canonical,))


def variant_kind(canonical: str) -> str:
    return VARIANTS[canonical][1] if canonical in VARIANTS else IY_KIND


def variant_conflict(a: Syllable, b: Syllable) -> bool:
    """Two spellings of one canonical fold (`a.written != b.written`) whose marks say they
    are not that name: a marked side off the variant's tone (Huệ is not Huê, so not Hoa;
    Hòa is not Hoa), or two marked sides of different tones (Lí, Lỳ)."""
    listed = VARIANTS.get(a.fold)
    if listed is None:
        return a.marked and b.marked and a.tone != b.tone
    tone = listed[2]
    return (a.marked and a.tone != tone) or (b.marked and b.tone != tone)


@dataclass(frozen=True, slots=True)
class Syllable:
    fold: str
    """Canonical: one for every spelling of the name (`VARIANTS`)."""
    shape: str
    tone: str
    marked: bool
    """False when typed without any diacritic (then only `fold` is meaningful)."""
    written: str
    """The fold as typed (`huynh` where `fold` is `hoang`)."""
    text: str
    """The syllable as typed, lower case NFC."""
    spelled: bool
    """Its name has other spellings (`VARIANTS`): only then do `written` and spellings
    matter when comparing."""


@lru_cache(maxsize=200_000)
def syllable(token: str) -> Syllable:
    """One lower-case NFC syllable in its forms (cached: names repeat a lot)."""
    shape = token.translate(_STRIP_TONE)
    written = shape.translate(_FOLD)
    tone = token.translate(_TONE_ONLY)
    fold = _CANONICAL.get(written, written)
    return Syllable(fold, shape, tone, written != token, written, token, fold in _SPELLINGS)


def name_tokens(name: str) -> tuple[Syllable, ...]:
    text = unicodedata.normalize("NFC", name)
    if "Ð" in text or "ð" in text:  # (a translation table reads every character: slow)
        text = text.translate(_ETH)
    text = text.lower()
    if not text.replace(" ", "").isalpha():  # letters and spaces only: nothing to remove
        text = _NON_NAME.sub(" ", text)
    return tuple([syllable(token) for token in text.split()])


def fold_name(name: str) -> str:
    return " ".join(s.fold for s in name_tokens(name))


def same_syllable(a: Syllable, b: Syllable) -> bool | None:
    """True: same (or spellings of one name); False: same letters, different marks
    (Hùng/Hưng), or variants with different tones (Hoa/Huệ); None: different."""
    if a.fold != b.fold:
        return None
    if a.written != b.written:
        return not variant_conflict(a, b)
    if a.marked and b.marked:
        return a.shape == b.shape and a.tone == b.tone
    return True


def segment(token: str, known: Callable[[str], int | None], longest: int = 8
            ) -> tuple[str, ...] | None:
    """A token written without spaces (`nguyenvanhung`, `sarươl`, `hly`) cut into the fewest
    known syllables (most frequent first when there are several ways), as pieces of the
    token itself (marks kept); None when it cannot be cut into two or more.
    `known(fold)` is how often a canonical fold is listed (0: not)."""
    folds = syllable(token).written
    n = len(folds)
    if n != len(token):  # not one letter per character (should not happen in NFC)
        return None
    best: list[tuple[int, float, int] | None] = [None] * (n + 1)  # (pieces, -weight, start)
    best[0] = (0, 0.0, 0)
    for end in range(1, n + 1):
        for start in range(max(0, end - longest), end):
            before = best[start]
            if before is None:
                continue
            count = known(canonical_fold(folds[start:end]))
            if not count:
                continue
            candidate = (before[0] + 1, before[1] - math.log(count + 1), start)
            if best[end] is None or candidate[:2] < best[end][:2]:  # type: ignore[index]
                best[end] = candidate
    if best[n] is None or best[n][0] < 2:  # type: ignore[index]
        return None
    pieces: list[str] = []
    end = n
    while end:
        start = best[end][2]  # type: ignore[index]
        pieces.append(token[start:end])
        end = start
    return tuple(reversed(pieces))


def one_edit_apart(a: str, b: str) -> bool:
    """Levenshtein distance 1, or one adjacent transposition (Thanh/Thnah)."""
    if a == b:
        return False
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diffs = [i for i in range(la) if a[i] != b[i]]
        if len(diffs) == 1:
            return True
        return (len(diffs) == 2 and diffs[1] == diffs[0] + 1
                and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    if la > lb:
        a, b = b, a
    for i in range(len(a)):
        if a[i] != b[i]:
            return a[i:] == b[i + 1:]
    return True


def deletions(word: str) -> set[str]:
    """The word with one letter removed, each way (the symmetric-delete neighbourhood)."""
    return {word[:i] + word[i + 1:] for i in range(len(word))}


# ------------------------------------------------------------------------ national ids

_NOT_DIGIT = re.compile(r"\D")


def id_digits(raw: str) -> str:
    if raw.isdecimal():  # nothing `\D` would remove (it matches what `isdecimal` refuses)
        return raw
    return _NOT_DIGIT.sub("", raw)


_CENTURIES = {"0": 1900, "1": 1900, "2": 2000, "3": 2000, "4": 2100, "5": 2100}


def cccd_birth_year(digits: str) -> int | None:
    """A 12-digit CCCD encodes century+gender (4th digit) and the birth year (5th-6th)."""
    if len(digits) != 12:
        return None
    century = _CENTURIES.get(digits[3])
    return None if century is None else century + int(digits[4:6])


# ----------------------------------------------------------------------------- plates

_NOT_PLATE = re.compile(r"[^0-9A-Z]")
# Characters a camera may read for one another, mapped to one representative each.
_OCR_CLASS = str.maketrans({"D": "0", "O": "0", "Q": "0", "B": "8", "S": "5", "Z": "2",
                            "G": "6", "T": "1", "I": "1", "L": "1", "A": "4"})


def compact_plate(raw: str) -> str:
    if raw.isascii() and (upper := raw.upper()).isalnum():
        return upper  # (NFKC leaves ASCII as it is; only [0-9A-Z] are left)
    return _NOT_PLATE.sub("", unicodedata.normalize("NFKC", raw).upper())


def ocr_class(compact: str) -> str:
    return compact.translate(_OCR_CLASS)
