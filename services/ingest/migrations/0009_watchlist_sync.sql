-- Watchlist sync (`GET /v1/watchlist/sync`, border-post replicas): every change of an entry
-- takes the next number of one sequence, with the transaction that made it, so a reader
-- can hand out changes in order without skipping one that commits late: a change is handed
-- out only once every transaction older than it has ended (its xid is below the oldest
-- transaction still running, `pg_snapshot_xmin`). The scope before the change is kept, so
-- a unit that could see an entry hears that it no longer can.
CREATE SEQUENCE watchlist_change_seq;
ALTER TABLE watchlist_entries
    ADD COLUMN change_seq bigint,
    ADD COLUMN change_xid xid8,
    ADD COLUMN previous_scope text;

CREATE FUNCTION watchlist_entry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_seq := nextval('watchlist_change_seq');
    NEW.change_xid := pg_current_xact_id();
    NEW.previous_scope := CASE WHEN TG_OP = 'UPDATE' THEN OLD.entry ->> 'sharing_scope' END;
    RETURN NEW;
END $$;
CREATE TRIGGER watchlist_entry_changed BEFORE INSERT OR UPDATE ON watchlist_entries
    FOR EACH ROW EXECUTE FUNCTION watchlist_entry_changed();

UPDATE watchlist_entries SET change_seq = NULL;  -- (numbers the existing entries)
ALTER TABLE watchlist_entries ALTER COLUMN change_seq SET NOT NULL;
CREATE INDEX watchlist_entries_by_change ON watchlist_entries (change_seq);

-- Whether `unit` may see an entry of `owner` shared with `scope`, by the sharing scopes:
-- its owner always; `all_units` everyone; `agreement_partners` (and wider) the units in a
-- coordination agreement in force today with the owner that covers the category;
-- `neighbours` (and wider) also the units whose territory borders the owner's.
CREATE FUNCTION watchlist_visible(owner text, scope text, category text, unit text)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT owner = unit
        OR scope = 'all_units'
        OR (scope IN ('agreement_partners', 'neighbours') AND EXISTS (
                SELECT 1 FROM agreements a
                  JOIN agreement_parties mine ON mine.agreement_id = a.id AND mine.unit_code = unit
                  JOIN agreement_parties theirs ON theirs.agreement_id = a.id
                                               AND theirs.unit_code = owner
                 WHERE a.valid_from <= current_date
                   AND (a.valid_to IS NULL OR a.valid_to >= current_date)
                   AND (cardinality(a.categories) = 0 OR category = ANY (a.categories))))
        OR (scope = 'neighbours' AND EXISTS (
                SELECT 1 FROM adjacency
                 WHERE (unit_a, unit_b) = (LEAST(owner, unit), GREATEST(owner, unit))))
$$;
