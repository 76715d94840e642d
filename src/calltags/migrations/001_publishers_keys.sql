CREATE TABLE publishers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE postback_keys (
    id                        bigserial PRIMARY KEY,
    publisher_id              bigint NOT NULL REFERENCES publishers (id),
    name                      text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    type                      text NOT NULL DEFAULT 'call_data_writing',
    -- SHA-256 of the secret key, hex: the secret itself is shown once and never stored.
    secret_hash               text NOT NULL UNIQUE,
    -- First characters of the secret, so a user can tell keys apart in listings.
    secret_prefix             text NOT NULL,
    end_call_cutoff_seconds   integer NOT NULL DEFAULT 3600
        CHECK (end_call_cutoff_seconds BETWEEN 0 AND 2592000),
    storage_duration_seconds  integer NOT NULL DEFAULT 86400
        CHECK (storage_duration_seconds BETWEEN 60 AND 2592000),
    paused                    boolean NOT NULL DEFAULT false,
    revoked_at                timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    last_used_at              timestamptz
);

CREATE INDEX postback_keys_publisher ON postback_keys (publisher_id, id);
