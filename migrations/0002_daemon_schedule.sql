-- popsync state, schema 2: when a running daemon will next poll each account
-- (for `popsync status`). Rows of a daemon that is gone are stale: check pid.
CREATE TABLE daemon_schedule (
    account     TEXT PRIMARY KEY,
    next_poll   INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
