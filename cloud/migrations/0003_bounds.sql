-- Refusals are recorded in aggregate: one row stands for `count` attempts
-- alike (same actor, action, target and outcome) within an hour, `at` being
-- the latest. The audit log is pruned by age and by number of rows.
ALTER TABLE audit_log ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE auth_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
CREATE INDEX audit_log_by_actor ON audit_log (actor, action, id);
