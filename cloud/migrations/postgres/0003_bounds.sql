-- The PostgreSQL form of ../sqlite/0003_bounds.sql.
-- Refusals are recorded in aggregate: one row stands for `count` attempts
-- alike (same device and event; same actor, action, target and outcome)
-- within one clock hour, `bucket` (hours since the epoch); `at` and `detail`
-- are the latest attempt's. Rows recorded one by one have no bucket, and
-- unique indexes let NULLs repeat (PostgreSQL's default, as SQLite's).
ALTER TABLE audit_log ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN bucket BIGINT;
CREATE UNIQUE INDEX audit_log_aggregated ON audit_log (actor, action, target, outcome, bucket);
ALTER TABLE auth_events ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE auth_events ADD COLUMN bucket BIGINT;
CREATE UNIQUE INDEX auth_events_aggregated ON auth_events (device_id, event, bucket);
