-- Where a VM may run (twin of migrations/sqlite/0012_vm_placement.sql): the
-- `placement` its create asked for (NULL: any worker), kept so that a VM whose
-- worker died before making it is placed again under the same constraints.
ALTER TABLE vms ADD COLUMN placement JSONB;
