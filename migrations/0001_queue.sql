-- The durable job queue. Everything lives in the `threadsync` schema so a web app
-- sharing the database sees one clearly named namespace.
CREATE SCHEMA IF NOT EXISTS threadsync;

CREATE TABLE threadsync.jobs (
    id                bigserial PRIMARY KEY,
    kind              text        NOT NULL,
    payload           jsonb       NOT NULL DEFAULT '{}',
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    -- Higher runs first.
    priority          integer     NOT NULL DEFAULT 0,
    run_at            timestamptz NOT NULL DEFAULT now(),
    -- Attempts started so far (incremented on claim, given back on retry-after and shutdown).
    attempts          integer     NOT NULL DEFAULT 0,
    -- NULL: the worker applies the kind's policy from jobs.toml.
    max_attempts      integer,
    last_error        text,
    -- Unique among pending and running jobs only (see jobs_dedupe_active).
    dedupe_key        text,
    -- At most concurrency_limit running jobs per key across the whole fleet.
    concurrency_key   text,
    concurrency_limit integer     NOT NULL DEFAULT 1 CHECK (concurrency_limit > 0),
    lease_owner       text,
    lease_token       uuid,
    lease_expires_at  timestamptz,
    checkpoint        jsonb,
    run_id            bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);

-- Claim order: priority, then due time. Partial, so finished rows cost nothing.
CREATE INDEX jobs_claim ON threadsync.jobs (priority DESC, run_at, id) WHERE status = 'pending';
CREATE UNIQUE INDEX jobs_dedupe_active ON threadsync.jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX jobs_running_lease ON threadsync.jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_running_concurrency ON threadsync.jobs (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
-- "Is this sync run finished?" must stay cheap however many of its jobs are done.
CREATE INDEX jobs_run_active ON threadsync.jobs (run_id)
    WHERE run_id IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX jobs_run_failed ON threadsync.jobs (run_id) WHERE run_id IS NOT NULL AND status = 'failed';

-- One NOTIFY per inserting statement (not per row): a batch insert of 10,000 jobs wakes
-- workers once, and PostgreSQL folds duplicate notifications inside a transaction.
CREATE FUNCTION threadsync.notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('threadsync_jobs', '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify AFTER INSERT ON threadsync.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION threadsync.notify_jobs();

-- Enqueue from any app, inside its own transaction. Returns the new job's id, or the id of
-- the pending/running job that already holds dedupe_key.
CREATE FUNCTION threadsync.enqueue(
    kind              text,
    payload           jsonb       DEFAULT '{}',
    priority          integer     DEFAULT 0,
    run_at            timestamptz DEFAULT now(),
    dedupe_key        text        DEFAULT NULL,
    concurrency_key   text        DEFAULT NULL,
    concurrency_limit integer     DEFAULT 1,
    max_attempts      integer     DEFAULT NULL,
    run_id            bigint      DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    LOOP
        INSERT INTO threadsync.jobs AS j (kind, payload, priority, run_at, dedupe_key,
                                          concurrency_key, concurrency_limit, max_attempts, run_id)
        VALUES (enqueue.kind, coalesce(enqueue.payload, '{}'), coalesce(enqueue.priority, 0),
                coalesce(enqueue.run_at, now()), enqueue.dedupe_key, enqueue.concurrency_key,
                coalesce(enqueue.concurrency_limit, 1), enqueue.max_attempts, enqueue.run_id)
        ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'running')
        DO NOTHING
        RETURNING j.id INTO new_id;
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        SELECT j.id INTO new_id FROM threadsync.jobs j
         WHERE j.dedupe_key = enqueue.dedupe_key AND j.status IN ('pending', 'running');
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        -- The holder finished between our insert and our look-up: try again.
    END LOOP;
END $$;

-- Cron: the last tick each schedule fired. Advancing it and enqueueing the tick's job happen
-- in one transaction, so N processes fire each tick once and a long outage fires once.
CREATE TABLE threadsync.cron_ticks (
    schedule  text PRIMARY KEY,
    last_tick timestamptz NOT NULL
);

-- Side table the diagnostic job kinds write to (benchmarks and fire drills): one row per
-- committed execution.
CREATE TABLE threadsync.diag_writes (
    id      bigserial PRIMARY KEY,
    job_id  bigint NOT NULL,
    worker  text   NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
