-- The platform's tables, shared by every service: the unit directory (written through
-- shared/directory.py) and API keys (shared/auth.py). Services' own tables live in their
-- own migrations (services/<name>/migrations).

-- The unit directory: who exists, who is whose parent, who agreed to share with whom.
CREATE TABLE units (
    code          text PRIMARY KEY,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN
                    ('commune_police', 'province_police', 'border_guard', 'military', 'ministry')),
    parent_code   text REFERENCES units (code),
    province_code integer,
    ward_code     integer,
    lat           double precision,
    lon           double precision,
    active_from   timestamptz NOT NULL DEFAULT now(),
    active_to     timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agreements (
    id          bigserial PRIMARY KEY,
    title       text NOT NULL UNIQUE,
    categories  text[] NOT NULL DEFAULT '{}',   -- empty: every category is shared
    valid_from  date NOT NULL,
    valid_to    date
);

CREATE TABLE agreement_parties (
    agreement_id bigint NOT NULL REFERENCES agreements (id) ON DELETE CASCADE,
    unit_code    text NOT NULL REFERENCES units (code),
    PRIMARY KEY (agreement_id, unit_code)
);
CREATE INDEX agreement_parties_by_unit ON agreement_parties (unit_code);

-- Credentials: API keys are stored as HMAC-SHA256 hashes only.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    unit_code   text NOT NULL REFERENCES units (code),
    key_prefix  text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    role        text NOT NULL DEFAULT 'unit' CHECK (role IN ('unit', 'admin')),
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
