-- Whatever writes outbox rows wakes the relay (NOTIFY giapranh_outbox, delivered at
-- commit, once per transaction however many statements): writers need no round trip of
-- their own for it.
CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM written) THEN
        PERFORM pg_notify('giapranh_outbox', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_written AFTER INSERT ON outbox REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();
