-- Services cache resolved API keys for a few seconds (GIAPRANH_KEY_CACHE_SECONDS): every
-- change that could end or alter a key's rights is announced, whatever path makes it, so
-- the caches drop it at once. A key's id, or `*` for a unit change (merge, end, move).
CREATE FUNCTION notify_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('giapranh_key_changes', OLD.id::text);
    RETURN NULL;
END $$;
-- (not `last_used_at`, which the services themselves write once a minute per key)
CREATE TRIGGER api_key_changed
    AFTER UPDATE OF revoked_at, expires_at, replaced_by, role, unit_code, person_id, key_hash
    OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_key_changed();

CREATE FUNCTION notify_units_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('giapranh_key_changes', '*');
    RETURN NULL;
END $$;
CREATE TRIGGER units_changed_keys AFTER UPDATE OR DELETE ON units
    FOR EACH STATEMENT EXECUTE FUNCTION notify_units_changed();
