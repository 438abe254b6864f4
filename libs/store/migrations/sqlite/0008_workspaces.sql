-- Workspaces for coding agents, their preparation steps and prompts (twin of
-- migrations/postgres/0007_workspaces.sql; table names as in the Go original).
-- Timestamps are INTEGER milliseconds, JSON documents TEXT, as in 0001_init.sql.
-- Steps and prompts go with their workspace (ON DELETE CASCADE; the store turns
-- foreign keys on for every connection).

CREATE TABLE workspaces (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    description           TEXT NOT NULL DEFAULT '',
    environment_id        TEXT,
    vm_id                 TEXT,
    status                TEXT NOT NULL,
    status_message        TEXT,
    ai_assistant          TEXT NOT NULL,
    ai_assistant_config   TEXT NOT NULL DEFAULT '{}',
    working_directory     TEXT NOT NULL,
    tools                 TEXT NOT NULL DEFAULT '[]',
    worker_id             TEXT,
    idle_timeout_seconds  INTEGER NOT NULL CHECK (idle_timeout_seconds >= 0),
    last_activity_at      INTEGER NOT NULL,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    ready_at              INTEGER
);
CREATE INDEX workspaces_created ON workspaces (created_at, id);
CREATE INDEX workspaces_status ON workspaces (status);

CREATE TABLE workspace_prep_steps (
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    step_order    INTEGER NOT NULL,
    type          TEXT NOT NULL,
    status        TEXT NOT NULL,
    output        TEXT NOT NULL DEFAULT '',
    exit_code     INTEGER,
    error         TEXT,
    started_at    INTEGER,
    completed_at  INTEGER,
    PRIMARY KEY (workspace_id, step_order)
);

CREATE TABLE prompt_tasks (
    id                 TEXT PRIMARY KEY,
    workspace_id       TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    prompt             TEXT NOT NULL,
    system_prompt      TEXT,
    working_directory  TEXT,
    environment        TEXT NOT NULL DEFAULT '{}',
    priority           INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 255),
    status             TEXT NOT NULL,
    output             TEXT NOT NULL DEFAULT '',
    error              TEXT,
    exit_code          INTEGER,
    task_id            TEXT,
    created_at         INTEGER NOT NULL,
    started_at         INTEGER,
    completed_at       INTEGER
);
-- next_prompt: the pending prompt of a workspace with the highest priority, oldest.
CREATE INDEX prompt_tasks_queue ON prompt_tasks (workspace_id, status, priority DESC, created_at, id);
CREATE INDEX prompt_tasks_workspace ON prompt_tasks (workspace_id, created_at);
