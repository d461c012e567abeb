-- A snoozed job waits, pending, until its run_at without a worker slot but keeps its place
-- under its concurrency key: the key's limit counts running jobs and snoozed ones, so a
-- key's waiting jobs cannot be claimed past it while the snoozed ones wait.
ALTER TABLE threadsync.jobs ADD COLUMN holds_key boolean NOT NULL DEFAULT false;
-- Due snoozed jobs are claimed first, from their own index.
CREATE INDEX jobs_held_due ON threadsync.jobs (run_at) WHERE status = 'pending' AND holds_key;
CREATE INDEX jobs_held_concurrency ON threadsync.jobs (concurrency_key)
    WHERE status = 'pending' AND holds_key AND concurrency_key IS NOT NULL;
-- A job that ended frees its key's place: the worker that ran it claims the key's next
-- due job from here, without reading the backlogs of keys at their cap.
CREATE INDEX jobs_pending_by_key ON threadsync.jobs (concurrency_key, priority DESC, run_at, id)
    WHERE status = 'pending' AND NOT holds_key AND concurrency_key IS NOT NULL;
