-- What the matcher has done, kept so that whatever the broker loses is found and driven
-- again from PostgreSQL (README, "Nothing lost silently").

-- One verdict per report matched: how many hits it raised (0: none). Written once the
-- report's hits were acknowledged by the broker. UNLOGGED (no write-ahead log, a third of
-- the cost): a database crash empties it, and then only the reports published in the last
-- moments, which ingest had not verified yet, are published and matched again; the hits
-- below go with them and come back the same way.
CREATE UNLOGGED TABLE matcher_verdicts (
    event_id   uuid PRIMARY KEY,
    hits       integer NOT NULL,
    verdict_at timestamptz NOT NULL DEFAULT now()
);
-- Written in time order: a BRIN index costs next to nothing to keep (retention only).
CREATE INDEX matcher_verdicts_by_time ON matcher_verdicts USING brin (verdict_at);

-- Every hit emitted (live and late), until an alert exists for it (`resolved_at`).
CREATE UNLOGGED TABLE matcher_hits (
    hit_id          uuid PRIMARY KEY,
    source_event_id uuid NOT NULL,
    entry_id        text NOT NULL,
    late            boolean NOT NULL,
    emitted_at      timestamptz NOT NULL DEFAULT now(),
    redriven        integer NOT NULL DEFAULT 0,
    resolved_at     timestamptz
);
CREATE INDEX matcher_hits_unresolved ON matcher_hits (emitted_at) WHERE resolved_at IS NULL;
CREATE INDEX matcher_hits_resolved ON matcher_hits (resolved_at) WHERE resolved_at IS NOT NULL;

-- The newest version of each watchlist entry whose change the matcher processed in full
-- (its late hits or its withdrawal acknowledged by the broker). At start the matcher
-- compares it with the snapshot: what changed while it was down is processed then.
CREATE TABLE matcher_entries (
    entry_id     text PRIMARY KEY,
    version      integer NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
-- Entries that exist when this table is created were processed by the matcher that ran
-- before it kept this record.
INSERT INTO matcher_entries (entry_id, version) SELECT entry_id, version FROM ingest_watchlist;

-- The matcher's read-only interface for the other services (README, "Tables").
-- Ingest: which reports reached a verdict, which watchlist changes were processed.
CREATE VIEW matcher_report_verdicts AS SELECT event_id, hits, verdict_at FROM matcher_verdicts;
CREATE VIEW matcher_processed_entries AS
    SELECT entry_id, version, processed_at FROM matcher_entries;
