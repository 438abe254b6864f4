-- Environments and workspace secrets (twin of migrations/sqlite/0007_environments_secrets.sql).
-- JSON documents as JSONB, timestamps as BIGINT milliseconds, as in the other tables.
CREATE TABLE environments (
    id                   TEXT   PRIMARY KEY,
    name                 TEXT   NOT NULL UNIQUE,
    description          TEXT   NOT NULL DEFAULT '',
    image                TEXT,
    vcpus                BIGINT NOT NULL,
    memory_mb            BIGINT NOT NULL,
    git_repo_url         TEXT,
    git_branch           TEXT,
    working_directory    TEXT   NOT NULL,
    tools                JSONB  NOT NULL DEFAULT '[]',
    env_vars             JSONB  NOT NULL DEFAULT '{}',
    mcp_servers          JSONB  NOT NULL DEFAULT '[]',
    idle_timeout_seconds BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX environments_created ON environments (created_at DESC, id DESC);

-- A secret's value is sealed (AES-256-GCM): ciphertext + tag, its nonce, and the id
-- of the key that sealed it. Global secrets have no workspace; the unique index
-- treats that as '' so that two global secrets cannot share a name either.
CREATE TABLE workspace_secrets (
    id              TEXT   PRIMARY KEY,
    workspace_id    TEXT,
    name            TEXT   NOT NULL,
    type            TEXT   NOT NULL,
    description     TEXT   NOT NULL DEFAULT '',
    scope           TEXT   NOT NULL CHECK (scope IN ('workspace', 'global')),
    encrypted_value BYTEA  NOT NULL,
    nonce           BYTEA  NOT NULL,
    key_id          TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    CHECK ((scope = 'global') = (workspace_id IS NULL))
);
CREATE UNIQUE INDEX workspace_secrets_unique_name
    ON workspace_secrets (scope, COALESCE(workspace_id, ''), name);
CREATE INDEX workspace_secrets_workspace ON workspace_secrets (workspace_id);
