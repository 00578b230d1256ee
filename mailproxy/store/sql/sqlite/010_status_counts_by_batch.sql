-- The status counter of a new message is added by the store once per enqueue batch and
-- (tenant, status), in the same transaction as the rows (SqliteStore.enqueue), instead of by
-- a trigger firing once per inserted row: a 1000-message batch did 1000 counter upserts.
-- Status changes and deletes keep their triggers (claims and outcomes touch few rows each).
DROP TRIGGER status_counts_insert
