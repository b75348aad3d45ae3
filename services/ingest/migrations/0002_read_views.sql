-- Ingest's read-only interface for the other services (README, "Who reads what"): they
-- read these views, never ingest's tables, so ingest may reshape its tables behind them.

-- Every accepted report, as received: the matcher's late-matching window at start-up.
CREATE VIEW ingest_reports AS
    SELECT event_id, type, unit_code, occurred_at, recorded_at, payload
      FROM events
     WHERE type IN ('SightingReported', 'IncidentReported');

-- The current state of every watchlist entry: the matcher's snapshot at start-up.
CREATE VIEW ingest_watchlist AS
    SELECT entry_id, owner_unit, version, entry, cancelled_at, updated_at
      FROM watchlist_entries;
