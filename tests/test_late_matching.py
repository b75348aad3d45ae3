"""Late matching of many entries at once (retrieval) finds what checking each entry
against every report finds."""

import random
from datetime import UTC, datetime, timedelta

from services.matcher.engine import MatchingEngine
from services.matcher.hits import RETRIEVE_LATE_FROM, late_hits, late_hits_of
from shared.events import Place, SightingReported, Subject, WatchlistEntry

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Huỳnh", "Võ"]
MIDDLES = ["Văn", "Thị", "Minh", "Hữu", "Ngọc"]
GIVEN = ["Hùng", "Lan", "Tuấn", "Hoa", "Dũng", "Bình", "Phúc", "Thảo"]


def test_retrieving_late_hits_for_many_entries_finds_what_scoring_each_entry_finds():
    rng = random.Random(5)
    entries = []
    for n in range(3 * RETRIEVE_LATE_FROM):
        name = f"{rng.choice(SURNAMES)} {rng.choice(MIDDLES)} {rng.choice(GIVEN)}"
        entries.append(WatchlistEntry(
            entry_id=f"E{n}", owner_unit=f"CA-{n % 7 + 1}", category="wanted_person",
            full_name=name, birth_year=rng.randint(1970, 2000),
            national_id=f"0790{rng.randint(10**7, 10**8 - 1)}"))
    engine = MatchingEngine()
    engine.load(entries)
    now = datetime.now(UTC)
    reports = []
    for n in range(300):
        listed = rng.choice(entries)
        subject = rng.choice([
            Subject(national_id=listed.national_id),
            Subject(name=listed.full_name.upper(), birth_year=listed.birth_year),
            Subject(name=f"{rng.choice(SURNAMES)} Văn Khách", birth_year=1990),
        ])
        reports.append(SightingReported(occurred_at=now - timedelta(hours=n), subject=subject,
                                        place=Place(unit_code="CA-1"), producer_unit="CA-1"))
    ids = [entry.entry_id for entry in entries]
    retrieved = {(h.source_event_id, h.entry.entry_id) for h in late_hits_of(engine, ids, reports)}
    scored = {(h.source_event_id, h.entry.entry_id)
              for entry_id in ids for h in late_hits(engine, entry_id, reports)}
    assert len(scored) > 100
    assert retrieved == scored
    assert all(h.late for h in late_hits_of(engine, ids, reports))
