-- 0002: a user's email address (ADMIN_EMAIL for the admin). '' for none,
-- the Go zero value, so that the users of a database migrated from 0001
-- read back as they were, with no address.
ALTER TABLE users ADD COLUMN email text NOT NULL DEFAULT '';
