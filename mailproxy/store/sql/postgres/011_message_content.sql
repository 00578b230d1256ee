-- The Content intake built from a message (store/rows.py content_text): what the worker
-- sends, so that a message is judged once, by the release that accepted it. NULL for intake
-- errors and for rows stored before this migration, which are read by store/legacy.py.
ALTER TABLE messages ADD COLUMN content text;
