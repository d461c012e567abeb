-- One sync engine for every provider: the watermark, the stream cursors, the followed
-- deliveries and the run counters get names that fit any provider. Existing data is
-- copied; job kind names and key formats stay as they were, so queued jobs keep working.

-- The incremental watermark: the start of the last complete run.
ALTER TABLE threadsync.accounts RENAME COLUMN members_synced_from TO synced_from;
-- Whether the provider fetches threads one by one (refresh_thread needs it). Workers set
-- it when they register their accounts; until then, the accounts that did so far.
ALTER TABLE threadsync.accounts ADD COLUMN fetches_threads boolean NOT NULL DEFAULT false;
UPDATE threadsync.accounts SET fetches_threads = (provider = 'ebay');

-- Highest position read per (account, stream): SMS folders by message id.
CREATE TABLE threadsync.stream_cursors (
    account_id  text COLLATE "C" NOT NULL REFERENCES threadsync.accounts (id),
    stream      text COLLATE "C" NOT NULL,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, stream)
);
INSERT INTO threadsync.stream_cursors (account_id, stream, position, updated_at)
SELECT account_id, folder, last_id, updated_at FROM threadsync.sms_folder_cursors;
DROP TABLE threadsync.sms_folder_cursors;

-- Sent messages whose delivery status is followed, with the provider's own id that
-- status checks ask about.
ALTER TABLE threadsync.sms_deliveries RENAME TO deliveries;
ALTER INDEX threadsync.sms_deliveries_pending RENAME TO deliveries_pending;
ALTER TABLE threadsync.deliveries ADD COLUMN remote_id bigint;
UPDATE threadsync.deliveries SET remote_id = substring(message_id FROM '^out:([0-9]+)$')::bigint;

-- Run counters: `stream` instead of the SMS folder (messages per stream are the stream
-- jobs' messages_written, which sms_new always equalled), and rows skipped as undecodable.
DROP VIEW threadsync.sync_run_totals;
ALTER TABLE threadsync.sync_run_progress RENAME COLUMN folder TO stream;
ALTER TABLE threadsync.sync_run_progress DROP COLUMN sms_new;
ALTER TABLE threadsync.sync_run_progress
    ADD COLUMN bad_rows integer NOT NULL DEFAULT 0,
    -- Why the first skipped row of this job was skipped.
    ADD COLUMN bad_row  text;

CREATE VIEW threadsync.sync_run_totals AS
SELECT r.id AS run_id, r.account_id, r.mode, r.state, r.started_at, r.finished_at, r.last_error,
       coalesce(sum(p.pages_listed), 0)::bigint     AS pages_listed,
       coalesce(sum(p.threads_seen), 0)::bigint     AS threads_seen,
       coalesce(sum(p.threads_fetched), 0)::bigint  AS threads_fetched,
       coalesce(sum(p.threads_skipped), 0)::bigint  AS threads_skipped,
       coalesce(sum(p.threads_deleted), 0)::bigint  AS threads_deleted,
       coalesce(sum(p.messages_written), 0)::bigint AS messages_written,
       coalesce(sum(p.http_calls), 0)::bigint       AS http_calls,
       coalesce(sum(p.checks_made), 0)::bigint      AS checks_made,
       coalesce(sum(p.statuses_changed), 0)::bigint AS statuses_changed,
       coalesce(sum(p.settled), 0)::bigint          AS settled,
       coalesce(sum(p.expired), 0)::bigint          AS expired,
       coalesce(sum(p.bad_rows), 0)::bigint         AS bad_rows,
       (SELECT b.bad_row FROM threadsync.sync_run_progress b
         WHERE b.run_id = r.id AND b.bad_row IS NOT NULL
         ORDER BY b.recorded_at LIMIT 1)             AS first_bad_row,
       coalesce((SELECT jsonb_object_agg(s.stream, s.n) FROM (
                   SELECT stream, sum(messages_written)::bigint AS n FROM threadsync.sync_run_progress
                    WHERE run_id = r.id AND stream IS NOT NULL GROUP BY stream) s),
                '{}'::jsonb)                          AS messages_by_stream
  FROM threadsync.sync_runs r LEFT JOIN threadsync.sync_run_progress p ON p.run_id = r.id
 GROUP BY r.id;

-- refresh_thread derives the job kind and keys from the account's provider (the formats
-- of src/sync/keys.rs) and refuses a provider that does not fetch threads one by one.
CREATE OR REPLACE FUNCTION threadsync.refresh_thread(account text, thread_id text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    in_flight integer;
    provider  text;
    fetches   boolean;
BEGIN
    SELECT a.max_in_flight, a.provider, a.fetches_threads INTO in_flight, provider, fetches
      FROM threadsync.accounts a WHERE a.id = account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'threadsync: no account %; `threadsync migrate` and workers register the accounts of their jobs.toml',
            coalesce(quote_literal(regexp_replace(account, '[[:cntrl:]]', '?', 'g')), 'NULL')
            USING ERRCODE = '22023';
    ELSIF NOT fetches THEN
        RAISE EXCEPTION 'threadsync: account % is a % account, which has no threads to fetch one by one',
            quote_literal(account), provider
            USING ERRCODE = '22023';
    END IF;
    IF thread_id IS NULL OR thread_id = '' OR thread_id <> btrim(thread_id)
       OR thread_id ~ '[[:cntrl:]]' OR length(thread_id) > 256 THEN
        RAISE EXCEPTION 'threadsync: bad thread id %: it must be 1 to 256 characters, without surrounding whitespace or control characters',
            coalesce(quote_literal(left(regexp_replace(thread_id, '[[:cntrl:]]', '?', 'g'), 40))
                     || CASE WHEN length(thread_id) > 40 THEN '...' ELSE '' END, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    RETURN threadsync.enqueue(
        kind              => provider || '.conversation',
        payload           => jsonb_build_object('account', account, 'thread_id', thread_id),
        priority          => 100,
        dedupe_key        => provider || ':conversation:' || account || ':' || thread_id,
        concurrency_key   => provider || ':' || account,
        concurrency_limit => in_flight);
END
$$;
