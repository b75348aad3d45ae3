-- Privacy: sightings that matched nothing lose the identifying fields of their subject after
-- a retention period (services/ingest/privacy.py); the report itself (who, where, when) stays.
ALTER TABLE events ADD COLUMN redacted_at timestamptz;
CREATE INDEX events_sightings_to_purge ON events (occurred_at)
    WHERE type = 'SightingReported' AND redacted_at IS NULL;

-- The late-matching window never sees a purged sighting.
CREATE OR REPLACE VIEW ingest_reports AS
    SELECT event_id, type, unit_code, occurred_at, recorded_at, payload
      FROM events
     WHERE type IN ('SightingReported', 'IncidentReported') AND redacted_at IS NULL;
