-- popsync state, schema 3: a maildir batch journals the name prefix of the
-- tmp/ files it creates, so recovery removes exactly those and nothing else.
ALTER TABLE batch_mark ADD COLUMN tmp_prefix TEXT;
