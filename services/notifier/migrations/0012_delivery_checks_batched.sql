-- A delivery's alert is checked once per statement, not once per row.
--
-- The foreign key from deliveries to alerts checked every delivery row on its own (a
-- lookup and a row lock per row): ~40 µs of PostgreSQL's time per alert at six recipients,
-- a twentieth of the whole stack's cost per alert (issue 16). The same guarantees hold
-- without it:
-- - a delivery of no alert is refused: the notifier's insert joins each delivery to its
--   alert (a missing one leaves its figures NULL), every other writer goes through
--   `delivery_alert_figures` (migration 0009), which reads the alert FOR SHARE (so it cannot
--   be deleted meanwhile) and leaves them NULL when there is none; the NOT NULL of
--   `raised_at` refuses such a row either way;
-- - deleting an alert deletes its deliveries (the trigger below, as ON DELETE CASCADE did);
-- - an alert's id cannot change while deliveries name it (as the key's NO ACTION did).
-- Locks first, in the order the notifier takes them (an alert, then its deliveries).
LOCK TABLE alerts IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_alert_id_fkey;

CREATE FUNCTION alert_deleted_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM deliveries d USING gone WHERE d.alert_id = gone.alert_id;
    RETURN NULL;
END $$;

CREATE TRIGGER alert_deleted_deliveries AFTER DELETE ON alerts
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION alert_deleted_deliveries();

CREATE FUNCTION alert_id_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM deliveries WHERE alert_id = OLD.alert_id) THEN
        RAISE EXCEPTION 'alert % has deliveries: its id cannot change', OLD.alert_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER alert_id_kept BEFORE UPDATE OF alert_id ON alerts
    FOR EACH ROW WHEN (OLD.alert_id IS DISTINCT FROM NEW.alert_id)
    EXECUTE FUNCTION alert_id_kept();

-- The overdue gauge counted every open alert (the OR kept it off the deadline index): over
-- 80,000 unacknowledged alerts it read the whole table every few seconds (~70-140 ms).
-- Escalated open alerts get an index of their own, so both halves of the count are read
-- through one (`AlertRepository.count_overdue`).
CREATE INDEX alerts_escalated_open ON alerts (confirm_by)
    WHERE status IN ('raised', 'acknowledged') AND escalation_level > 0;
