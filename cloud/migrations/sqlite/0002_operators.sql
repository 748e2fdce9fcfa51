-- Operator accounts, their browser sessions and API tokens, and the audit log
-- of what operators did. Timestamps are milliseconds since the Unix epoch.

CREATE TABLE operators (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,  -- argon2id, PHC string
    created_at    INTEGER NOT NULL
);

-- Only a SHA-256 of each secret is stored, so a copy of the database opens no session.
CREATE TABLE operator_sessions (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    operator_id  INTEGER NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    csrf_token   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    operator_id  INTEGER NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

-- Every operator action: who, what, on which target, how it ended and how long it took.
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL DEFAULT '',
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '',
    latency_ms INTEGER
);
CREATE INDEX audit_log_by_at ON audit_log (at);
CREATE INDEX auth_events_by_at ON auth_events (at);

-- The last hour of each device's health reports, for the dashboard's chart.
CREATE TABLE device_health (
    device_id TEXT NOT NULL,
    at        INTEGER NOT NULL,
    health    TEXT NOT NULL
);
CREATE INDEX device_health_by_device ON device_health (device_id, at);
