-- The command log's own database (store/sqlite_commands.py): its schema and named queries.
-- The same table as 002_reports.sql's command_log in the message database, which held the
-- lines before they were given a file of their own and is emptied into this one on open.

-- name: create_table
CREATE TABLE IF NOT EXISTS command_log (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    command_ts      INTEGER NOT NULL,
    endpoint        TEXT NOT NULL,
    tenant_id       TEXT,
    payload         TEXT,
    response_status INTEGER NOT NULL
);

-- name: create_ts_index
CREATE INDEX IF NOT EXISTS command_log_ts ON command_log (command_ts);

-- name: create_tenant_index
CREATE INDEX IF NOT EXISTS command_log_tenant ON command_log (tenant_id, command_ts);

-- name: legacy_lines
SELECT id, command_ts, endpoint, tenant_id, payload, response_status FROM main.command_log
ORDER BY id LIMIT ?;

-- name: legacy_high_water
SELECT coalesce(max(seq), 0) FROM main.sqlite_sequence WHERE name = 'command_log';

-- name: keep_high_water
INSERT INTO sqlite_sequence (name, seq) SELECT 'command_log', 0
WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'command_log');

-- name: raise_high_water
UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'command_log';

-- name: copy_line
-- A line copied before (a move cut short) is not copied again; a line whose id this file
-- gave to another line (lines written by an earlier release after a downgrade) gets a new id.
INSERT INTO command_log (id, command_ts, endpoint, tenant_id, payload, response_status)
SELECT CASE WHEN EXISTS (SELECT 1 FROM command_log WHERE id = :id) THEN NULL ELSE :id END,
       :command_ts, :endpoint, :tenant_id, :payload, :response_status
WHERE NOT EXISTS (
    SELECT 1 FROM command_log
    WHERE id = :id AND command_ts = :command_ts AND endpoint = :endpoint
      AND tenant_id IS :tenant_id AND payload IS :payload
      AND response_status = :response_status);

-- name: forget_legacy_lines
DELETE FROM main.command_log WHERE id <= ?;

-- name: insert_command
INSERT INTO command_log (command_ts, endpoint, tenant_id, payload, response_status)
VALUES (?, ?, ?, ?, ?);

-- name: count_commands
SELECT COUNT(*) FROM command_log
WHERE (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:since_ts IS NULL OR command_ts >= :since_ts)
  AND (:until_ts IS NULL OR command_ts <= :until_ts)
  AND (:endpoint IS NULL OR instr(lower(endpoint), lower(:endpoint)) > 0);

-- name: list_commands
SELECT id, command_ts, endpoint, tenant_id, payload, response_status FROM command_log
WHERE (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:since_ts IS NULL OR command_ts >= :since_ts)
  AND (:until_ts IS NULL OR command_ts <= :until_ts)
  AND (:endpoint IS NULL OR instr(lower(endpoint), lower(:endpoint)) > 0)
ORDER BY command_ts DESC, id DESC LIMIT :limit OFFSET :offset;

-- name: export_commands
SELECT id, command_ts, endpoint, tenant_id, payload, response_status FROM command_log
WHERE (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:since_ts IS NULL OR command_ts >= :since_ts)
  AND (:until_ts IS NULL OR command_ts <= :until_ts)
  AND response_status BETWEEN 200 AND 299
ORDER BY command_ts, id;

-- name: prune_commands
DELETE FROM command_log WHERE command_ts < ?;
