-- When a VM's time to live runs out (twin of migrations/sqlite/0014_vm_expiry.sql):
-- milliseconds since the epoch, NULL for a VM that lives until deleted. Its worker
-- deletes the VM once the time has passed, also after a restart.
ALTER TABLE vms ADD COLUMN expires_at BIGINT;
CREATE INDEX idx_vms_expires_at ON vms (expires_at) WHERE expires_at IS NOT NULL;
