-- popsync state, schema 6: a batch mark holds one opaque token that its
-- delivery target encodes and decodes (`mbox:LENGTH`, `maildir:PREFIX`;
-- see src/deliver/), instead of a column per target kind. Marks written by
-- schema 3-5 are carried over, so an interrupted batch of the previous
-- version is still recovered. The old columns stay, unused.
ALTER TABLE batch_mark ADD COLUMN token TEXT;
UPDATE batch_mark SET token = CASE
    WHEN tmp_prefix IS NOT NULL THEN 'maildir:' || tmp_prefix
    WHEN mbox_length IS NOT NULL THEN 'mbox:' || mbox_length
END;
