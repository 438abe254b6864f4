-- Who ran a command (twin of migrations/postgres/0010_execution_owner.sql).
-- executions.created_by: the API key or user that ran it (a key's quota counts its
-- unfinished executions); NULL for those the platform ran itself or made before.
ALTER TABLE executions ADD COLUMN created_by TEXT;
CREATE INDEX executions_unfinished_by ON executions (created_by)
    WHERE created_by IS NOT NULL AND status IN ('pending', 'running');
