-- Several workers starting together all run the maintenance job, and each creates the
-- day partitions it lacks. The second check under the advisory lock can miss a
-- partition that another worker has just committed: taking an advisory lock does not
-- make the session read the catalog changes other sessions committed. The CREATE then
-- failed with duplicate_table. Now that error means "another worker made it".
CREATE OR REPLACE FUNCTION postbacks_ensure_partition(day date) RETURNS boolean
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
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE postbacks INCLUDING DEFAULTS)', name);
    EXCEPTION WHEN duplicate_table THEN
        RETURN false;
    END;
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
