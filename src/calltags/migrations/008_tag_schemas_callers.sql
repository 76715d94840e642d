-- Declared tag schemas: a key may name one, and its postbacks' tags are then checked
-- and normalized by it (see tagschemas.py). `body` is the schema as PUT (models.TagSchema).
CREATE TABLE tag_schemas (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A usable key's schema cannot be deleted (the API answers 409 tag_schema_in_use);
-- a revoked key's reference is cleared when its schema goes.
ALTER TABLE postback_keys
    ADD COLUMN tag_schema text
        CONSTRAINT postback_keys_tag_schema_fkey REFERENCES tag_schemas (name)
        ON DELETE SET NULL;

-- Each erase of a caller's data (POST /admin/callers/{number}/erase): when, what it
-- removed, and an HMAC-SHA256 of the number keyed with the erasure salt, never the
-- number. The workers redact rows of an erased caller older than the erase that reach
-- Postgres after it (log entries still in the Redis streams then).
CREATE TABLE caller_erasures (
    id                   bigserial PRIMARY KEY,
    erased_at            timestamptz NOT NULL DEFAULT now(),
    number_hash          text NOT NULL,
    pending_tags         integer NOT NULL,
    calls_in_redis       integer NOT NULL,
    log_entries          integer NOT NULL,
    postbacks            integer NOT NULL,
    call_records         integer NOT NULL
);
CREATE INDEX caller_erasures_hash ON caller_erasures (number_hash, erased_at);

-- The salt of those hashes when CALLTAGS_ERASURE_SALT is not set: made once, here, from
-- the server's strong random source, and read by the web processes and workers alike.
CREATE TABLE erasure_salt (
    salt  text NOT NULL
);
INSERT INTO erasure_salt (salt)
    VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
