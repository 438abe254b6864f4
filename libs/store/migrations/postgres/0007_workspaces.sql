-- Workspaces for coding agents, their preparation steps and prompts (twin of
-- migrations/sqlite/0008_workspaces.sql; table names as in the Go original).
-- Timestamps are BIGINT milliseconds, JSON documents JSONB, ids "C"-collated, as in
-- 0001_init.sql. Steps and prompts go with their workspace (ON DELETE CASCADE).

CREATE TABLE workspaces (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    description           TEXT NOT NULL DEFAULT '',
    environment_id        TEXT,
    vm_id                 TEXT,
    status                TEXT NOT NULL,
    status_message        TEXT,
    ai_assistant          TEXT NOT NULL,
    ai_assistant_config   JSONB NOT NULL DEFAULT '{}',
    working_directory     TEXT NOT NULL,
    tools                 JSONB NOT NULL DEFAULT '[]',
    worker_id             TEXT,
    idle_timeout_seconds  BIGINT NOT NULL CHECK (idle_timeout_seconds >= 0),
    last_activity_at      BIGINT NOT NULL,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    ready_at              BIGINT
);
CREATE INDEX workspaces_created ON workspaces (created_at, id);
CREATE INDEX workspaces_status ON workspaces (status);

CREATE TABLE workspace_prep_steps (
    workspace_id  TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    step_order    BIGINT NOT NULL,
    type          TEXT NOT NULL,
    status        TEXT NOT NULL,
    output        TEXT NOT NULL DEFAULT '',
    exit_code     BIGINT,
    error         TEXT,
    started_at    BIGINT,
    completed_at  BIGINT,
    PRIMARY KEY (workspace_id, step_order)
);

CREATE TABLE prompt_tasks (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    workspace_id       TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    prompt             TEXT NOT NULL,
    system_prompt      TEXT,
    working_directory  TEXT,
    environment        JSONB NOT NULL DEFAULT '{}',
    priority           BIGINT NOT NULL CHECK (priority BETWEEN 0 AND 255),
    status             TEXT NOT NULL,
    output             TEXT NOT NULL DEFAULT '',
    error              TEXT,
    exit_code          BIGINT,
    task_id            TEXT,
    created_at         BIGINT NOT NULL,
    started_at         BIGINT,
    completed_at       BIGINT
);
-- next_prompt: the pending prompt of a workspace with the highest priority, oldest.
CREATE INDEX prompt_tasks_queue ON prompt_tasks (workspace_id, status, priority DESC, created_at, id);
CREATE INDEX prompt_tasks_workspace ON prompt_tasks (workspace_id, created_at);
