-- API keys, user accounts, dashboard sessions and the audit log.
-- Secrets are never stored: keys and session tokens as SHA-256 (they are long random
-- strings), passwords as argon2id PHC strings.

CREATE TABLE api_keys (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    prefix                 TEXT NOT NULL,
    key_hash               TEXT NOT NULL UNIQUE,
    role                   TEXT NOT NULL,
    created_by             TEXT NOT NULL,
    created_at             INTEGER NOT NULL,
    expires_at             INTEGER,
    revoked_at             INTEGER,
    last_used_at           INTEGER,
    rate_limit_per_second  INTEGER
);
CREATE INDEX api_keys_created ON api_keys (created_at);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    last_login_at  INTEGER
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    actor_id     TEXT,
    actor_name   TEXT,
    action       TEXT NOT NULL,
    method       TEXT NOT NULL,
    route        TEXT NOT NULL,
    resource_id  TEXT,
    status       INTEGER NOT NULL,
    remote_addr  TEXT
);
CREATE INDEX audit_log_actor ON audit_log (actor_id, seq);
CREATE INDEX audit_log_resource ON audit_log (resource_id, seq);
