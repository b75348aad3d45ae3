-- Notifier: one alert per hit, one delivery per recipient unit with the reasons it got it.
CREATE TABLE alerts (
    alert_id        uuid PRIMARY KEY,
    hit_id          uuid NOT NULL UNIQUE,
    entry_id        text NOT NULL,
    entry_version   integer NOT NULL,
    category        text NOT NULL,
    owner_unit      text NOT NULL,
    seen_unit       text NOT NULL,
    source_event_id uuid NOT NULL,
    correlation_id  uuid NOT NULL,
    seen_at         timestamptz NOT NULL,
    score           real NOT NULL,
    late            boolean NOT NULL,
    hit             jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'raised',
    raised_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_by_entry ON alerts (entry_id);

CREATE TABLE deliveries (
    alert_id        uuid NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    unit_code       text NOT NULL,
    reasons         text[] NOT NULL,
    delivered_at    timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    PRIMARY KEY (alert_id, unit_code)
);
CREATE INDEX deliveries_by_unit ON deliveries (unit_code, delivered_at DESC);
