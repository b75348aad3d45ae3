-- Incidents: their state (open or closed) and their hot list. The events themselves stay in
-- `events`; each suspect and vehicle becomes a temporary watchlist entry of the reporting
-- unit (category incident_suspect / incident_vehicle), linked here.
CREATE TABLE incidents (
    incident_id    uuid PRIMARY KEY REFERENCES events (event_id),
    unit_code      text NOT NULL REFERENCES units (code),
    incident_type  text NOT NULL,
    severity       text NOT NULL CHECK (severity IN ('immediate', 'expected')),
    occurred_at    timestamptz NOT NULL,
    hot_list_until timestamptz NOT NULL,
    suspects       integer NOT NULL DEFAULT 0,  -- hot-list entries numbered so far
    vehicles       integer NOT NULL DEFAULT 0,
    closed_at      timestamptz,
    outcome        text CHECK (outcome IN ('caught', 'lost', 'false_report')),
    closing_note   text
);
CREATE INDEX incidents_by_unit ON incidents (unit_code, occurred_at DESC);

ALTER TABLE watchlist_entries ADD COLUMN incident_id uuid REFERENCES incidents (incident_id);
CREATE INDEX watchlist_entries_by_incident ON watchlist_entries (incident_id)
    WHERE incident_id IS NOT NULL;

-- The notifier's read of incidents and their changes (README, "Who reads what"): what it
-- replays when the broker lost them.
CREATE VIEW ingest_incident_events AS
    SELECT event_id, type, unit_code, occurred_at, recorded_at, payload
      FROM events
     WHERE type IN ('IncidentReported', 'IncidentUpdated', 'IncidentClosed');
