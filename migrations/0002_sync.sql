-- The synced copy a web app reads: accounts, threads, messages, and sync runs with their
-- counters. Columns are named for that reader.

CREATE TABLE threadsync.accounts (
    id                  text PRIMARY KEY,
    provider            text        NOT NULL,
    -- Copied from jobs.toml by every worker at start, so SQL callers (threadsync.refresh_thread)
    -- enqueue with the same per-account limits.
    max_in_flight       integer     NOT NULL DEFAULT 10,
    -- Start of the last successfully completed run that listed FROM_MEMBERS: the next
    -- incremental sync asks for start_time = this minus an overlap.
    members_synced_from timestamptz,
    paused_until        timestamptz,
    pause_reason        text,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE threadsync.threads (
    account_id           text        NOT NULL REFERENCES threadsync.accounts (id),
    thread_id            text        NOT NULL,
    provider             text        NOT NULL,
    conversation_type    text,
    title                text,
    status               text,
    reference_id         text,
    reference_type       text,
    unread_count         integer     NOT NULL DEFAULT 0,
    -- The newest message, as the provider's list or our last fetch saw it.
    latest_message_id    text,
    latest_message_at    timestamptz,
    created_at           timestamptz,
    deleted_at           timestamptz,
    synced_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, thread_id)
);
CREATE INDEX threads_recent ON threadsync.threads (account_id, latest_message_at DESC);

-- The newest message we hold in full, per thread: a list page enqueues a fetch when the
-- provider's latest message differs. Kept apart from `threads` so list pages (which update
-- thread metadata) and fetches (which update this) never wait on each other's row locks.
CREATE TABLE threadsync.thread_fetches (
    account_id         text        NOT NULL,
    thread_id          text        NOT NULL,
    fetched_message_id text        NOT NULL,
    fetched_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, thread_id)
);

CREATE TABLE threadsync.messages (
    account_id  text        NOT NULL,
    message_id  text        NOT NULL,
    thread_id   text        NOT NULL,
    sender      text,
    recipient   text,
    subject     text,
    body        text,
    is_read     boolean,
    sent_at     timestamptz NOT NULL,
    media       jsonb,
    -- SMS: delivery status as the gateway reports it.
    status      text,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, message_id)
);
CREATE INDEX messages_thread ON threadsync.messages (account_id, thread_id, sent_at);

CREATE TABLE threadsync.sync_runs (
    id            bigserial PRIMARY KEY,
    account_id    text        NOT NULL REFERENCES threadsync.accounts (id),
    mode          text        NOT NULL CHECK (mode IN ('full', 'incremental')),
    -- running: listing and fetching; catching_up: re-reading the head of the lists for
    -- threads that moved during the run; then done or failed (some jobs failed for good).
    state         text        NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'catching_up', 'done', 'failed')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    last_error    text
);
-- One run per account at a time.
CREATE UNIQUE INDEX sync_runs_one_active ON threadsync.sync_runs (account_id)
    WHERE state IN ('running', 'catching_up');

-- Counters, one row per committed job (appended in the job's own transaction, so they
-- never disagree with the data and never contend on one hot row). Summed on read.
CREATE TABLE threadsync.sync_run_progress (
    run_id          bigint  NOT NULL REFERENCES threadsync.sync_runs (id) ON DELETE CASCADE,
    pages_listed    integer NOT NULL DEFAULT 0,
    threads_seen    integer NOT NULL DEFAULT 0,
    threads_fetched integer NOT NULL DEFAULT 0,
    threads_skipped integer NOT NULL DEFAULT 0,
    threads_deleted integer NOT NULL DEFAULT 0,
    messages_written integer NOT NULL DEFAULT 0,
    http_calls      integer NOT NULL DEFAULT 0,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_run_progress_run ON threadsync.sync_run_progress (run_id);

CREATE VIEW threadsync.sync_run_totals AS
SELECT r.id AS run_id, r.account_id, r.mode, r.state, r.started_at, r.finished_at, r.last_error,
       coalesce(sum(p.pages_listed), 0)::bigint     AS pages_listed,
       coalesce(sum(p.threads_seen), 0)::bigint     AS threads_seen,
       coalesce(sum(p.threads_fetched), 0)::bigint  AS threads_fetched,
       coalesce(sum(p.threads_skipped), 0)::bigint  AS threads_skipped,
       coalesce(sum(p.threads_deleted), 0)::bigint  AS threads_deleted,
       coalesce(sum(p.messages_written), 0)::bigint AS messages_written,
       coalesce(sum(p.http_calls), 0)::bigint       AS http_calls
  FROM threadsync.sync_runs r LEFT JOIN threadsync.sync_run_progress p ON p.run_id = r.id
 GROUP BY r.id;

-- Fleet-wide request pacing per account. Unlogged: it is pacing state, not data, and a
-- crash that forgets it only costs one slot.
CREATE UNLOGGED TABLE threadsync.flow (
    account_id text PRIMARY KEY,
    next_slot  timestamptz NOT NULL DEFAULT now()
);

-- What a web app calls after it sends a reply: fetch this thread now, ahead of bulk work,
-- once however often it is asked while pending.
CREATE FUNCTION threadsync.refresh_thread(account text, thread_id text) RETURNS bigint
LANGUAGE sql AS $$
    SELECT threadsync.enqueue(
        kind              => 'ebay.conversation',
        payload           => jsonb_build_object('account', account, 'thread_id', thread_id),
        priority          => 100,
        dedupe_key        => 'ebay:conversation:' || account || ':' || thread_id,
        concurrency_key   => 'ebay:' || account,
        concurrency_limit => coalesce((SELECT a.max_in_flight FROM threadsync.accounts a WHERE a.id = account), 10))
$$;
