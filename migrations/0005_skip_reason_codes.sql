-- popsync state, schema 5: message.skip_reason holds a stable code (see
-- src/store/skip_reason.rs) instead of the reason's display text, and the
-- new skip_detail column holds the reason's data (sizes, counts). Rows
-- written earlier are rewritten by the migration's hook in
-- src/store/mod.rs: known texts become their codes, others code `other`
-- with the old text as detail.
ALTER TABLE message ADD COLUMN skip_detail TEXT;
