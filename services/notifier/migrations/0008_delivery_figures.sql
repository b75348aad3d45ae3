-- Review reports read each delivery with its alert's figures beside it, without joining
-- the alerts: over a million alerts the join was most of the report's time (issue 14).
-- Each delivery carries the unit whose report raised the alert (`sender`), when it was
-- raised, its kind, category and lateness, and what became of it (decision, decided_at,
-- outcome, escalation_level), copied from the alert as the delivery is written and again
-- whenever the alert's change, by the database: no writer can forget them (a delivery
-- without them is refused).
-- Locks first, in the order the notifier takes them (an alert, then its deliveries): taking
-- deliveries first deadlocked with a notifier still raising alerts during the upgrade. The
-- alerts' lock is EXCLUSIVE, so that it also waits for a notifier holding an alert FOR
-- UPDATE (acknowledging, deciding, escalating), which would then update it.
-- Alerts are readable throughout; raising, deciding and reading deliveries wait for this
-- migration (~45 s per million deliveries on a small machine).
LOCK TABLE alerts IN EXCLUSIVE MODE;
LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE;

ALTER TABLE deliveries
    ADD COLUMN raised_at timestamptz,
    ADD COLUMN sender text,
    ADD COLUMN kind text,
    ADD COLUMN category text,
    ADD COLUMN late boolean,
    ADD COLUMN decision text,
    ADD COLUMN decided_at timestamptz,
    ADD COLUMN outcome text,
    ADD COLUMN escalation_level integer;

UPDATE deliveries d
   SET raised_at = a.raised_at,
       sender = CASE WHEN a.kind = 'incident' THEN a.owner_unit ELSE a.seen_unit END,
       kind = a.kind, category = a.category, late = a.late, decision = a.decision,
       decided_at = a.decided_at, outcome = a.outcome, escalation_level = a.escalation_level
  FROM alerts a
 WHERE a.alert_id = d.alert_id;

ALTER TABLE deliveries
    ALTER COLUMN raised_at SET NOT NULL,
    ALTER COLUMN sender SET NOT NULL,
    ALTER COLUMN kind SET NOT NULL,
    ALTER COLUMN category SET NOT NULL,
    ALTER COLUMN late SET NOT NULL,
    ALTER COLUMN escalation_level SET NOT NULL;

CREATE FUNCTION delivery_alert_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT a.raised_at, CASE WHEN a.kind = 'incident' THEN a.owner_unit ELSE a.seen_unit END,
           a.kind, a.category, a.late, a.decision, a.decided_at, a.outcome,
           a.escalation_level
      INTO NEW.raised_at, NEW.sender, NEW.kind, NEW.category, NEW.late, NEW.decision,
           NEW.decided_at, NEW.outcome, NEW.escalation_level
      FROM alerts a WHERE a.alert_id = NEW.alert_id;
    RETURN NEW;  -- (no such alert: the columns stay NULL and NOT NULL refuses the row)
END $$;

-- The notifier's own inserts of new alerts' deliveries copy them by a join in the INSERT
-- (a query per row here costs the hot path ~15 µs a delivery); any other writer gets them
-- filled here.
CREATE TRIGGER delivery_alert_figures BEFORE INSERT ON deliveries
    FOR EACH ROW WHEN (NEW.raised_at IS NULL) EXECUTE FUNCTION delivery_alert_figures();

CREATE FUNCTION alert_figures_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE deliveries
       SET raised_at = NEW.raised_at,
           sender = CASE WHEN NEW.kind = 'incident' THEN NEW.owner_unit ELSE NEW.seen_unit END,
           kind = NEW.kind, category = NEW.category, late = NEW.late,
           decision = NEW.decision, decided_at = NEW.decided_at, outcome = NEW.outcome,
           escalation_level = NEW.escalation_level
     WHERE alert_id = NEW.alert_id;
    RETURN NULL;
END $$;

CREATE TRIGGER alert_figures_changed AFTER UPDATE OF raised_at, kind, owner_unit,
        seen_unit, category, late, decision, decided_at, outcome, escalation_level ON alerts
    FOR EACH ROW
    WHEN (OLD.raised_at IS DISTINCT FROM NEW.raised_at OR OLD.kind IS DISTINCT FROM NEW.kind
          OR OLD.owner_unit IS DISTINCT FROM NEW.owner_unit
          OR OLD.seen_unit IS DISTINCT FROM NEW.seen_unit
          OR OLD.category IS DISTINCT FROM NEW.category OR OLD.late IS DISTINCT FROM NEW.late
          OR OLD.decision IS DISTINCT FROM NEW.decision
          OR OLD.decided_at IS DISTINCT FROM NEW.decided_at
          OR OLD.outcome IS DISTINCT FROM NEW.outcome
          OR OLD.escalation_level IS DISTINCT FROM NEW.escalation_level)
    EXECUTE FUNCTION alert_figures_changed();

-- Deliveries are written as alerts are raised, so a block range index finds a period's
-- cheaply, and costs next to nothing to keep up on the hot path.
CREATE INDEX deliveries_by_raised ON deliveries USING brin (raised_at);
