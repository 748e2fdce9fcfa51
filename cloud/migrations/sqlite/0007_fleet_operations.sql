-- Fleet operations: tags on devices, jobs (one call to every device a filter
-- matches) and calls that wait for an offline device.

-- An operator's key=value labels on a device (at most 32 a device).
CREATE TABLE device_tags (
    device_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_tags_by_tag ON device_tags (key, value);

-- A job: one method and params called on each device a filter matched when
-- it started. `state` is running, finished or interrupted (its instance
-- stopped before every device answered).
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    instance    TEXT NOT NULL,
    method      TEXT NOT NULL,
    params      TEXT,
    filter      TEXT NOT NULL,
    total       INTEGER NOT NULL,
    state       TEXT NOT NULL,
    finished_at INTEGER
);
CREATE INDEX jobs_by_created ON jobs (created_at);
-- Each device's outcome in a job: `ok` with the result (JSON), or an error
-- kind with its message (a JSON string). `seq` numbers the outcomes in the
-- order they came, so a reader follows a job by the last one it has.
CREATE TABLE job_results (
    job_id      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    result      TEXT NOT NULL,
    latency_ms  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- A call that waits for its device until `expires_at`: queued, then sent
-- when the device is online, then successful or failed; expired if the
-- device did not come online in time. An idempotency key is unique per
-- operator, so a retried submission finds the call it made before.
CREATE TABLE queued_calls (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id       TEXT NOT NULL,
    method          TEXT NOT NULL,
    params          TEXT,
    timeout_ms      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    idempotency_key TEXT,
    state           TEXT NOT NULL,
    sent_at         INTEGER,
    finished_at     INTEGER,
    outcome         TEXT,
    result          TEXT
);
CREATE UNIQUE INDEX queued_calls_by_idempotency_key ON queued_calls (created_by, idempotency_key);
CREATE INDEX queued_calls_by_device ON queued_calls (device_id, state);
CREATE INDEX queued_calls_waiting ON queued_calls (expires_at) WHERE state = 'queued';
