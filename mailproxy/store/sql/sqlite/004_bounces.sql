-- Bounces, suppressions and the mailbox cursors of the bounce and PEC pollers (§12, §8.3).

-- One row per correlated bounce and recipient. `fingerprint` (the DSN's Message-ID or a
-- hash of its bytes, plus the recipient) is unique, so a rescan never records it twice.
CREATE TABLE bounces (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    message_seq INTEGER,
    message_pk  TEXT NOT NULL,
    message_id  TEXT NOT NULL,                 -- the client id of the bounced message
    recipient   TEXT NOT NULL,                 -- lower-case
    type        TEXT NOT NULL,                 -- hard | soft
    code        TEXT,                          -- "5.1.1"
    reason      TEXT,
    fingerprint TEXT NOT NULL UNIQUE,
    event_id    INTEGER,
    created_ts  INTEGER NOT NULL
);

CREATE INDEX bounces_recent    ON bounces (tenant_id, id);
CREATE INDEX bounces_recipient ON bounces (tenant_id, recipient, type, created_ts);

-- Addresses not to be mailed any more, per tenant (always lower-case).
CREATE TABLE suppressions (
    tenant_id   TEXT NOT NULL,
    address     TEXT NOT NULL,
    reason      TEXT,
    source      TEXT NOT NULL,                 -- hard_bounce | soft_bounce | manual
    bounce_code TEXT,
    message_id  TEXT,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, address)
) WITHOUT ROWID;

CREATE INDEX suppressions_recent ON suppressions (tenant_id, created_ts, address);

-- Where each watched mailbox was read up to ("bounce", or "pec:<tenant>/<account>").
CREATE TABLE mailbox_cursors (
    mailbox     TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    last_uid    INTEGER NOT NULL,
    updated_ts  INTEGER NOT NULL
);

-- Who may poll a mailbox now: with several processes on one database only the holder does.
CREATE TABLE poller_leases (
    name  TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);

-- PEC receipts already turned into events (a rescan after a UIDVALIDITY change finds them).
CREATE TABLE pec_receipts (
    fingerprint TEXT PRIMARY KEY,
    message_seq INTEGER NOT NULL,
    created_ts  INTEGER NOT NULL
);

-- PEC messages sent and still waiting for their acceptance receipt (pec_timeout, §8.3).
CREATE INDEX messages_pec_sent ON messages (sent_ts) WHERE is_pec = 1 AND status = 'sent';

-- Rule (3) of §12.2 looks messages up by client id across tenants.
CREATE INDEX messages_client_id ON messages (client_id);

-- A deleted tenant takes its bounces and suppressions with it.
CREATE TRIGGER tenants_bounce_cleanup AFTER DELETE ON tenants BEGIN DELETE FROM bounces WHERE tenant_id = old.id; DELETE FROM suppressions WHERE tenant_id = old.id; END;
