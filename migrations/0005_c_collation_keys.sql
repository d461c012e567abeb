-- Ids and keys are opaque identifiers: compare them byte for byte. Under the database's
-- locale every index comparison on them went through strcoll, a measurable share of
-- PostgreSQL's time in a bulk sync. (Byte order is also the order in which the worker
-- sorts rows before locking them.)
ALTER TABLE threadsync.messages
    ALTER COLUMN account_id TYPE text COLLATE "C",
    ALTER COLUMN message_id TYPE text COLLATE "C",
    ALTER COLUMN thread_id  TYPE text COLLATE "C";
ALTER TABLE threadsync.thread_fetches
    ALTER COLUMN account_id TYPE text COLLATE "C",
    ALTER COLUMN thread_id  TYPE text COLLATE "C";
ALTER TABLE threadsync.threads
    ALTER COLUMN account_id TYPE text COLLATE "C",
    ALTER COLUMN thread_id  TYPE text COLLATE "C";
ALTER TABLE threadsync.jobs
    ALTER COLUMN kind            TYPE text COLLATE "C",
    ALTER COLUMN dedupe_key      TYPE text COLLATE "C",
    ALTER COLUMN concurrency_key TYPE text COLLATE "C";
