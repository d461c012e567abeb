-- Live worker processes, for operators (`threadsync workers`, GET /v1/workers): each worker
-- runtime registers when it starts, refreshes its row with every heartbeat and removes it
-- when it stops. A row whose alive_until has passed belongs to a worker that died.
CREATE TABLE threadsync.workers (
    name          text PRIMARY KEY,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    slots         integer     NOT NULL,
    slots_in_use  integer     NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    alive_until   timestamptz NOT NULL
);

-- A full resync asked for while an incremental run is active starts when that run ends.
ALTER TABLE threadsync.accounts ADD COLUMN queued_mode text CHECK (queued_mode IN ('full', 'incremental'));
