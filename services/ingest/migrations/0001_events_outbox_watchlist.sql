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
