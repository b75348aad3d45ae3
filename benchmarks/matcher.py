"""Matcher performance: (a) the engine on a 1,000,000-entry watchlist, (b) the stream.

    python benchmarks/matcher.py engine [--entries 1000000] [--queries 20000]
    python benchmarks/matcher.py stream [--events 300000]

(a) Builds a synthetic watchlist with Vietnamese name statistics (Nguyễn ~38 %, a few
    hundred given names, birth years 1950-2009, CCCD/CMND ids, plates), reports index
    build time and memory, then queries/s on one core for a realistic mix (most reports
    match nothing, as with plate readers; some are listed subjects typed with variations),
    beside a brute-force rapidfuzz scan of the same names (ratio). Best of three passes.
    Targets (issue 4): >= 20,000 queries/s, build <= 60 s, <= 2 GiB.
(b) Sends sightings through the embedded broker to a real matcher worker and measures
    events/s, beside a raw aiokafka consumer reading and decoding the same topic (ratio).
    Target: >= 0.25 of the raw rate.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from datetime import UTC, date, datetime

import psutil
from rich.console import Console
from rich.progress import track
from synthetic import query_mix, synthetic_watchlist

from services.matcher.app import calm_garbage_collector
from services.matcher.engine import MatchingEngine
from services.matcher.normalize import fold_name
from shared.events import Subject, WatchlistEntry

console = Console(stderr=True)
AT = datetime(2026, 11, 22, tzinfo=UTC)

def engine_benchmark(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    entries = synthetic_watchlist(args.entries, rng)
    queries = query_mix(entries, args.queries, rng)
    process = psutil.Process(os.getpid())
    gc.collect()
    before = process.memory_info().rss
    started = time.perf_counter()
    engine = MatchingEngine()
    engine.load(track(entries, description="indexing", console=console))
    build_seconds = time.perf_counter() - started
    names = [fold_name(e.full_name) for e in entries if e.full_name]
    del entries
    gc.collect()
    engine_bytes = process.memory_info().rss - before
    calm_garbage_collector()  # as the matcher worker does after loading its watchlist

    engine.match(queries[0], at=AT)
    # Three passes over the same reports; the best one is reported (like `timeit`), since
    # other load on the machine only ever slows a pass down. Every match is used as the
    # stream matcher uses it (entry, score and reasons), so nothing is left undone.
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        alerts = candidates = 0
        for query in queries:
            matches = engine.match(query, at=AT)
            alerts += bool(matches)
            for match in matches:
                _ = match.entry.entry_id, match.score, match.reasons
        rates.append(len(queries) / (time.perf_counter() - started))
    rate = max(rates)
    query_seconds = len(queries) / rate
    for query in queries[:2000]:
        candidates += len(engine.candidates(query))

    from rapidfuzz import fuzz
    from rapidfuzz import process as rf_process

    sample = [fold_name(q.name) for q in queries if q.name][:20]
    started = time.perf_counter()
    for name in sample:
        rf_process.extractOne(name, names, scorer=fuzz.ratio, score_cutoff=85)
    brute_rate = len(sample) / (time.perf_counter() - started)

    print(f"watchlist          : {args.entries:,} entries, built in {build_seconds:.1f} s "
          f"(target <= 60 s), engine memory {engine_bytes / 2**30:.2f} GiB (target <= 2 GiB)")
    print(f"engine queries     : {len(queries):,} in {query_seconds:.2f} s = {rate:,.0f} queries/s "
          f"on one core, best of 3 passes ({', '.join(f'{r:,.0f}' for r in rates)}) "
          f"(target >= 20,000; ratio {rate / 20_000:.2f}); "
          f"{alerts / len(queries):.1%} raised an alert; "
          f"{candidates / 2000:.1f} candidates scored per query")
    print(f"brute-force scan   : rapidfuzz extractOne over {len(names):,} names = "
          f"{brute_rate:.1f} queries/s ({1 / brute_rate * 1000:.0f} ms each); "
          f"engine is {rate / brute_rate:,.0f}x faster")
    if args.lookalikes:
        worst_case(engine, queries, args.lookalikes, random.Random(11))


def worst_case(engine: MatchingEngine, queries: list[Subject], n: int,
               rng: random.Random) -> None:
    """The flood of issue 11: `n` copies of one listed person (name, birth year, id, plate)
    by 10 units, added to the watchlist; then reports of him (id, name and year, variants)
    mixed with the usual ones, timed one by one. Target: no query slower than 5 ms, and the
    real entry always found. Beside it, for scale, a report that genuinely matches 1,000
    distinct namesakes (same surname, given name and year, other middle names)."""
    real = WatchlistEntry(entry_id="REAL", owner_unit="CA-2", category="wanted_person",
                          full_name="Nguyễn Văn Hùng", birth_year=1991,
                          national_id="089091004217", plates=("67B1-234.56",))
    copies = [real.model_copy(update={"entry_id": f"COPY-{i}", "owner_unit": f"CA-9{i % 10}"})
              for i in range(n)]
    started = time.perf_counter()
    engine.load([real, *copies])
    added = time.perf_counter() - started
    own = [Subject.model_construct(national_id="089091004217"),
           Subject.model_construct(name="NGUYEN VAN HUNG", birth_year=1991),
           Subject.model_construct(name="Văn Hùng Nguyễn", birth_year=1992),
           Subject.model_construct(name="Nguyễn Văn Hùg", birth_year=1991,
                                   birth_date=None),
           Subject.model_construct(plate="67B123456"),
           Subject.model_construct(plate="67B1234S6"),
           Subject.model_construct(name="Nguyen Van Hung", national_id="089091004217")]
    mix = [rng.choice(own) if i % 2 else queries[i % len(queries)] for i in range(4000)]
    times, missed, mine = [], 0, 0
    for subject in mix:
        started = time.perf_counter()
        found = engine.match(subject, at=AT)
        times.append(time.perf_counter() - started)
        if subject in own:
            mine += 1
            missed += "REAL" not in {m.entry.entry_id for m in found}
    times.sort()
    slowest, p99 = times[-1] * 1000, times[int(0.99 * len(times))] * 1000
    print(f"worst case (flood) : {n:,} copies of one person by 10 units, added in {added:.1f} s; "
          f"{len(mix):,} queries, {mine:,} of him: slowest {slowest:.2f} ms, p99 {p99:.2f} ms "
          f"(target: none over 5 ms: {'met' if slowest <= 5 else 'NOT met'}); the real entry "
          f"missed {missed} of {mine} times")
    cousins = [WatchlistEntry(entry_id=f"COUSIN-{i}", owner_unit="CA-1",
                              category="wanted_person", full_name=f"Trần {m} Bình",
                              birth_year=1977, national_id=f"0790770{i:05d}")
               for i, m in enumerate(f"{a}{b}{c}" for a in "abcdefghij" for b in "klmnopqrst"
                                     for c in "uvwxyzabcd")]
    engine.load(cousins)
    ambiguous = Subject.model_construct(name="Trần Bình", birth_year=1977)
    engine.match(ambiguous, at=AT)
    started = time.perf_counter()
    alerts = len(engine.match(ambiguous, at=AT))
    print(f"for scale          : one report matching {alerts:,} distinct namesakes (1,000 "
          f"real alerts to build): {(time.perf_counter() - started) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    engine = sub.add_parser("engine")
    engine.add_argument("--entries", type=int, default=1_000_000)
    engine.add_argument("--queries", type=int, default=20_000)
    engine.add_argument("--lookalikes", type=int, default=10_000,
                        help="Add the worst case: a person with this many look-alikes (0: no).")
    stream = sub.add_parser("stream")
    stream.add_argument("--events", type=int, default=300_000)
    args = parser.parse_args()
    if args.what == "engine":
        engine_benchmark(args)
    else:
        from stream_matcher import stream_benchmark

        stream_benchmark(args)


if __name__ == "__main__":
    _ = date  # keep the import for type readers
    main()
