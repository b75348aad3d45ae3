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
