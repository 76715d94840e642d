-- Key security: rotation with a grace period, HMAC-signed postbacks, IP allowlists and
-- per-key rate limits.
ALTER TABLE postback_keys
    -- After a rotation, the replaced secret's hash and until when it still works.
    ADD COLUMN previous_secret_hash  text UNIQUE,
    ADD COLUMN previous_valid_until  timestamptz,
    -- HMAC-SHA256 secret for signed postbacks (X-Calltags-Signature). Kept as is: the
    -- server must compute the same HMAC. Shown once, when created.
    ADD COLUMN signing_secret        text,
    ADD COLUMN require_signature     boolean NOT NULL DEFAULT false,
    -- Addresses allowed to post with the key; empty means any.
    ADD COLUMN allowed_cidrs         cidr[] NOT NULL DEFAULT '{}',
    -- Token bucket overriding CALLTAGS_RATE_LIMIT for this key; NULL means the default.
    ADD COLUMN rate_limit_per_second double precision CHECK (rate_limit_per_second > 0),
    ADD COLUMN rate_limit_burst      integer CHECK (rate_limit_burst >= 1);

-- Keys made before this migration get a signing secret from the server's strong random source.
UPDATE postback_keys
    SET signing_secret = 'whsec_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
    WHERE signing_secret IS NULL;
ALTER TABLE postback_keys ALTER COLUMN signing_secret SET NOT NULL;
