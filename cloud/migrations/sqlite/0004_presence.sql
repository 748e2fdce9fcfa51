-- Which cloud instance holds each device's connection (several instances may
-- share one fleet), and when each instance was last alive: a device held by
-- an instance that stopped answering counts as offline.
ALTER TABLE devices ADD COLUMN connected_to TEXT;
ALTER TABLE devices ADD COLUMN connection_id INTEGER;
CREATE INDEX devices_by_instance ON devices (connected_to);

CREATE TABLE cloud_instances (
    id      TEXT PRIMARY KEY NOT NULL,
    seen_at INTEGER NOT NULL
);
