-- A repeat of an idempotent postback (the same Idempotency-Key and parameters within
-- CALLTAGS_IDEMPOTENCY_SECONDS): answered with the first one's answer, nothing written.
ALTER TABLE postbacks ADD COLUMN replayed boolean NOT NULL DEFAULT false;
