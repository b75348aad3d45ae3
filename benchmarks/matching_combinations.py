"""Recall of the matcher on combined variations, and false alerts on namesakes.

    python benchmarks/matching_combinations.py [WATCHLIST.jsonl] [--per-combination 300]

The development set varies one thing per query; held-back data combines them. This script
takes listed persons from the watchlist, applies two or three variations at once (no
diacritics, given name first, dropped middle name, NFD, old tone placement, eth, one
typo, age-derived year off by one, upper case) and reports the recall per combination,
then makes namesake negatives (same name, birth year 2+ apart, other or no id) and
reports their false alerts. Deterministic (seeded).
"""

from __future__ import annotations

import argparse
import itertools
import random
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

from services.matcher.engine import MatchingEngine
from services.matcher.evaluate import load_watchlist
from services.matcher.normalize import fold_name
from shared.events import Subject

ROOT = Path(__file__).resolve().parent.parent

AT = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_WATCHLIST = ROOT.parent / "shared" / "data" / "matching-dev" / "watchlist.jsonl"


def ascii_name(name: str, rng: random.Random) -> str:
    return " ".join(t.capitalize() for t in fold_name(name).split())


def given_first(name: str, rng: random.Random) -> str:
    tokens = name.split()
    return " ".join([tokens[-1], *tokens[1:-1], tokens[0]])


def drop_middle(name: str, rng: random.Random) -> str:
    tokens = name.split()
    return " ".join([tokens[0], tokens[-1]]) if len(tokens) > 2 else name


def nfd(name: str, rng: random.Random) -> str:
    return unicodedata.normalize("NFD", name)


def old_tones(name: str, rng: random.Random) -> str:
    for new, old in (("òa", "oà"), ("óa", "oá"), ("ỏa", "oả"), ("õa", "oã"), ("ọa", "oạ"),
                     ("ủy", "uỷ"), ("úy", "uý"), ("ùy", "uỳ"), ("ũy", "uỹ"), ("ụy", "uỵ"),
                     ("òe", "oè"), ("óe", "oé"), ("ỏe", "oẻ")):
        name = name.replace(new, old)
    return name


def eth(name: str, rng: random.Random) -> str:
    return name.replace("Đ", "Ð")


def upper(name: str, rng: random.Random) -> str:
    return name.upper()


def typo(name: str, rng: random.Random) -> str:
    tokens = name.split()
    i = rng.randrange(len(tokens))
    word = tokens[i]
    if len(word) < 3:
        return name
    j = rng.randrange(1, len(word))
    kind = rng.choice(("drop", "double", "swap"))
    if kind == "drop":
        word = word[:j] + word[j + 1:]
    elif kind == "double":
        word = word[:j] + word[j] + word[j:]
    elif j < len(word) - 1:
        word = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    tokens[i] = word
    return " ".join(tokens)


NAME_VARIATIONS = {f.__name__: f for f in (ascii_name, given_first, drop_middle, nfd, old_tones,
                                           eth, upper, typo)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("watchlist", nargs="?", type=Path, default=DEFAULT_WATCHLIST)
    parser.add_argument("--per-combination", type=int, default=300)
    args = parser.parse_args()
    entries = load_watchlist(args.watchlist)
    engine = MatchingEngine()
    engine.load(entries)
    people = [e for e in entries if e.full_name and e.birth_year]
    rng = random.Random(20261122)

    combos = [c for n in (2, 3) for c in itertools.combinations(NAME_VARIATIONS, n)
              if not {"ascii_name", "nfd"} <= set(c) and not {"ascii_name", "old_tones"} <= set(c)]
    worst = 1.0
    print(f"{'combination':45s} {'+year':>6s} {'year±1':>7s}")
    total = found_total = 0
    for combo in combos:
        rates = []
        for year_off in (0, 1):
            found = 0
            sample = rng.sample(people, args.per_combination)
            for entry in sample:
                name = entry.full_name
                for variation in combo:
                    name = NAME_VARIATIONS[variation](name, rng)
                year = entry.birth_year + (rng.choice((-1, 1)) if year_off else 0)
                hits = engine.match(Subject.model_construct(name=name, birth_year=year), at=AT)
                found += any(m.entry.entry_id == entry.entry_id for m in hits)
            rates.append(found / len(sample))
            total += len(sample)
            found_total += found
        worst = min(worst, *rates)
        print(f"{' + '.join(combo):45s} {rates[0]:6.3f} {rates[1]:7.3f}")
    print(f"overall recall on combinations: {found_total / total:.3f} (worst cell {worst:.3f})")

    alerts = 0
    sample = rng.sample(people, min(2000, len(people)))
    for entry in sample:
        year = entry.birth_year + rng.choice((-1, 1)) * rng.randint(2, 15)
        name = rng.choice((lambda n, r: n, ascii_name, given_first))(entry.full_name, rng)
        other_id = f"0{rng.randint(10, 96):02d}{rng.randint(0, 9)}{year % 100:02d}{rng.randint(0, 999999):06d}"
        subject = Subject.model_construct(name=name, birth_year=year,
                                          national_id=rng.choice((None, other_id)))
        alerts += any(m.entry.entry_id == entry.entry_id
                      for m in engine.match(subject, at=AT))
    print(f"namesake negatives (year 2+ apart, other or no id): "
          f"{1000 * alerts / len(sample):.1f} false alerts per 1,000")


if __name__ == "__main__":
    main()
