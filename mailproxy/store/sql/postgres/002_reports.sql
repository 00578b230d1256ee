-- Delivery reports, instance settings and the command log (the SQLite 002, in PostgreSQL
-- types).

-- Report-loop state per tenant. report_owner/report_lease_until is the claim on the
-- tenant's pending events: with several instances on one database only the owner reports
-- them, until its lease expires.
CREATE TABLE tenant_sync (
    tenant_id            text PRIMARY KEY,
    last_sync_ts         bigint,
    last_call_ts         double precision,
    consecutive_failures integer NOT NULL DEFAULT 0,
    retry_at             double precision,
    last_error           text,
    next_sync_after      bigint,
    resync_at            double precision,
    report_owner         text,
    report_lease_until   double precision
);

-- Retention looks for fully acknowledged final messages by their latest acknowledgement.
CREATE INDEX messages_reported ON messages (reported_ts) WHERE reported_ts IS NOT NULL;

-- One row (id = 1). bounce_imap_password holds AES-GCM ciphertext.
CREATE TABLE instance (
    id                   integer PRIMARY KEY CHECK (id = 1),
    name                 text,
    bounce_enabled       boolean NOT NULL DEFAULT false,
    bounce_imap_host     text,
    bounce_imap_port     integer,
    bounce_imap_user     text,
    bounce_imap_password text,
    bounce_imap_folder   text NOT NULL DEFAULT 'INBOX',
    bounce_imap_ssl      boolean NOT NULL DEFAULT true,
    bounce_poll_interval integer NOT NULL DEFAULT 60,
    bounce_return_path   text,
    created_at           text NOT NULL,
    updated_at           text NOT NULL
);

-- Audit log of REST commands; payloads are stored redacted, as text (key order kept).
CREATE TABLE command_log (
    id              bigserial PRIMARY KEY,
    command_ts      bigint NOT NULL,
    endpoint        text NOT NULL,
    tenant_id       text,
    payload         text,
    response_status integer NOT NULL
);

CREATE INDEX command_log_ts     ON command_log (command_ts);
CREATE INDEX command_log_tenant ON command_log (tenant_id, command_ts);
