"""The pure matching engine: exact-key retrieval, versions, cancellation, validity."""

from datetime import UTC, datetime, timedelta

from services.matcher.engine import MatchingEngine
from shared.events import Subject, WatchlistEntry

NOW = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)


def entry(version=1, **fields):
    values = {"entry_id": "E-1", "owner_unit": "CA-30307", "category": "wanted_person",
              "full_name": "Nguyễn Văn Hùng", "national_id": "089091004217", **fields}
    return WatchlistEntry(version=version, **values)


def test_national_id_matches_whatever_the_separators():
    engine = MatchingEngine()
    engine.upsert(entry())
    [match] = engine.match(Subject(national_id="089.091.004 217"), at=NOW)
    assert match.entry.entry_id == "E-1"
    assert match.reasons[0].detail == "national id 089091004217 exact"


def test_a_different_national_id_does_not_match():
    engine = MatchingEngine()
    engine.upsert(entry())
    assert engine.match(Subject(national_id="089091004218"), at=NOW) == []


def test_cancelled_entry_stops_matching_and_a_replayed_upsert_cannot_revive_it():
    engine = MatchingEngine()
    engine.upsert(entry(version=1))
    assert engine.cancel("E-1", version=2)
    assert engine.match(Subject(national_id="089091004217"), at=NOW) == []
    assert not engine.upsert(entry(version=1))
    assert engine.match(Subject(national_id="089091004217"), at=NOW) == []
    assert engine.upsert(entry(version=3))
    assert len(engine.match(Subject(national_id="089091004217"), at=NOW)) == 1


def test_an_older_version_never_replaces_a_newer_one():
    engine = MatchingEngine()
    engine.upsert(entry(version=2, national_id="079090001111"))
    assert not engine.upsert(entry(version=1))
    assert engine.match(Subject(national_id="089091004217"), at=NOW) == []
    assert len(engine.match(Subject(national_id="079090001111"), at=NOW)) == 1


def test_an_updated_id_is_reindexed():
    engine = MatchingEngine()
    engine.upsert(entry(version=1))
    engine.upsert(entry(version=2, national_id="079090001111"))
    assert engine.match(Subject(national_id="089091004217"), at=NOW) == []
    assert len(engine) == 1


def test_an_expired_entry_no_longer_matches():
    engine = MatchingEngine()
    engine.upsert(entry(valid_until=NOW - timedelta(minutes=1)))
    assert engine.match(Subject(national_id="089091004217"), at=NOW) == []
    assert len(engine.match(Subject(national_id="089091004217"), at=NOW - timedelta(hours=1))) == 1
