-- The PostgreSQL form of ../sqlite/0004_shared_fleet.sql.
-- What cloud instances sharing one fleet must agree on. Which instance
-- holds each device's connection, and when each instance was last alive: a
-- device held by an instance that stopped answering counts as offline.
ALTER TABLE devices ADD COLUMN connected_to TEXT;
ALTER TABLE devices ADD COLUMN connection_id BIGINT;
CREATE INDEX devices_by_instance ON devices (connected_to);
-- Each new id's registration counts the pending devices (the cap): with many
-- instances registering at once, over an index of the pending ones only.
CREATE INDEX devices_pending ON devices (id) WHERE status = 'pending';

CREATE TABLE cloud_instances (
    id      TEXT PRIMARY KEY NOT NULL,
    seen_at BIGINT NOT NULL
);

-- Failed sign-ins per source ('address IP', 'name NAME IP') within a
-- minute from the first (`started_at`, ms since the epoch), in the database
-- every instance shares, so a guesser spread over instances meets one limit.
-- Windows past their minute are pruned.
CREATE TABLE sign_in_failures (
    source     TEXT PRIMARY KEY NOT NULL,
    started_at BIGINT NOT NULL,
    failures   BIGINT NOT NULL
);
