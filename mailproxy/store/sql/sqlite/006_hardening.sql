-- Events of a tenant with nowhere to report them (no client_base_url of its own, and no
-- instance fallback URL: meta report_fallback = '0', written at every start; a database
-- no instance declared it for keeps every event for the report loop) are reported
-- at creation, and so is their message, so that sync-status never counts them as a backlog.
-- A trigger, so that every event insert, present and future, is covered.
CREATE TRIGGER events_reported_at_creation AFTER INSERT ON events
WHEN NEW.reported_ts IS NULL
 AND EXISTS (SELECT 1 FROM meta WHERE key = 'report_fallback' AND value = '0')
 AND NOT EXISTS (SELECT 1 FROM tenants WHERE id = NEW.tenant_id
                 AND COALESCE(json_extract(config, '$.client_base_url'), '') <> '')
BEGIN
    UPDATE events SET reported_ts = NEW.event_ts WHERE event_id = NEW.event_id;
    UPDATE messages SET reported_ts = NEW.event_ts WHERE seq = NEW.message_seq;
END;
