-- Initial schema. Times are integer Unix seconds unless named *_at (text, UTC); created_ts,
-- updated_ts and lease_until keep fractions of a second, like the SQLite schema.

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE tenants (
    id                 text PRIMARY KEY,
    active             boolean NOT NULL DEFAULT true,
    config             jsonb NOT NULL,               -- the non-secret fields
    secrets            text,                         -- AES-GCM of a JSON object of secrets
    api_key_hash       text UNIQUE,
    api_key_expires_at bigint,
    suspended          jsonb NOT NULL DEFAULT '[]',  -- batch codes, or ["*"]
    created_at         text NOT NULL,
    updated_at         text NOT NULL
);

CREATE TABLE accounts (
    tenant_id       text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id              text NOT NULL,
    config          jsonb NOT NULL,
    secrets         text,
    submission_hash text,
    created_at      text NOT NULL,
    updated_at      text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- One row per message. `queued` is the claim state: 1 = due now, 2 = waiting for due_ts,
-- NULL = not claimable (sending or final). The payload is text, not jsonb, so that it is
-- returned exactly as submitted (key order included).
CREATE TABLE messages (
    seq           bigserial PRIMARY KEY,             -- enqueue order, kept on upsert
    pk            text NOT NULL UNIQUE,
    tenant_id     text NOT NULL,
    client_id     text NOT NULL,
    account_id    text,
    status        text NOT NULL,
    queued        smallint,
    priority      smallint NOT NULL,
    due_ts        bigint NOT NULL DEFAULT 0,
    deferred_ts   bigint,
    batch_code    text,
    retry_count   integer NOT NULL DEFAULT 0,
    intake_error  boolean NOT NULL DEFAULT false,
    is_pec        boolean NOT NULL DEFAULT false,
    payload       text NOT NULL,
    raw           bytea,
    envelope_from text,                              -- verbatim MAIL FROM (SMTP ingress)
    date_ts       bigint,
    lease_owner   text,
    lease_until   double precision,
    sent_ts       bigint,
    error_ts      bigint,
    error         text,
    reported_ts   bigint,
    bounce_type   text,
    bounce_code   text,
    bounce_reason text,
    bounce_ts     bigint,
    created_ts    double precision NOT NULL,
    updated_ts    double precision NOT NULL,
    UNIQUE (tenant_id, client_id)
);

-- The claim reads the head of one account's due rows in (priority, seq) order.
CREATE INDEX messages_ready   ON messages (tenant_id, account_id, priority, seq) WHERE queued = 1;
CREATE INDEX messages_waiting ON messages (due_ts) WHERE queued = 2;
CREATE INDEX messages_sending ON messages (tenant_id, account_id, lease_until)
    WHERE status = 'sending';
CREATE INDEX messages_leases  ON messages (lease_until) WHERE status = 'sending';
CREATE INDEX messages_listing ON messages (tenant_id, created_ts DESC, seq DESC);
CREATE INDEX messages_open    ON messages (tenant_id, batch_code)
    WHERE queued IS NOT NULL OR status = 'sending';

CREATE TABLE events (
    event_id    bigserial PRIMARY KEY,
    message_seq bigint NOT NULL,
    tenant_id   text NOT NULL,
    event_type  text NOT NULL,
    event_ts    bigint NOT NULL,
    description text,
    metadata    text,
    reported_ts bigint
);

CREATE INDEX events_message    ON events (message_seq, event_id);
CREATE INDEX events_unreported ON events (tenant_id, event_id) WHERE reported_ts IS NULL;

-- Sends per second per rate scope ("a:<tenant>/<account>" or "t:<tenant>").
CREATE TABLE rate_sends (
    scope text NOT NULL,
    ts    bigint NOT NULL,
    n     integer NOT NULL,
    PRIMARY KEY (scope, ts)
);
