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
