-- A user's quota (twin of migrations/postgres/0012_user_quota.sql): the KeyQuota
-- of what the sandboxes and commands of the user's sessions may take, as JSON;
-- NULL: not limited.
ALTER TABLE users ADD COLUMN quota TEXT;
