-- Sandbox limits (twin of migrations/postgres/0008_quotas.sql).
-- vms.disk_mb: a container's disk quota in MiB; NULL: not limited (microVMs, whose
-- disk is their image, and VMs made before).
-- vms.created_by: the API key or user that created the VM (a key's quota counts
-- its live VMs); NULL for VMs made before or by the platform itself.
-- api_keys.quota: the key's KeyQuota as JSON; NULL: not limited.
ALTER TABLE vms ADD COLUMN disk_mb INTEGER;
ALTER TABLE vms ADD COLUMN created_by TEXT;
CREATE INDEX vms_created_by ON vms (created_by) WHERE created_by IS NOT NULL;
ALTER TABLE api_keys ADD COLUMN quota TEXT;
