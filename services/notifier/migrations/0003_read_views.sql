-- The notifier's read-only interface for the other services (README, "Who reads what").

-- The alerts each report raised: ingest's `GET /v1/events/{id}` status.
CREATE VIEW notifier_report_alerts AS
    SELECT source_event_id, alert_id, hit_id, raised_at FROM alerts;
CREATE INDEX alerts_by_source_event ON alerts (source_event_id);
