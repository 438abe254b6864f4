-- Timestamps are INTEGER milliseconds since the Unix epoch: they compare correctly,
-- which the queue's scheduling and lease queries depend on.

CREATE TABLE vms (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL,
    orchestrator    TEXT NOT NULL,
    image           TEXT NOT NULL,
    vcpu_count      INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    kernel_path     TEXT,
    rootfs_path     TEXT,
    socket_path     TEXT,
    worker_id       TEXT,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    stopped_at      INTEGER,
    metadata        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX vms_status ON vms (status);
CREATE INDEX vms_worker ON vms (worker_id);

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    type              TEXT NOT NULL,
    status            TEXT NOT NULL,
    queue             TEXT NOT NULL,
    payload           TEXT NOT NULL,
    result            TEXT,
    error             TEXT,
    priority          INTEGER NOT NULL,
    retry_count       INTEGER NOT NULL DEFAULT 0,
    max_retries       INTEGER NOT NULL,
    timeout_seconds   INTEGER NOT NULL,
    worker_id         TEXT,
    target_worker_id  TEXT,
    vm_id             TEXT,
    lease_expires_at  INTEGER,
    created_at        INTEGER NOT NULL,
    scheduled_at      INTEGER NOT NULL,
    started_at        INTEGER,
    completed_at      INTEGER
);
CREATE INDEX tasks_ready ON tasks (status, scheduled_at);
CREATE INDEX tasks_vm ON tasks (vm_id);
CREATE INDEX tasks_created ON tasks (created_at);

CREATE TABLE executions (
    id            TEXT PRIMARY KEY,
    vm_id         TEXT NOT NULL,
    task_id       TEXT,
    command       TEXT NOT NULL,
    args          TEXT NOT NULL,
    status        TEXT NOT NULL,
    exit_code     INTEGER,
    stdout        TEXT NOT NULL DEFAULT '',
    stderr        TEXT NOT NULL DEFAULT '',
    error         TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    completed_at  INTEGER,
    duration_ms   INTEGER,
    metadata      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX executions_vm ON executions (vm_id, created_at);

CREATE TABLE workers (
    id              TEXT PRIMARY KEY,
    hostname        TEXT NOT NULL,
    address         TEXT NOT NULL,
    zone            TEXT NOT NULL,
    status          TEXT NOT NULL,
    status_message  TEXT,
    capabilities    TEXT NOT NULL,
    labels          TEXT NOT NULL,
    cpu_cores       INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    max_vms         INTEGER NOT NULL,
    vm_count        INTEGER NOT NULL,
    started_at      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL
);
