-- Delivery reports, instance settings and the command log.

-- Report-loop state per tenant. report_owner/report_lease_until is the claim on the
-- tenant's pending events: with several processes on one database only the owner reports
-- them (on SQLite there is one process, the lease is taken all the same).
CREATE TABLE tenant_sync (
    tenant_id            TEXT PRIMARY KEY,
    last_sync_ts         INTEGER,
    last_call_ts         REAL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    retry_at             REAL,
    last_error           TEXT,
    next_sync_after      INTEGER,
    resync_at            REAL,
    report_owner         TEXT,
    report_lease_until   REAL
);

-- Retention looks for fully acknowledged final messages by their latest acknowledgement.
CREATE INDEX messages_reported ON messages (reported_ts) WHERE reported_ts IS NOT NULL;

-- One row (id = 1). bounce_imap_password holds AES-GCM ciphertext.
CREATE TABLE instance (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    name                 TEXT,
    bounce_enabled       INTEGER NOT NULL DEFAULT 0,
    bounce_imap_host     TEXT,
    bounce_imap_port     INTEGER,
    bounce_imap_user     TEXT,
    bounce_imap_password TEXT,
    bounce_imap_folder   TEXT NOT NULL DEFAULT 'INBOX',
    bounce_imap_ssl      INTEGER NOT NULL DEFAULT 1,
    bounce_poll_interval INTEGER NOT NULL DEFAULT 60,
    bounce_return_path   TEXT,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);

-- Audit log of REST commands; payloads are stored redacted.
CREATE TABLE command_log (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    command_ts      INTEGER NOT NULL,
    endpoint        TEXT NOT NULL,
    tenant_id       TEXT,
    payload         TEXT,
    response_status INTEGER NOT NULL
);

CREATE INDEX command_log_ts     ON command_log (command_ts);
CREATE INDEX command_log_tenant ON command_log (tenant_id, command_ts)
