-- The PostgreSQL form of ../sqlite/0006_key_rotation.sql.
-- Key rotation. A device's key may now change (device.rotate_key): the row's
-- public_key and fingerprint are switched in place, only while they still
-- hold the key being replaced.
-- When an operator required the device to rotate its key (ms since the
-- epoch); NULL once it has, or when never required.
ALTER TABLE devices ADD COLUMN key_rotation_required_at BIGINT;
-- The fingerprint of the newest cloud key the device said it trusts when it
-- last authenticated, or that it trusted since: an operator rotating the
-- cloud's key watches this reach the new key on every device.
ALTER TABLE devices ADD COLUMN cloud_key_fingerprint TEXT;
