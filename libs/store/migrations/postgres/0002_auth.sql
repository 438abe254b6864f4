-- API keys, user accounts, dashboard sessions and the audit log (twin of
-- migrations/sqlite/0002_auth.sql). Secrets are never stored: keys and session
-- tokens as SHA-256, passwords as argon2id PHC strings.

CREATE TABLE api_keys (
    id                     TEXT COLLATE "C" PRIMARY KEY,
    name                   TEXT NOT NULL,
    prefix                 TEXT NOT NULL,
    key_hash               TEXT NOT NULL UNIQUE,
    role                   TEXT NOT NULL,
    created_by             TEXT NOT NULL,
    created_at             BIGINT NOT NULL,
    expires_at             BIGINT,
    revoked_at             BIGINT,
    last_used_at           BIGINT,
    rate_limit_per_second  BIGINT
);
CREATE INDEX api_keys_created ON api_keys (created_at);

CREATE TABLE users (
    id             TEXT COLLATE "C" PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    last_login_at  BIGINT
);

CREATE TABLE sessions (
    id          TEXT COLLATE "C" PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE audit_log (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           BIGINT NOT NULL,
    actor_id     TEXT,
    actor_name   TEXT,
    action       TEXT NOT NULL,
    method       TEXT NOT NULL,
    route        TEXT NOT NULL,
    resource_id  TEXT,
    status       BIGINT NOT NULL,
    remote_addr  TEXT
);
CREATE INDEX audit_log_actor ON audit_log (actor_id, seq);
CREATE INDEX audit_log_resource ON audit_log (resource_id, seq);
