-- Every published outbox row is verified: the matcher reached a verdict on the report, or
-- processed the watchlist change. Rows published longer ago than the grace period without
-- it are published again (`redriven`), up to a limit; what still fails stays visible.
ALTER TABLE outbox
    ADD COLUMN verified_at timestamptz,
    ADD COLUMN redriven    integer NOT NULL DEFAULT 0;
-- What was published before verification existed counts as verified.
UPDATE outbox SET verified_at = dispatched_at WHERE dispatched_at IS NOT NULL;
CREATE INDEX outbox_unverified ON outbox (dispatched_at)
    WHERE verified_at IS NULL AND dispatched_at IS NOT NULL;
CREATE INDEX outbox_by_time ON outbox (created_at);

-- The matcher re-sends the withdrawal of a cancelled entry whose alerts stayed open: it
-- needs the reason, and finds recent cancellations by time.
CREATE OR REPLACE VIEW ingest_watchlist AS
    SELECT entry_id, owner_unit, version, entry, cancelled_at, updated_at, cancel_reason
      FROM watchlist_entries;
CREATE INDEX watchlist_entries_cancelled ON watchlist_entries (cancelled_at)
    WHERE cancelled_at IS NOT NULL;
