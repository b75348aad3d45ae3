-- The unit directory: who exists, who is whose parent, who agreed to share with whom.
CREATE TABLE units (
    code          text PRIMARY KEY,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN
                    ('commune_police', 'province_police', 'border_guard', 'military', 'ministry')),
    parent_code   text REFERENCES units (code),
    province_code integer,
    ward_code     integer,
    lat           double precision,
    lon           double precision,
    active_from   timestamptz NOT NULL DEFAULT now(),
    active_to     timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agreements (
    id          bigserial PRIMARY KEY,
    title       text NOT NULL UNIQUE,
    categories  text[] NOT NULL DEFAULT '{}',   -- empty: every category is shared
    valid_from  date NOT NULL,
    valid_to    date
);

CREATE TABLE agreement_parties (
    agreement_id bigint NOT NULL REFERENCES agreements (id) ON DELETE CASCADE,
    unit_code    text NOT NULL REFERENCES units (code),
    PRIMARY KEY (agreement_id, unit_code)
);
CREATE INDEX agreement_parties_by_unit ON agreement_parties (unit_code);

-- Credentials: API keys are stored as HMAC-SHA256 hashes only.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    unit_code   text NOT NULL REFERENCES units (code),
    key_prefix  text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    role        text NOT NULL DEFAULT 'unit' CHECK (role IN ('unit', 'admin')),
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Ingest: every accepted event, as received (the system of record), and its outbox row.
CREATE TABLE events (
    event_id     uuid PRIMARY KEY,
    type         text NOT NULL,
    unit_code    text NOT NULL REFERENCES units (code),
    request_hash bytea NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    payload      jsonb NOT NULL
);
CREATE INDEX events_recent_sightings ON events (occurred_at) WHERE type = 'SightingReported';

CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    event_id      uuid NOT NULL REFERENCES events (event_id),
    topic         text NOT NULL,
    key           text,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE dispatched_at IS NULL;

-- The current state of every watchlist entry (matchers load it at start-up).
CREATE TABLE watchlist_entries (
    entry_id      text PRIMARY KEY,
    owner_unit    text NOT NULL REFERENCES units (code),
    category      text NOT NULL,
    version       integer NOT NULL,
    entry         jsonb NOT NULL,
    valid_until   timestamptz,
    cancelled_at  timestamptz,
    cancel_reason text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX watchlist_entries_by_owner ON watchlist_entries (owner_unit);

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
