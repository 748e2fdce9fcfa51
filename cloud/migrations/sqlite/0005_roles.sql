-- Roles (viewer, operator, admin) for operators and their API tokens, the
-- client a browser session was started from, and devices an admin registered
-- before they first connected.

-- Before roles every operator could do everything: they stay admins, and so
-- do their tokens. A token acts with the lower of its role and its operator's.
ALTER TABLE operators ADD COLUMN role TEXT NOT NULL DEFAULT 'admin'
    CHECK (role IN ('viewer', 'operator', 'admin'));
ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin'
    CHECK (role IN ('viewer', 'operator', 'admin'));

-- Shown to the operator on their own page, so they can tell their sessions apart.
ALTER TABLE operator_sessions ADD COLUMN client TEXT NOT NULL DEFAULT '';

-- Who registered the device's key before its first connection (NULL: it
-- presented its key itself). Such a device is accepted from the start.
ALTER TABLE devices ADD COLUMN preauthorized_by TEXT;
