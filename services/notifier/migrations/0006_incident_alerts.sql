-- Incident alerts: an incident reported near the border reaches the units it concerns at
-- once. Stored as alerts of kind 'incident' (hit_id is the incident's id, so a redelivered
-- incident makes none), delivered, acknowledged and fed like hit alerts; they have no
-- confirmation deadline, and close with the incident's outcome.
ALTER TABLE alerts ADD COLUMN kind text NOT NULL DEFAULT 'hit' CHECK (kind IN ('hit', 'incident'));
ALTER TABLE alerts DROP CONSTRAINT alerts_outcome_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_outcome_check CHECK (outcome IN
    ('detained', 'not_located', 'false_match', 'caught', 'lost', 'false_report'));
CREATE INDEX alerts_by_incident ON alerts ((hit -> 'entry' ->> 'incident_id')) WHERE kind = 'hit';

-- Incident events handled (reported, updated, closed): each once, whether it came from the
-- broker or from the replay of ingest's `ingest_incident_events`.
CREATE TABLE notifier_incident_events (
    event_id     uuid PRIMARY KEY,
    handled_at   timestamptz NOT NULL DEFAULT now()
);
