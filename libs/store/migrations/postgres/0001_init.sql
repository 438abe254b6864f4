-- PostgreSQL twin of migrations/sqlite/0001_init.sql: same tables, same columns.
-- Timestamps are BIGINT milliseconds since the Unix epoch, as in SQLite, so both
-- stores (and the queries that compare times: scheduling, leases, pruning) share one
-- meaning. JSON documents are JSONB; every integer is BIGINT (Rust i64 on both sides:
-- PostgreSQL decodes strictly by type). Ids use the "C" collation: lists page by
-- (created_at, id), and byte order is what SQLite uses, whatever the database's locale.

CREATE TABLE vms (
    id              TEXT COLLATE "C" PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL,
    orchestrator    TEXT NOT NULL,
    image           TEXT NOT NULL,
    vcpu_count      BIGINT NOT NULL,
    memory_mb       BIGINT NOT NULL,
    kernel_path     TEXT,
    rootfs_path     TEXT,
    socket_path     TEXT,
    worker_id       TEXT,
    error           TEXT,
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    stopped_at      BIGINT,
    metadata        JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX vms_status ON vms (status);
CREATE INDEX vms_worker ON vms (worker_id);

CREATE TABLE tasks (
    id                TEXT COLLATE "C" PRIMARY KEY,
    type              TEXT NOT NULL,
    status            TEXT NOT NULL,
    queue             TEXT NOT NULL,
    payload           JSONB NOT NULL,
    result            JSONB,
    error             TEXT,
    priority          BIGINT NOT NULL,
    retry_count       BIGINT NOT NULL DEFAULT 0,
    max_retries       BIGINT NOT NULL,
    timeout_seconds   BIGINT NOT NULL,
    worker_id         TEXT,
    target_worker_id  TEXT,
    vm_id             TEXT,
    lease_expires_at  BIGINT,
    created_at        BIGINT NOT NULL,
    scheduled_at      BIGINT NOT NULL,
    started_at        BIGINT,
    completed_at      BIGINT
);
CREATE INDEX tasks_ready ON tasks (status, scheduled_at);
CREATE INDEX tasks_vm ON tasks (vm_id);
CREATE INDEX tasks_created ON tasks (created_at);

CREATE TABLE executions (
    id            TEXT COLLATE "C" PRIMARY KEY,
    vm_id         TEXT NOT NULL,
    task_id       TEXT,
    command       TEXT NOT NULL,
    args          JSONB NOT NULL,
    status        TEXT NOT NULL,
    exit_code     BIGINT,
    stdout        TEXT NOT NULL DEFAULT '',
    stderr        TEXT NOT NULL DEFAULT '',
    error         TEXT,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    completed_at  BIGINT,
    duration_ms   BIGINT,
    metadata      JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX executions_vm ON executions (vm_id, created_at);

CREATE TABLE workers (
    id              TEXT COLLATE "C" PRIMARY KEY,
    hostname        TEXT NOT NULL,
    address         TEXT NOT NULL,
    zone            TEXT NOT NULL,
    status          TEXT NOT NULL,
    status_message  TEXT,
    capabilities    JSONB NOT NULL,
    labels          JSONB NOT NULL,
    cpu_cores       BIGINT NOT NULL,
    memory_mb       BIGINT NOT NULL,
    max_vms         BIGINT NOT NULL,
    vm_count        BIGINT NOT NULL,
    started_at      BIGINT NOT NULL,
    last_seen       BIGINT NOT NULL
);
