-- Directory history: units are renamed, merged and re-parented; the change log keeps what
-- they were, and alerts keep the names their units had when they were raised.
ALTER TABLE units ADD COLUMN successor_code text REFERENCES units (code);

CREATE TABLE unit_changes (
    id         bigserial PRIMARY KEY,
    unit_code  text NOT NULL REFERENCES units (code),
    change     text NOT NULL CHECK (change IN ('renamed', 'reparented', 'merged', 'moved')),
    old_value  text,
    new_value  text,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX unit_changes_by_unit ON unit_changes (unit_code, changed_at);

-- Border adjacency: two units whose territories touch (stored once, smaller code first).
CREATE TABLE adjacency (
    unit_a text NOT NULL REFERENCES units (code),
    unit_b text NOT NULL REFERENCES units (code),
    note   text,
    CHECK (unit_a < unit_b),
    PRIMARY KEY (unit_a, unit_b)
);
CREATE INDEX adjacency_by_b ON adjacency (unit_b);

-- The alert workflow: raised -> acknowledged -> confirmed | rejected -> closed (with an
-- outcome), or withdrawn when the entry is cancelled. Confirmation is due by `confirm_by`;
-- each missed deadline raises `escalation_level` and adds the next parent unit.
ALTER TABLE alerts
    ADD COLUMN urgency          text NOT NULL DEFAULT 'routine'
                                CHECK (urgency IN ('urgent', 'routine')),
    ADD COLUMN confirm_by       timestamptz,
    ADD COLUMN escalation_level integer NOT NULL DEFAULT 0,
    ADD COLUMN acknowledged_at  timestamptz,
    ADD COLUMN decided_at       timestamptz,
    ADD COLUMN decided_by       text,
    ADD COLUMN decision_note    text,
    ADD COLUMN closed_at        timestamptz,
    ADD COLUMN outcome          text CHECK (outcome IN ('detained', 'not_located', 'false_match')),
    ADD COLUMN updated_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN units            jsonb NOT NULL DEFAULT '{}';  -- code -> name when raised
ALTER TABLE alerts ADD CONSTRAINT alerts_status_known CHECK (status IN
    ('raised', 'acknowledged', 'confirmed', 'rejected', 'closed', 'withdrawn'));
CREATE INDEX alerts_awaiting_confirmation ON alerts (confirm_by)
    WHERE status IN ('raised', 'acknowledged');

ALTER TABLE deliveries ADD COLUMN unit_name text;

-- Every change of an alert, in order: the audit trail, the Atom feed and CAP updates.
CREATE TABLE alert_history (
    id        bigserial PRIMARY KEY,
    alert_id  uuid NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    at        timestamptz NOT NULL,
    action    text NOT NULL,
    unit_code text,
    detail    text
);
CREATE INDEX alert_history_by_alert ON alert_history (alert_id, id);

-- Webhooks: one endpoint per unit, every push queued in the transaction that caused it.
CREATE TABLE webhooks (
    unit_code  text PRIMARY KEY REFERENCES units (code),
    url        text NOT NULL,
    secret     text NOT NULL,
    format     text NOT NULL DEFAULT 'json' CHECK (format IN ('json', 'cap')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    unit_code       text NOT NULL,
    alert_id        uuid NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    kind            text NOT NULL,
    reported_at     timestamptz,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';

-- Every directory change bumps a version: notifiers compare it with their in-memory copy
-- of the directory once per batch and reload when it moved.
CREATE SEQUENCE directory_version;
CREATE FUNCTION notify_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('directory_version');
    RETURN NULL;
END $$;
CREATE TRIGGER units_changed AFTER INSERT OR UPDATE OR DELETE ON units
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
CREATE TRIGGER adjacency_changed AFTER INSERT OR UPDATE OR DELETE ON adjacency
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
CREATE TRIGGER agreements_changed AFTER INSERT OR UPDATE OR DELETE ON agreements
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
CREATE TRIGGER agreement_parties_changed AFTER INSERT OR UPDATE OR DELETE ON agreement_parties
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
