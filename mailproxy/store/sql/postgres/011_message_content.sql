-- The Content intake built from a message (store/rows.py content_text): what the worker
-- sends, so that a message is judged once, by the release that accepted it. NULL for intake
-- errors and for rows stored before this migration, which are read by store/legacy.py.
ALTER TABLE messages ADD COLUMN content text;

-- During a rolling upgrade a release before this one may still take a message sent again
-- under a known id: its upsert rewrites the payload and leaves `content`, which would then
-- be the earlier submission's (its recipients!). An update that changes the payload but not
-- the content clears the content, so that the row is read from its payload (store/legacy.py)
-- like the rows stored before this migration. This release's upsert writes both; when the
-- content it computes is the same as before, reading the payload gives the same message.
CREATE FUNCTION messages_payload_without_content() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.content IS NOT DISTINCT FROM OLD.content THEN
    NEW.content := NULL;
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER messages_payload_without_content BEFORE UPDATE OF payload ON messages
  FOR EACH ROW WHEN (NEW.payload IS DISTINCT FROM OLD.payload)
  EXECUTE FUNCTION messages_payload_without_content();
