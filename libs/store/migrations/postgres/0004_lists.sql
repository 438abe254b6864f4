-- Keyset pagination (twin of migrations/sqlite/0004_lists.sql): every list is
-- ordered `created_at DESC, id DESC` and pages continue after the last row's
-- (created_at, id).
CREATE INDEX vms_created_id ON vms (created_at, id);
CREATE INDEX tasks_created_id ON tasks (created_at, id);
CREATE INDEX executions_vm_created_id ON executions (vm_id, created_at, id);

-- Set when a running task is asked to stop; the worker that holds it notices on its
-- lease extension and stops it.
ALTER TABLE tasks ADD COLUMN cancel_requested_at BIGINT;
