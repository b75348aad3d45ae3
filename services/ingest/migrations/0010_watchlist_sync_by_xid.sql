-- Watchlist sync hands out changes in the order of (transaction id, change number), not of
-- the change number alone: a transaction can take a lower number than one whose id is
-- older (its id is taken at its first write, the number at the entry's), so by number
-- alone a change that committed after a later-numbered one was handed out could be
-- skipped for good. Every transaction below the oldest still running has ended: ordered by
-- transaction id, nothing can ever appear behind a cursor.
CREATE INDEX watchlist_entries_by_change_xid ON watchlist_entries (change_xid, change_seq);
DROP INDEX watchlist_entries_by_change;
