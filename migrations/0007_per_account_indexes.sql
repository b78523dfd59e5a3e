-- popsync state, schema 7: the per-account lookups every run makes (the
-- latest delivery's target, retired rows to prune) use an index instead of
-- scanning every account's rows: with 1,000 accounts of 10 messages each a
-- no-new-mail sync spent most of its CPU in those two scans.
CREATE INDEX message_delivered ON message(account_id, delivered_at) WHERE state = 'delivered';
CREATE INDEX message_gone ON message(account_id, gone_at) WHERE gone_at IS NOT NULL;
