-- Dashboard (issue 15): status counters, per-minute outcome rollups and attempt times, kept
-- by statement-level triggers in the transaction of the change they count.
--
-- Counter rows are sharded by the backend that writes them (shard = pg_backend_pid()): a
-- connection runs one transaction at a time, so two instances never wait on each other's
-- counter rows and the triggers cannot deadlock. Readers sum the shards; the dashboard folds
-- the rows of backends that are gone into shard 0 (rows locked by someone are skipped).

CREATE TABLE attempts (
    id          bigserial PRIMARY KEY,
    message_seq bigint NOT NULL,
    started_ts  double precision NOT NULL,
    ended_ts    double precision NOT NULL,
    outcome     text NOT NULL
);

CREATE INDEX attempts_message ON attempts (message_seq, id);

CREATE TABLE status_counts (
    tenant_id text NOT NULL,
    status    text NOT NULL,
    shard     integer NOT NULL,
    n         bigint NOT NULL,
    PRIMARY KEY (tenant_id, status, shard)
);

INSERT INTO status_counts (tenant_id, status, shard, n)
SELECT tenant_id, status, 0, count(*) FROM messages GROUP BY tenant_id, status;

CREATE TABLE minute_counts (
    minute    bigint NOT NULL,
    tenant_id text NOT NULL,
    kind      text NOT NULL,
    shard     integer NOT NULL,
    n         bigint NOT NULL,
    PRIMARY KEY (minute, tenant_id, kind, shard)
);

INSERT INTO minute_counts (minute, tenant_id, kind, shard, n)
SELECT event_ts / 60 * 60, tenant_id, event_type, 0, count(*) FROM events
WHERE event_type IN ('sent', 'error', 'deferred')
  AND event_ts >= extract(epoch FROM now())::bigint - 172800
GROUP BY 1, 2, 3;

CREATE FUNCTION dash_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_counts AS c (tenant_id, status, shard, n)
    SELECT tenant_id, status, pg_backend_pid(), count(*) FROM dash_new
    GROUP BY tenant_id, status ORDER BY tenant_id, status
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION dash_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_counts AS c (tenant_id, status, shard, n)
    SELECT tenant_id, status, pg_backend_pid(), sum(d)::bigint FROM (
        SELECT o.tenant_id, o.status, -1 AS d FROM dash_old o JOIN dash_new w ON w.seq = o.seq
        WHERE o.status <> w.status
        UNION ALL
        SELECT w.tenant_id, w.status, 1 FROM dash_old o JOIN dash_new w ON w.seq = o.seq
        WHERE o.status <> w.status
    ) AS moves
    GROUP BY tenant_id, status ORDER BY tenant_id, status
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n + excluded.n;
    INSERT INTO attempts (message_seq, started_ts, ended_ts, outcome)
    SELECT w.seq, o.updated_ts, w.updated_ts, w.status
    FROM dash_old o JOIN dash_new w ON w.seq = o.seq
    WHERE o.status = 'sending' AND w.status <> 'sending'
    ORDER BY w.seq;
    RETURN NULL;
END $$;

CREATE FUNCTION dash_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_counts AS c (tenant_id, status, shard, n)
    SELECT tenant_id, status, pg_backend_pid(), -count(*) FROM dash_old
    GROUP BY tenant_id, status ORDER BY tenant_id, status
    ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n + excluded.n;
    DELETE FROM attempts WHERE message_seq IN (SELECT seq FROM dash_old);
    RETURN NULL;
END $$;

CREATE FUNCTION dash_count_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO minute_counts AS c (minute, tenant_id, kind, shard, n)
    SELECT event_ts / 60 * 60, tenant_id, event_type, pg_backend_pid(), count(*)
    FROM dash_new WHERE event_type IN ('sent', 'error', 'deferred')
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (minute, tenant_id, kind, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE TRIGGER dash_messages_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS dash_new FOR EACH STATEMENT EXECUTE FUNCTION dash_count_insert();
CREATE TRIGGER dash_messages_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS dash_old NEW TABLE AS dash_new
    FOR EACH STATEMENT EXECUTE FUNCTION dash_count_update();
CREATE TRIGGER dash_messages_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS dash_old FOR EACH STATEMENT EXECUTE FUNCTION dash_count_delete();
CREATE TRIGGER dash_events_insert AFTER INSERT ON events
    REFERENCING NEW TABLE AS dash_new FOR EACH STATEMENT EXECUTE FUNCTION dash_count_events();

CREATE INDEX messages_recent ON messages (created_ts DESC, seq DESC);
CREATE INDEX messages_unusual ON messages (created_ts DESC, seq DESC)
    WHERE status IN ('scheduled', 'deferred', 'error', 'bounced', 'suppressed');
CREATE INDEX messages_due_waiting ON messages (tenant_id, status)
    WHERE queued = 1 AND status <> 'pending';
