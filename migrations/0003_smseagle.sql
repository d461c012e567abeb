-- SMSEagle: a message-id cursor per (account, folder), the delivery follow-up of sent
-- messages, and SMS counters on sync runs.

-- Highest message id synced per folder: the next folder sync asks for ids above it.
CREATE TABLE threadsync.sms_folder_cursors (
    account_id  text        NOT NULL REFERENCES threadsync.accounts (id),
    folder      text        NOT NULL,
    last_id     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, folder)
);

-- One row per sent message whose status we follow: validity other than "max" and status
-- not final when first seen (followed until final or expired), or validity "max" still in
-- the outbox (followed until it leaves it: outcome 'sent'). `outcome` says why following
-- stopped.
CREATE TABLE threadsync.sms_deliveries (
    account_id   text        NOT NULL,
    message_id   text        NOT NULL,
    validity     text        NOT NULL,
    -- On the gateway's clock: the message's date plus its validity.
    expires_at   timestamptz NOT NULL,
    outcome      text        NOT NULL DEFAULT 'pending'
                 CHECK (outcome IN ('pending', 'final', 'expired', 'sent')),
    checks       integer     NOT NULL DEFAULT 0,
    last_checked_at timestamptz,
    settled_at   timestamptz,
    -- The last gateway failure while checking (cleared by the next answer).
    last_error   text,
    PRIMARY KEY (account_id, message_id)
);
CREATE INDEX sms_deliveries_pending ON threadsync.sms_deliveries (account_id)
    WHERE outcome = 'pending';

ALTER TABLE threadsync.sync_run_progress
    ADD COLUMN folder           text,
    ADD COLUMN sms_new          integer NOT NULL DEFAULT 0,
    ADD COLUMN checks_made      integer NOT NULL DEFAULT 0,
    ADD COLUMN statuses_changed integer NOT NULL DEFAULT 0,
    ADD COLUMN settled          integer NOT NULL DEFAULT 0,
    ADD COLUMN expired          integer NOT NULL DEFAULT 0;

-- New columns go last: CREATE OR REPLACE VIEW may only append.
CREATE OR REPLACE VIEW threadsync.sync_run_totals AS
SELECT r.id AS run_id, r.account_id, r.mode, r.state, r.started_at, r.finished_at, r.last_error,
       coalesce(sum(p.pages_listed), 0)::bigint     AS pages_listed,
       coalesce(sum(p.threads_seen), 0)::bigint     AS threads_seen,
       coalesce(sum(p.threads_fetched), 0)::bigint  AS threads_fetched,
       coalesce(sum(p.threads_skipped), 0)::bigint  AS threads_skipped,
       coalesce(sum(p.threads_deleted), 0)::bigint  AS threads_deleted,
       coalesce(sum(p.messages_written), 0)::bigint AS messages_written,
       coalesce(sum(p.http_calls), 0)::bigint       AS http_calls,
       coalesce(sum(p.sms_new), 0)::bigint          AS sms_new,
       coalesce(sum(p.checks_made), 0)::bigint      AS checks_made,
       coalesce(sum(p.statuses_changed), 0)::bigint AS statuses_changed,
       coalesce(sum(p.settled), 0)::bigint          AS settled,
       coalesce(sum(p.expired), 0)::bigint          AS expired,
       coalesce((SELECT jsonb_object_agg(f.folder, f.n) FROM (
                   SELECT folder, sum(sms_new)::bigint AS n FROM threadsync.sync_run_progress
                    WHERE run_id = r.id AND folder IS NOT NULL GROUP BY folder) f),
                '{}'::jsonb)                          AS sms_new_by_folder
  FROM threadsync.sync_runs r LEFT JOIN threadsync.sync_run_progress p ON p.run_id = r.id
 GROUP BY r.id;
