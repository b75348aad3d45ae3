-- Watchlist sync tells a unit to remove an entry it may no longer see when it could see the
-- entry under any scope (and category) the entry has had, not only under the one just
-- before the last change: an entry narrowed (all_units → owner_only) and then changed
-- again, or cancelled, before the unit synced must still reach it as `remove`, or the
-- replica keeps matching an entry it is no longer allowed to hold. `past_kinds` holds each
-- `<scope> <category>` the entry has had, distinct (a handful at most).
ALTER TABLE watchlist_entries ADD COLUMN past_kinds text[] NOT NULL DEFAULT '{}';

ALTER TABLE watchlist_entries DISABLE TRIGGER watchlist_entry_changed;  -- (not a change)
UPDATE watchlist_entries SET past_kinds = ARRAY[previous_scope || ' ' || category]
 WHERE previous_scope IS NOT NULL;
ALTER TABLE watchlist_entries ENABLE TRIGGER watchlist_entry_changed;

CREATE OR REPLACE FUNCTION watchlist_entry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_seq := nextval('watchlist_change_seq');
    NEW.change_xid := pg_current_xact_id();
    IF TG_OP = 'UPDATE' THEN
        NEW.past_kinds := ARRAY(
            SELECT DISTINCT kind
              FROM unnest(OLD.past_kinds
                          || ((OLD.entry ->> 'sharing_scope') || ' ' || OLD.category)) AS kind
             ORDER BY kind);
    ELSE
        NEW.past_kinds := '{}';
    END IF;
    RETURN NEW;
END $$;

ALTER TABLE watchlist_entries DROP COLUMN previous_scope;
