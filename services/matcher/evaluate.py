"""Evaluation harness: `python -m services.matcher.evaluate WATCHLIST.jsonl QUERIES.jsonl`.

Runs the production engine with its production threshold over the files described in
../shared/MATCHING.md and prints one JSON line per alert it would raise:
{"query_id", "entry_id", "score", "reasons"}. Nothing else goes to stdout; logs and
progress go to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from services.matcher.engine import MatchingEngine
from shared.events import Subject, WatchlistEntry

EVALUATION_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""Validity is not part of the contract: every listed entry is valid at this instant."""


def load_watchlist(path: Path) -> list[WatchlistEntry]:
    entries = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                record = json.loads(line)
                record.setdefault("owner_unit", "UNKNOWN")
                record["owner_unit"] = _unit_code(record["owner_unit"])
                record["aliases"] = tuple(record.get("aliases") or ())
                record["plates"] = tuple(record.get("plates") or ())
                try:
                    entries.append(WatchlistEntry.model_validate(record))
                except ValueError as exc:
                    print(f"{path}:{number}: skipped: {exc}", file=sys.stderr)
    return entries


def _unit_code(raw: str) -> str:
    code = "".join(c for c in raw.upper() if c.isalnum() or c == "-")
    return code if len(code) >= 2 and code[0].isalpha() else f"U-{code or 'X'}"


def query_subject(record: dict[str, object]) -> Subject:
    return Subject.model_construct(
        name=record.get("name"), birth_year=record.get("birth_year"),
        birth_date=_date(record.get("birth_date")), national_id=record.get("national_id"),
        plate=record.get("plate"),
    )


def _date(value: object):  # type: ignore[no-untyped-def]
    from datetime import date

    return date.fromisoformat(value) if isinstance(value, str) and value else None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m services.matcher.evaluate WATCHLIST.jsonl QUERIES.jsonl",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    engine = MatchingEngine()
    engine.load(load_watchlist(Path(argv[0])))
    built = time.perf_counter()
    queries = 0
    out = sys.stdout
    with Path(argv[1]).open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            queries += 1
            for match in engine.match(query_subject(record), at=EVALUATION_TIME):
                out.write(json.dumps({
                    "query_id": record["query_id"], "entry_id": match.entry.entry_id,
                    "score": match.score, "reasons": [r.detail for r in match.reasons],
                }, ensure_ascii=False) + "\n")
    done = time.perf_counter()
    print(f"{len(engine)} entries indexed in {built - started:.2f} s; {queries} queries in "
          f"{done - built:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
