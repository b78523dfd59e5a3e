-- popsync state, schema 1.
-- Times are Unix seconds (UTC). One row per (account, UID) while the UID is on
-- the server; rows of UIDs gone from the server stay as history (gone_at set).

CREATE TABLE account (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE message (
    id            INTEGER PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES account(id),
    uid           TEXT NOT NULL,
    first_seen    INTEGER NOT NULL,
    -- Size from LIST when first seen (advisory: servers count differently).
    list_size     INTEGER,
    -- pending: seen, not stored yet; delivered: stored by popsync;
    -- marked: recorded as seen without download (mark-seen, import-uids);
    -- skipped: left on the server on purpose (too large, truncated), see skip_reason.
    state         TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'marked', 'skipped')),
    skip_reason   TEXT,
    delivered_at  INTEGER,
    -- Where: the target's description, and 'maildir:NAME', 'mbox:OFFSET:LENGTH' or 'mda'.
    target        TEXT,
    location      TEXT,
    stored_size   INTEGER,
    sha256        BLOB,
    -- Set when QUIT confirmed a DELE of this message.
    deleted_at    INTEGER,
    -- Set when a complete UIDL no longer listed the UID.
    gone_at       INTEGER
);

-- The "seen set": one live row per UID and account.
CREATE UNIQUE INDEX message_live ON message(account_id, uid) WHERE gone_at IS NULL;

-- Journal of a batch in flight: the mark is written before the target is
-- touched, the intents after the batch is durable and before it is published.
CREATE TABLE batch_mark (
    account_id   INTEGER PRIMARY KEY REFERENCES account(id),
    target       TEXT NOT NULL,
    mbox_length  INTEGER,
    created_at   INTEGER NOT NULL
);

CREATE TABLE intent (
    account_id   INTEGER NOT NULL REFERENCES account(id),
    seq          INTEGER NOT NULL,
    uid          TEXT NOT NULL,
    target       TEXT NOT NULL,
    location     TEXT NOT NULL,
    stored_size  INTEGER NOT NULL,
    sha256       BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, seq)
);

CREATE TABLE run (
    id           INTEGER PRIMARY KEY,
    account_id   INTEGER NOT NULL REFERENCES account(id),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    -- ok | temporary | auth | tls | delivery | protocol | locked | config | internal
    outcome      TEXT,
    on_server    INTEGER,
    new_messages INTEGER NOT NULL DEFAULT 0,
    new_bytes    INTEGER NOT NULL DEFAULT 0,
    deleted      INTEGER NOT NULL DEFAULT 0,
    skipped      INTEGER NOT NULL DEFAULT 0,
    error        TEXT
);
CREATE INDEX run_by_account ON run(account_id, started_at);
