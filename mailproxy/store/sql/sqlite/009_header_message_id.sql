-- The client-supplied Message-ID a message goes out with (§12.2 rule 2): from its `headers`,
-- its `message_id` field or its raw header block, in angle brackets, exactly as sent. NULL
-- when the proxy generates the Message-ID (`<pk@domain>`): that form is resolved by its pk.
-- Filled at intake; messages stored before this migration are found by their pk only.
ALTER TABLE messages ADD COLUMN header_message_id TEXT;

CREATE INDEX messages_header_message_id ON messages (header_message_id)
    WHERE header_message_id IS NOT NULL;
