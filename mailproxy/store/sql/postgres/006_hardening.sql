-- Events of a tenant with nowhere to report them (no client_base_url of its own, and no
-- instance fallback URL: meta report_fallback = '0', written at every start; a database
-- no instance declared it for keeps every event for the report loop) are reported
-- at creation, and so is their message, so that sync-status never counts them as a backlog.
-- A statement trigger, so that every event insert is covered at one UPDATE per statement.
CREATE FUNCTION events_reported_at_creation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM meta WHERE key = 'report_fallback' AND value = '0') THEN
        RETURN NULL;
    END IF;
    WITH unreportable AS (
        SELECT i.event_id, i.message_seq, i.event_ts FROM inserted i
        WHERE i.reported_ts IS NULL
          AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = i.tenant_id
                          AND COALESCE(t.config->>'client_base_url', '') <> '')
    ), marked AS (
        UPDATE events e SET reported_ts = u.event_ts
        FROM unreportable u WHERE e.event_id = u.event_id
    )
    UPDATE messages m SET reported_ts = u.event_ts
    FROM unreportable u WHERE m.seq = u.message_seq;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_reported_at_creation AFTER INSERT ON events
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION events_reported_at_creation();

-- Tenant and account changes notify every instance (payload 'changed'), which then drops
-- what it cached about them (the SMTP MAIL FROM check).
CREATE FUNCTION notify_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mailproxy_wake', 'changed');
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
FOR EACH STATEMENT EXECUTE FUNCTION notify_tenant_change();

CREATE TRIGGER accounts_changed AFTER INSERT OR UPDATE OR DELETE ON accounts
FOR EACH STATEMENT EXECUTE FUNCTION notify_tenant_change();
