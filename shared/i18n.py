"""What people read, in Vietnamese or English, from one message catalogue.

The catalogue is a gettext `.po` file (`shared/locale/vi/LC_MESSAGES/giapranh.po`, read
with Babel): each `msgid` is an English text as the code writes it, with its variable parts
as `{placeholders}` (named, or `{}` in order), and its `msgstr` the Vietnamese. English is
what the code writes, so English needs no catalogue.

Texts are translated where they are shown, not where they are made: a match reason, a
"why you", a history step or an error is stored and sent in English (the record's own
language, as the events already carry it), and a reader asks for Vietnamese. A text is
looked up whole, then against the catalogue's templates (`territory borders {unit}, where
the subject was seen`): the parts a template leaves variable are translated too when the
catalogue has them as texts of their own (`given name only`, `southern variant`), and a
`{notes}` placeholder is an optional parenthesised list, translated item by item. Only the
code's own words are translated so: a placeholder named for somebody's data (`{unit}`,
`{title}`, `{as_typed}`, `{count}`) keeps its value as written, and parts are followed three
levels deep, no further. Texts joined by "; " (a history step) are translated part by part.
A text the catalogue does not know stays as it is, in English: never an error, never an
empty string.

`tests/test_i18n.py` holds the catalogue to the code: every refusal the services raise,
every reason the targeting rules and workflow write, and every reason the matcher gives on
the development sets is translated, with the same placeholders.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from babel.core import Locale, UnknownLocaleError, negotiate_locale
from babel.messages.pofile import read_po

Language = Literal["vi", "en"]
LANGUAGES: tuple[Language, ...] = ("vi", "en")
CATALOGUE = Path(__file__).parent / "locale" / "vi" / "LC_MESSAGES" / "giapranh.po"


MAX_TEXT = 2000
"""Longer texts are left as they are (no reason or message comes near it): matching a
template is polynomial in the text's length, and a hostile name must not buy CPU."""

_DEPTH = 3
"""How deep a text's parts are translated: a template's parts may be templates themselves
(`escalated: {detail}` holding `... within {minutes} ...` holding `{minutes:g} min`), the
parts of the third level only whole texts of the catalogue."""


def N_(message: str) -> str:
    """Marks an English text (or template) for the catalogue; returns it unchanged."""
    return message


_FORMATTER = string.Formatter()


def placeholders(template: str) -> list[str]:
    """The placeholder names of a template, in order (`{}` numbered from 0)."""
    names, position = [], 0
    for _, name, _, _ in _FORMATTER.parse(template):
        if name is None:
            continue
        if name == "":
            name, position = str(position), position + 1
        names.append(name)
    return names


_PLACEHOLDERS = {
    "notes": r"(?: \(.+\))?",  # an optional parenthesised list
    "typed": r"[^\s()]+", "listed": r"[^\s()]+",  # one syllable
    "what": r"[^(),]+",
    "count": r"\d+", "level": r"\d+", "recipients": r"\d+", "bearing": r"\d+",
}
"""What a placeholder may stand for, by its name (anything, by default)."""
_TRANSLATED = frozenset({"what", "detail", "severity", "minutes", "age", "field"})
"""The named placeholders whose values are the code's own words, translated in turn; every
other named one (a unit, a title, a name as typed or listed, a count) is somebody's data and
stays as written. `{}` placeholders are translated (a state, a role, a nested message)."""
_DECIMALS = frozenset({"distance_km", "radius_km"})
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _unbrace(text: str) -> str:
    return text.replace("{{", "{").replace("}}", "}")


class _Template:
    __slots__ = ("names", "pattern", "prefix", "target")

    def __init__(self, msgid: str, msgstr: str):
        parts, self.names, position = [], [], 0
        for literal, name, _, _ in _FORMATTER.parse(msgid):
            parts.append(re.escape(literal))
            if name is None:
                continue
            if name == "":
                name, position = str(position), position + 1
            self.names.append(name)
            parts.append(f"(?P<p{len(self.names) - 1}>{_PLACEHOLDERS.get(name, '.+?')})")
        self.pattern = re.compile("".join(parts), re.DOTALL)
        self.prefix = next(_FORMATTER.parse(msgid))[0]
        # The translation with its placeholders renumbered by name, format specs dropped
        # (the captured values are text already).
        self.target: list[tuple[str, str | None]] = []
        position = 0
        for literal, name, _, _ in _FORMATTER.parse(msgstr):
            if name == "":
                name, position = str(position), position + 1
            self.target.append((literal, name))


class Catalogue:
    def __init__(self, path: Path = CATALOGUE):
        with path.open("rb") as po:
            catalog = read_po(po, locale="vi")
        self.texts: dict[str, str] = {}
        templates = []
        for message in catalog:
            if not message.id or not message.string or message.fuzzy:
                continue
            msgid, msgstr = str(message.id), str(message.string)
            if placeholders(msgid):
                templates.append(_Template(msgid, msgstr))
            else:  # (a text with no placeholder: `{{` and `}}` are its braces)
                self.texts[_unbrace(msgid)] = _unbrace(msgstr)
        # The most specific first: longest fixed start, then most fixed text.
        templates.sort(key=lambda t: (-len(t.prefix), -len(t.pattern.pattern)))
        self.templates = templates
        self.known = {str(m.id) for m in catalog if m.id and m.string and not m.fuzzy}

    def lookup(self, text: str, depth: int = 0) -> str | None:
        """The Vietnamese of `text`, or None when the catalogue does not know it."""
        found = self.texts.get(text)
        if found is not None or depth >= _DEPTH:
            return found
        for template in self.templates:
            if not text.startswith(template.prefix):
                continue
            matched = template.pattern.fullmatch(text)
            if matched is None:
                continue
            values = {name: self._part(name, matched.group(f"p{index}"), depth)
                      for index, name in enumerate(template.names)}
            return "".join(literal + (values.get(name, "") if name is not None else "")
                           for literal, name in template.target)
        if depth == 0 and "; " in text:
            parts = text.split("; ")
            translated = [self.lookup(part) for part in parts]  # (none holds "; ")
            if any(t is not None for t in translated):
                return "; ".join(t if t is not None else p
                                 for t, p in zip(translated, parts, strict=True))
        return None

    def _part(self, name: str, value: str, depth: int) -> str:
        if name == "notes":
            if not value:
                return ""
            items = value[2:-1].split(", ")
            return " (" + ", ".join(self.lookup(item, depth + 1) or item
                                    for item in items) + ")"
        if _ISO_DATE.fullmatch(value):
            return f"{value[8:10]}/{value[5:7]}/{value[:4]}"  # (a birth date: 22/11/1980)
        if name in _DECIMALS:
            return value.replace(".", ",")  # (12,3 km: the Vietnamese decimal comma)
        if name.isdigit() or name in _TRANSLATED:
            return self.lookup(value, depth + 1) or value
        return value


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    return Catalogue()


@lru_cache(maxsize=16384)
def _vi(text: str) -> str:
    found = catalogue().lookup(text)
    return text if found is None else found


def translate(text: str, language: str) -> str:
    """`text` (English, as the code writes it) in `language`."""
    if language != "vi" or not text or len(text) > MAX_TEXT:
        return text
    try:
        return _vi(text)
    except (RecursionError, re.error):  # (never: but a reader gets the English, not a 500)
        return text


def translate_all(texts: Iterable[str], language: str) -> list[str]:
    return [translate(text, language) for text in texts]


def negotiate(accept_language: str | None, default: Language = "en") -> Language:
    """The language to answer in, from an `Accept-Language` header (`vi-VN,vi;q=0.9`)."""
    if not accept_language:
        return default
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate(accept_language.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, index, tag.strip()))
    preferred = []
    for _, _, tag in sorted(ranked):
        if tag == "*":
            preferred.append(default)
            continue
        try:
            preferred.append(Locale.parse(tag, sep="-").language)
        except (ValueError, UnknownLocaleError):
            continue
    chosen = negotiate_locale(preferred, list(LANGUAGES))
    return chosen if chosen in LANGUAGES else default  # type: ignore[return-value]
