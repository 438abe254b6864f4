-- The event log (resumable `GET /events` streams) and the platform's own logs
-- (`/logs/query`, `/logs/stream`). `seq`/`id` increase in insertion order and are
-- never reused (AUTOINCREMENT), so they are safe resume points and cursors.
-- Both tables are pruned by age and row count (events.* and logging.retention_*).

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL,
    type         TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    timestamp    INTEGER NOT NULL,
    data         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_resource ON events (resource_id, seq);
CREATE INDEX events_timestamp ON events (timestamp);

CREATE TABLE logs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp     INTEGER NOT NULL,
    level         INTEGER NOT NULL,
    target        TEXT NOT NULL,
    message       TEXT NOT NULL,
    task_id       TEXT,
    vm_id         TEXT,
    worker_id     TEXT,
    execution_id  TEXT,
    fields        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX logs_task ON logs (task_id, id) WHERE task_id IS NOT NULL;
CREATE INDEX logs_vm ON logs (vm_id, id) WHERE vm_id IS NOT NULL;
CREATE INDEX logs_worker ON logs (worker_id, id) WHERE worker_id IS NOT NULL;
CREATE INDEX logs_execution ON logs (execution_id, id) WHERE execution_id IS NOT NULL;
CREATE INDEX logs_timestamp ON logs (timestamp);
