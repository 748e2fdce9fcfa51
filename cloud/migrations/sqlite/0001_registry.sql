-- The device registry and its audit trail. Timestamps are milliseconds since the Unix epoch.

CREATE TABLE devices (
    id             TEXT PRIMARY KEY NOT NULL,
    -- SPKI PEM exactly as the device presented it at first contact; never re-keyed.
    public_key     TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    first_seen     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    bridge_version TEXT,
    last_health    TEXT,  -- JSON object of the latest device.health notification
    last_health_at INTEGER
);

-- Kept when a device is deleted: it is the audit log.
CREATE TABLE auth_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    at        INTEGER NOT NULL,
    event     TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX auth_events_by_device ON auth_events (device_id, id);

-- Container events reported by devices; the latest 1000 per device are kept.
CREATE TABLE device_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    at        INTEGER NOT NULL,
    topic     TEXT NOT NULL,
    payload   TEXT NOT NULL
);
CREATE INDEX device_events_by_device ON device_events (device_id, id);
