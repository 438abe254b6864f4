-- The embedded queue's unique tasks, deadlines and archive of dead tasks (the Redis
-- queue of distributed mode keeps these in Redis, so PostgreSQL needs none of them).
-- A unique task holds `unique_key` until `unique_until`, or until it completes, is
-- cancelled or is deleted from the archive.
ALTER TABLE tasks ADD COLUMN unique_key TEXT;
ALTER TABLE tasks ADD COLUMN unique_until INTEGER;
-- The task must not start after this (ms); its timeout never outlasts it.
ALTER TABLE tasks ADD COLUMN deadline INTEGER;
-- Set when the task failed for good; cleared when it is retried or deleted from the
-- archive (its row stays `failed`).
ALTER TABLE tasks ADD COLUMN archived_at INTEGER;
CREATE INDEX tasks_unique ON tasks (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX tasks_archived ON tasks (archived_at) WHERE archived_at IS NOT NULL;
