-- A delivery written by another writer than the notifier's own insert reads its alert's
-- figures with the alert's row locked (FOR SHARE): an update of the alert running at the
-- same moment either commits first (and is read here) or waits for this insert to commit
-- (and its trigger then copies its figures onto this delivery too). Without the lock the
-- delivery could keep the figures from before that update.
CREATE OR REPLACE FUNCTION delivery_alert_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT a.raised_at, CASE WHEN a.kind = 'incident' THEN a.owner_unit ELSE a.seen_unit END,
           a.kind, a.category, a.late, a.decision, a.decided_at, a.outcome,
           a.escalation_level
      INTO NEW.raised_at, NEW.sender, NEW.kind, NEW.category, NEW.late, NEW.decision,
           NEW.decided_at, NEW.outcome, NEW.escalation_level
      FROM alerts a WHERE a.alert_id = NEW.alert_id
       FOR SHARE;
    RETURN NEW;  -- (no such alert: the columns stay NULL and NOT NULL refuses the row)
END $$;
