-- The event log and the platform's own logs (twin of
-- migrations/sqlite/0003_events_logs.sql). `seq`/`id` come from identity sequences:
-- increasing and never reused. Sequences alone do not make rows *visible* in that
-- order when several transactions insert at once, so the store serialises appends
-- with a transaction-scoped advisory lock (see store/postgres_events.rs): a reader
-- resuming after `seq` N can never miss a row with a smaller seq committed later.

CREATE TABLE events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL,
    type         TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    timestamp    BIGINT NOT NULL,
    data         JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX events_resource ON events (resource_id, seq);
CREATE INDEX events_timestamp ON events (timestamp);

CREATE TABLE logs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    timestamp     BIGINT NOT NULL,
    level         BIGINT NOT NULL,
    target        TEXT NOT NULL,
    message       TEXT NOT NULL,
    task_id       TEXT,
    vm_id         TEXT,
    worker_id     TEXT,
    execution_id  TEXT,
    fields        JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX logs_task ON logs (task_id, id) WHERE task_id IS NOT NULL;
CREATE INDEX logs_vm ON logs (vm_id, id) WHERE vm_id IS NOT NULL;
CREATE INDEX logs_worker ON logs (worker_id, id) WHERE worker_id IS NOT NULL;
CREATE INDEX logs_execution ON logs (execution_id, id) WHERE execution_id IS NOT NULL;
CREATE INDEX logs_timestamp ON logs (timestamp);
