-- A user's quota (twin of migrations/sqlite/0013_user_quota.sql): the KeyQuota of
-- what the sandboxes and commands of the user's sessions may take; NULL: not
-- limited.
ALTER TABLE users ADD COLUMN quota JSONB;
