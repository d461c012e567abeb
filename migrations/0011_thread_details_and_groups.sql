-- What a provider says about a thread beyond the common columns (a booking's listing and
-- dates), for the web app to read.
ALTER TABLE threadsync.threads ADD COLUMN details jsonb;

-- Groups of threads (a booking's conversations) by the version last read in full: an
-- incremental run reads a group again only when its version changed.
CREATE TABLE threadsync.list_groups (
    account_id text COLLATE "C" NOT NULL,
    list text COLLATE "C" NOT NULL,
    version text NOT NULL,
    read_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, list)
);

-- Sliding-window limits, shared by the fleet: the send times of the latest requests of an
-- account (`account:ID`) or of a named limit group (`group:NAME`), oldest first. Unlogged
-- like threadsync.flow: pacing state, not data.
CREATE UNLOGGED TABLE threadsync.limit_windows (
    key text COLLATE "C" PRIMARY KEY,
    sends timestamptz[] NOT NULL DEFAULT '{}'
);
