-- Dashboard (issue 15): status counters, per-minute outcome rollups and attempt times, kept
-- by triggers in the same transaction as the change they count, so the overview never
-- counts the messages table. The migration runner splits on ";" + newline: inside a
-- trigger body every ";" is followed by a space or a comment, never by a bare newline.

-- One row per finished attempt: claim time (updated_ts set by the claim) to outcome time.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_seq INTEGER NOT NULL,
    started_ts  REAL NOT NULL,
    ended_ts    REAL NOT NULL,
    outcome     TEXT NOT NULL
);

CREATE INDEX attempts_message ON attempts (message_seq, id);

CREATE TABLE status_counts (
    tenant_id TEXT NOT NULL,
    status    TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, status)
) WITHOUT ROWID;

INSERT INTO status_counts (tenant_id, status, n)
SELECT tenant_id, status, COUNT(*) FROM messages GROUP BY tenant_id, status;

CREATE TRIGGER status_counts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO status_counts (tenant_id, status, n) VALUES (NEW.tenant_id, NEW.status, 1)
    ON CONFLICT (tenant_id, status) DO UPDATE SET n = n + 1; END;

CREATE TRIGGER status_counts_update AFTER UPDATE OF status ON messages
WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE status_counts SET n = n - 1 WHERE tenant_id = OLD.tenant_id AND status = OLD.status; -- then
    INSERT INTO status_counts (tenant_id, status, n) VALUES (NEW.tenant_id, NEW.status, 1)
    ON CONFLICT (tenant_id, status) DO UPDATE SET n = n + 1; END;

CREATE TRIGGER status_counts_delete AFTER DELETE ON messages BEGIN
    UPDATE status_counts SET n = n - 1 WHERE tenant_id = OLD.tenant_id AND status = OLD.status; -- and
    DELETE FROM attempts WHERE message_seq = OLD.seq; END;

-- Outcomes per minute and tenant (kind: sent, error, deferred), for the last-hour chart.
CREATE TABLE minute_counts (
    minute    INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (minute, tenant_id, kind)
) WITHOUT ROWID;

INSERT INTO minute_counts (minute, tenant_id, kind, n)
SELECT event_ts / 60 * 60, tenant_id, event_type, COUNT(*) FROM events
WHERE event_type IN ('sent', 'error', 'deferred') AND event_ts >= CAST(strftime('%s', 'now') AS INTEGER) - 172800
GROUP BY 1, 2, 3;

CREATE TRIGGER minute_counts_event AFTER INSERT ON events
WHEN NEW.event_type IN ('sent', 'error', 'deferred') BEGIN
    INSERT INTO minute_counts (minute, tenant_id, kind, n)
    VALUES (NEW.event_ts / 60 * 60, NEW.tenant_id, NEW.event_type, 1)
    ON CONFLICT (minute, tenant_id, kind) DO UPDATE SET n = n + 1; END;

CREATE TRIGGER attempts_finish AFTER UPDATE OF status ON messages
WHEN OLD.status = 'sending' AND NEW.status <> 'sending' BEGIN
    INSERT INTO attempts (message_seq, started_ts, ended_ts, outcome)
    VALUES (NEW.seq, OLD.updated_ts, NEW.updated_ts, NEW.status); END;

-- Listing newest first across tenants (the admin's queue page), and the rare statuses
-- (scheduled, deferred, error, bounced, suppressed) without scanning the whole queue.
CREATE INDEX messages_recent ON messages (created_ts DESC, seq DESC);
CREATE INDEX messages_unusual ON messages (created_ts DESC, seq DESC)
    WHERE status IN ('scheduled', 'deferred', 'error', 'bounced', 'suppressed');
-- Due scheduled/deferred rows the claim has promoted: they read as pending.
CREATE INDEX messages_due_waiting ON messages (tenant_id, status)
    WHERE queued = 1 AND status <> 'pending'
