"""Normalisation of what officers type: Vietnamese names, national ids, number plates.

Names: NFC, the eth `Ð` (U+00D0) read as `Đ`, case and spacing folded. Each syllable is
kept in three forms:
- `fold`: plain ASCII (`Hùng` -> `hung`), for comparing with text typed without marks;
- `shape`: tone marks removed, vowel shapes kept (`Hùng` -> `hung`, `Hưng` -> `hưng`);
- `tone`: which of the five tone marks the syllable carries, wherever it was placed,
  so old-style `Hoà`/`Thuỷ` equal new-style `Hòa`/`Thủy`.
Two marked syllables with the same fold but another shape or tone are different names
(Hùng vs Hưng): evidence against. A syllable typed without marks is compared by fold.

Everything here is table-driven (`str.translate`), since it runs for every report.
"""

from __future__ import annotations

import re
import unicodedata
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


@dataclass(frozen=True, slots=True)
class Syllable:
    fold: str
    shape: str
    tone: str
    marked: bool
    """False when typed without any diacritic (then only `fold` is meaningful)."""


@lru_cache(maxsize=200_000)
def syllable(token: str) -> Syllable:
    """One lower-case NFC syllable in its three forms (cached: names repeat a lot)."""
    shape = token.translate(_STRIP_TONE)
    fold = shape.translate(_FOLD)
    tone = token.translate(_TONE_ONLY)
    return Syllable(fold, shape, tone, marked=fold != token)


def name_tokens(name: str) -> tuple[Syllable, ...]:
    text = unicodedata.normalize("NFC", name).translate(_ETH).lower()
    return tuple(syllable(token) for token in _NON_NAME.sub(" ", text).split())


def fold_name(name: str) -> str:
    return " ".join(s.fold for s in name_tokens(name))


def same_syllable(a: Syllable, b: Syllable) -> bool | None:
    """True: same; False: same letters, different marks (Hùng/Hưng); None: different."""
    if a.fold != b.fold:
        return None
    if a.marked and b.marked:
        return a.shape == b.shape and a.tone == b.tone
    return True


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
    return _NOT_DIGIT.sub("", raw)


def cccd_birth_year(digits: str) -> int | None:
    """A 12-digit CCCD encodes century+gender (4th digit) and the birth year (5th-6th)."""
    if len(digits) != 12:
        return None
    century = {"0": 1900, "1": 1900, "2": 2000, "3": 2000, "4": 2100, "5": 2100}.get(digits[3])
    return None if century is None else century + int(digits[4:6])


# ----------------------------------------------------------------------------- plates

_NOT_PLATE = re.compile(r"[^0-9A-Z]")
# Characters a camera may read for one another, mapped to one representative each.
_OCR_CLASS = str.maketrans({"D": "0", "O": "0", "Q": "0", "B": "8", "S": "5", "Z": "2",
                            "G": "6", "T": "1", "I": "1", "L": "1", "A": "4"})


def compact_plate(raw: str) -> str:
    return _NOT_PLATE.sub("", unicodedata.normalize("NFKC", raw).upper())


def ocr_class(compact: str) -> str:
    return compact.translate(_OCR_CLASS)
