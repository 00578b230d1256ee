-- Initial schema. Times are integer Unix seconds unless named *_at (text, UTC).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id                 TEXT PRIMARY KEY,
    active             INTEGER NOT NULL DEFAULT 1,
    config             TEXT NOT NULL,            -- JSON of the non-secret fields
    secrets            TEXT,                     -- AES-GCM of a JSON object of secrets
    api_key_hash       TEXT UNIQUE,
    api_key_expires_at INTEGER,
    suspended          TEXT NOT NULL DEFAULT '[]',
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);

CREATE TABLE accounts (
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    id                 TEXT NOT NULL,
    config             TEXT NOT NULL,
    secrets            TEXT,
    submission_hash    TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- One row per message. `queued` is the claim state: 1 = due now, 2 = waiting for due_ts,
-- NULL = not claimable (sending or final). The partial indexes make claiming cost
-- independent of the number of rows that are queued.
CREATE TABLE messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- enqueue order, kept on upsert
    pk            TEXT NOT NULL UNIQUE,
    tenant_id     TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    account_id    TEXT,
    status        TEXT NOT NULL,
    queued        INTEGER,
    priority      INTEGER NOT NULL,
    due_ts        INTEGER NOT NULL DEFAULT 0,
    deferred_ts   INTEGER,
    batch_code    TEXT,
    retry_count   INTEGER NOT NULL DEFAULT 0,
    intake_error  INTEGER NOT NULL DEFAULT 0,
    is_pec        INTEGER NOT NULL DEFAULT 0,
    payload       TEXT NOT NULL,
    raw           BLOB,
    envelope_from TEXT,                               -- verbatim MAIL FROM (SMTP ingress)
    date_ts       INTEGER,
    lease_owner   TEXT,
    lease_until   REAL,
    sent_ts       INTEGER,
    error_ts      INTEGER,
    error         TEXT,
    reported_ts   INTEGER,
    bounce_type   TEXT,
    bounce_code   TEXT,
    bounce_reason TEXT,
    bounce_ts     INTEGER,
    created_ts    REAL NOT NULL,
    updated_ts    REAL NOT NULL,
    UNIQUE (tenant_id, client_id)
);

CREATE INDEX messages_ready   ON messages (tenant_id, account_id, priority, seq) WHERE queued = 1;
CREATE INDEX messages_waiting ON messages (due_ts) WHERE queued = 2;
CREATE INDEX messages_sending ON messages (tenant_id, account_id, lease_until) WHERE status = 'sending';
CREATE INDEX messages_listing ON messages (tenant_id, created_ts DESC, seq DESC);
CREATE INDEX messages_open    ON messages (tenant_id, batch_code) WHERE queued IS NOT NULL OR status = 'sending';

CREATE TABLE events (
    event_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    message_seq  INTEGER NOT NULL,
    tenant_id    TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    event_ts     INTEGER NOT NULL,
    description  TEXT,
    metadata     TEXT,
    reported_ts  INTEGER
);

CREATE INDEX events_message    ON events (message_seq, event_id);
CREATE INDEX events_unreported ON events (tenant_id, event_id) WHERE reported_ts IS NULL;

-- Sends per second per rate scope ("a:<tenant>/<account>" or "t:<tenant>").
CREATE TABLE rate_sends (
    scope TEXT NOT NULL,
    ts    INTEGER NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (scope, ts)
) WITHOUT ROWID;
