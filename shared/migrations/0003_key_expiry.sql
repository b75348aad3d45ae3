-- API keys may expire, and a key that is revoked or expires closes the streams opened with
-- it: revocations are announced (the notifiers listen) by whatever path makes them.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;

CREATE FUNCTION notify_key_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('giapranh_keys', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER api_key_revoked AFTER UPDATE OF revoked_at ON api_keys
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
    EXECUTE FUNCTION notify_key_revoked();
