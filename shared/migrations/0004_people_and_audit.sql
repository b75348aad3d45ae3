-- People, not only units: every API key belongs to a person (an officer, or a unit's duty
-- desk as a whole) with a role; every action records who took it. And the audit log:
-- append-only, each record carrying the hash of the one before (shared/audit.py).

CREATE TABLE people (
    id         bigserial PRIMARY KEY,
    unit_code  text NOT NULL REFERENCES units (code),
    name       text NOT NULL,
    kind       text NOT NULL DEFAULT 'officer' CHECK (kind IN ('officer', 'duty_desk')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (unit_code, name)
);

-- Roles, from least to most: reporter (reports and watchlist entries, reads alerts),
-- desk (also works alerts), unit_admin (also the unit's people, keys, webhook and audit),
-- province_admin (also the directory, and the keys and audit of the units under it).
-- The keys of before were unit-wide: 'unit' could do all of its unit's work ('unit_admin'),
-- 'admin' also the directory ('province_admin').
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
UPDATE api_keys SET role = CASE role WHEN 'admin' THEN 'province_admin' ELSE 'unit_admin' END;
ALTER TABLE api_keys ALTER COLUMN role SET DEFAULT 'desk';
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('reporter', 'desk', 'unit_admin', 'province_admin'));

ALTER TABLE api_keys ADD COLUMN person_id bigint REFERENCES people (id);
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
ALTER TABLE api_keys ADD COLUMN replaced_by bigint REFERENCES api_keys (id);

INSERT INTO people (unit_code, name, kind)
    SELECT DISTINCT unit_code, 'duty desk', 'duty_desk' FROM api_keys;
UPDATE api_keys k SET person_id = p.id
  FROM people p WHERE p.unit_code = k.unit_code AND p.name = 'duty desk';
ALTER TABLE api_keys ALTER COLUMN person_id SET NOT NULL;
CREATE INDEX api_keys_by_person ON api_keys (person_id);

-- The audit log. Ids are consecutive (the writer holds a lock and takes the last id + 1),
-- so a deleted record shows as a gap as well as a broken chain. `detail` is the canonical
-- JSON text that was hashed, stored as text so that it reads back byte for byte.
CREATE TABLE audit_log (
    id          bigint PRIMARY KEY,
    at          timestamptz NOT NULL,
    unit_code   text,
    person_id   bigint,
    person_name text,
    key_id      bigint,
    action      text NOT NULL,
    subject     text,
    detail      text NOT NULL,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX audit_log_by_unit ON audit_log (unit_code, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
