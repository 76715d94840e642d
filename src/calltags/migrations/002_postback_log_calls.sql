-- The postback log: one row per /data_writing request, moved here from the Redis
-- streams by the workers. Partitioned by the UTC day of received_at, so retention
-- (CALLTAGS_LOG_RETENTION_DAYS) drops whole partitions. The entry id is unique
-- together with received_at, which is what lets a redelivered batch add no row.
CREATE TABLE postbacks (
    received_at    timestamptz NOT NULL,
    id             uuid NOT NULL,
    method         text NOT NULL,
    publisher_id   bigint,
    key_id         bigint,
    -- First characters of an unknown key, so junk can be told apart.
    key_prefix     text,
    caller_raw     text,
    caller_number  text,
    call_uuid      text,
    tags           jsonb NOT NULL DEFAULT '{}',
    -- One of the three status strings for an accepted post, else NULL.
    status         text,
    -- The error code of a rejected post, else NULL.
    error          text,
    http_status    smallint NOT NULL,
    remote_addr    text,
    user_agent     text,
    latency_us     bigint,
    PRIMARY KEY (received_at, id)
) PARTITION BY RANGE (received_at);

-- Safety net: a row whose day has no partition yet lands here instead of failing.
CREATE TABLE postbacks_default PARTITION OF postbacks DEFAULT;

CREATE INDEX postbacks_publisher ON postbacks (publisher_id, received_at, id);
CREATE INDEX postbacks_key ON postbacks (key_id, received_at, id);
CREATE INDEX postbacks_caller ON postbacks (caller_number, received_at, id);

-- The partition postbacks_pYYYYMMDD of one UTC day; true if it was created now.
-- Rows the DEFAULT partition caught for that day move into it.
CREATE FUNCTION postbacks_ensure_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'postbacks_p' || to_char(day, 'YYYYMMDD');
    low  timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Workers run this concurrently: one creates, the others find it made.
    PERFORM pg_advisory_xact_lock(hashtext('calltags.postbacks_partitions'));
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE postbacks INCLUDING DEFAULTS)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM postbacks_default'
        ' WHERE received_at >= %L AND received_at < %L RETURNING *)'
        ' INSERT INTO %I SELECT * FROM moved',
        low, high, name);
    EXECUTE format(
        'ALTER TABLE postbacks ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        name, low, high);
    RETURN true;
END
$$;

-- Drop the day partitions before `day` (and DEFAULT rows as old); how many were dropped.
CREATE FUNCTION postbacks_drop_partitions(day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part text;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('calltags.postbacks_partitions'));
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'postbacks'::regclass
          AND c.relname ~ '^postbacks_p[0-9]{8}$'
          AND to_date(substr(c.relname, 12), 'YYYYMMDD') < day
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM postbacks_default WHERE received_at < day::timestamp AT TIME ZONE 'UTC';
    RETURN dropped;
END
$$;

-- Today and the next days, so inserts land in day partitions from the start; the
-- workers' cron job keeps creating them ahead.
SELECT postbacks_ensure_partition((now() AT TIME ZONE 'UTC')::date + n)
FROM generate_series(0, 3) AS n;

-- Call records: the newest snapshot of each call, as the workers saw it in Redis.
CREATE TABLE calls (
    call_uuid      text PRIMARY KEY,
    caller_number  text NOT NULL,
    -- Given by routing at connect, free text.
    publisher_id   text,
    campaign       text,
    state          text NOT NULL,
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz,
    tags           jsonb NOT NULL DEFAULT '{}',
    -- name -> {"publisher_id", "key_id", "set_at"}: who wrote each tag, when.
    tag_sources    jsonb NOT NULL DEFAULT '{}',
    -- Counts the call's writes in Redis: a snapshot replaces the row only when higher.
    version        integer NOT NULL,
    -- The latest time in the snapshot: start, end or a tag's set_at.
    updated_at     timestamptz NOT NULL
);

CREATE INDEX calls_started ON calls (started_at, call_uuid);
CREATE INDEX calls_caller ON calls (caller_number, started_at, call_uuid);
CREATE INDEX calls_publisher ON calls (publisher_id, started_at, call_uuid);
