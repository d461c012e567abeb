-- A job's fenced transaction opens with `BEGIN; SELECT 1 WHERE threadsync.fence(...)` in one
-- simple-protocol round trip. A simple query cannot use a prepared statement, so the fence
-- lives in a function: PL/pgSQL keeps the UPDATEs' plans per session instead of parsing
-- and planning one for every job. True while the lease is ours (the row stays locked until
-- the transaction ends); false once it was lost.
CREATE FUNCTION threadsync.fence(
    p_id bigint, p_token uuid, p_finish text, p_at timestamptz, p_checkpoint jsonb
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF p_finish = 'done' THEN
        UPDATE threadsync.jobs SET status = 'done', finished_at = now(), lease_expires_at = NULL
         WHERE id = p_id AND lease_token = p_token AND status = 'running';
    ELSIF p_finish = 'checkpoint' THEN
        UPDATE threadsync.jobs SET checkpoint = p_checkpoint
         WHERE id = p_id AND lease_token = p_token AND status = 'running';
    ELSIF p_finish = 'reschedule' THEN
        UPDATE threadsync.jobs
           SET status = 'pending', run_at = p_at, checkpoint = coalesce(p_checkpoint, checkpoint),
               attempts = 0, last_error = NULL, lease_token = NULL, lease_owner = NULL,
               lease_expires_at = NULL
         WHERE id = p_id AND lease_token = p_token AND status = 'running';
    ELSE
        RAISE EXCEPTION 'threadsync.fence: unknown finish %', p_finish;
    END IF;
    RETURN FOUND;
END
$$;

-- Every sync job appends its counters in its own transaction. Through a foreign key each of
-- those inserts also took a KEY SHARE lock on the one run row, and a row share-locked by
-- many concurrent transactions at once turns into a MultiXact: measurable work on every
-- commit of a busy run. Runs are never deleted, so the key protected nothing in practice.
ALTER TABLE threadsync.sync_run_progress DROP CONSTRAINT sync_run_progress_run_id_fkey;

-- A job whose writes fit in one statement commits in one round trip, with no BEGIN and no
-- COMMIT: the statement calls this (in a MATERIALIZED CTE that its result reads), and a lost
-- lease aborts the whole statement, so nothing it wrote survives.
CREATE FUNCTION threadsync.fence_or_raise(
    p_id bigint, p_token uuid, p_finish text, p_at timestamptz, p_checkpoint jsonb
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT threadsync.fence(p_id, p_token, p_finish, p_at, p_checkpoint) THEN
        RAISE EXCEPTION 'threadsync: job % lost its lease', p_id USING ERRCODE = 'TS001';
    END IF;
    RETURN true;
END
$$;
