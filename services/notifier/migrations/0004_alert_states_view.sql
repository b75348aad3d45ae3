-- Every alert's hit, entry, status and number of recipients: the matcher checks that the hits it emitted became
-- alerts, and that a cancelled entry's alerts were withdrawn.
CREATE VIEW notifier_alert_states AS
    SELECT alert_id, hit_id, source_event_id, entry_id, status, raised_at,
           (SELECT count(*) FROM deliveries d WHERE d.alert_id = a.alert_id) AS recipients
      FROM alerts a;
