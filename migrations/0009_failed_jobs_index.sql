-- The dashboard's views of what went wrong: the jobs page filtered to failed or cancelled
-- jobs (where retry lives) and an account's recent errors. Without this they scan the table
-- newest first until a page is full, the whole table when there are few failures. Partial,
-- so enqueues and completions never touch it: only a job ending failed or cancelled does.
CREATE INDEX jobs_failed_or_cancelled ON threadsync.jobs (id) WHERE status IN ('failed', 'cancelled');
