"""No index bucket is ever skipped: copies of a listed person, however many and whoever
lists them, never hide another unit's entry, and cost one scoring per identity."""

from datetime import UTC, datetime

import pytest

from services.matcher.engine import COPIES_PER_OWNER, MAX_BUCKET, MatchingEngine
from shared.events import Subject, WatchlistEntry

AT = datetime(2026, 12, 1, tzinfo=UTC)
REAL = WatchlistEntry(entry_id="REAL", owner_unit="CA-2", category="wanted_person",
                      full_name="Nguyễn Văn Hùng", birth_year=1991,
                      national_id="089091004217", plates=("67B1-234.56",))


def copies(n: int, owner: str = "CA-1", **changes: object) -> list[WatchlistEntry]:
    return [REAL.model_copy(update={"entry_id": f"COPY-{owner}-{i}", "owner_unit": owner,
                                    **changes}) for i in range(n)]


def engine_with(*groups: list[WatchlistEntry]) -> MatchingEngine:
    engine = MatchingEngine()
    for group in groups:
        engine.load(group)
    return engine


def real_found(engine: MatchingEngine, subject: Subject) -> bool:
    return "REAL" in {m.entry.entry_id for m in engine.match(subject, at=AT)}


@pytest.mark.parametrize("n", [MAX_BUCKET + 1, 1000, 10_000])
@pytest.mark.parametrize("subject", [
    Subject(national_id="089 091 004 217"),
    Subject(name="NGUYEN VAN HUNG", birth_year=1991),
    Subject(name="Văn Hùng Nguyễn", birth_year=1992),  # surname last, year one off
    Subject(plate="67B123456"),
    Subject(plate="67B1234S6"),  # a camera's 5/S confusion
], ids=["id", "name+year", "reordered", "plate", "plate-ocr"])
def test_copies_from_one_unit_never_hide_another_units_entry(n, subject):
    # Listed before and after the copies: the order of filing must not matter.
    assert real_found(engine_with(copies(n), [REAL]), subject)
    assert real_found(engine_with([REAL], copies(n)), subject)


def test_a_query_takes_a_few_copies_per_unit_and_counts_the_rest():
    engine = engine_with(copies(1000), copies(10, owner="CA-3"), [REAL])
    found = engine.match(Subject(national_id="089091004217"), at=AT)
    by_unit: dict[str, int] = {}
    for match in found:
        by_unit[match.entry.owner_unit] = by_unit.get(match.entry.owner_unit, 0) + 1
    assert by_unit == {"CA-1": COPIES_PER_OWNER, "CA-3": COPIES_PER_OWNER, "CA-2": 1}
    assert engine.last_omitted == (1000 - COPIES_PER_OWNER) + (10 - COPIES_PER_OWNER)
    assert engine.last_crowds and max(engine.last_crowds) >= 1000
    assert engine.crowds_met >= 1
    # One scoring per identity, not per copy.
    assert engine.last_candidates <= 10


def test_distinct_people_in_a_crowd_are_each_scored():
    """A crowd of 400 different people under one key (the same surname, given name and
    year, other middle names) is scored person by person: the one sought is found."""
    middles = [f"Văn{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(400)]
    people = [WatchlistEntry(entry_id=f"P{i}", owner_unit="CA-1", category="wanted_person",
                             full_name=f"Nguyễn {m} Hùng", birth_year=1991,
                             national_id=f"0890910{i:05d}") for i, m in enumerate(middles)]
    engine = engine_with(people)
    sought = people[237]
    found = engine.match(Subject(national_id=sought.national_id), at=AT)
    assert [m.entry.entry_id for m in found] == ["P237"]
    by_name = engine.match(Subject(name=sought.full_name, birth_year=1991), at=AT)
    assert "P237" in {m.entry.entry_id for m in by_name}


def test_cancelling_copies_shrinks_the_crowd_and_matching_goes_on():
    flood = copies(MAX_BUCKET + 50)
    engine = engine_with(flood, [REAL])
    for entry in flood:
        assert engine.cancel(entry.entry_id, entry.version + 1)
    found = engine.match(Subject(national_id="089091004217"), at=AT)
    assert [m.entry.entry_id for m in found] == ["REAL"]
    assert engine.last_crowds == []


def test_with_a_crowd_the_index_still_agrees_with_a_full_scan_up_to_the_copies_cap():
    engine = engine_with(copies(MAX_BUCKET + 10), [REAL],
                         copies(2, owner="CA-9", birth_year=1990))
    for subject in (Subject(national_id="089091004217"),
                    Subject(name="Nguyen Van Hung", birth_year=1990),
                    Subject(name="Nguyễn Văn Hùng", birth_year=1991, plate="67B123456")):
        indexed = {m.entry.entry_id for m in engine.match(subject, at=AT)}
        scanned = {m.entry.entry_id for m in engine.scan(subject, at=AT)}
        assert indexed <= scanned
        # What the index leaves out is only copies over the cap of their unit.
        left_out = scanned - indexed
        assert all(e.startswith("COPY-CA-1-") for e in left_out)
        assert len([e for e in indexed if e.startswith("COPY-CA-1-")]) == COPIES_PER_OWNER
