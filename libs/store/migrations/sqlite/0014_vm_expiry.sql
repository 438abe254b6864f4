-- When a VM's time to live runs out (twin of migrations/postgres/0013_vm_expiry.sql):
-- milliseconds since the epoch, NULL for a VM that lives until deleted. Its worker
-- deletes the VM once the time has passed, also after a restart.
ALTER TABLE vms ADD COLUMN expires_at INTEGER;
CREATE INDEX idx_vms_expires_at ON vms (expires_at) WHERE expires_at IS NOT NULL;
