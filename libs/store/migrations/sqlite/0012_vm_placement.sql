-- Where a VM may run (twin of migrations/postgres/0011_vm_placement.sql): the
-- `placement` its create asked for, as JSON (NULL: any worker), kept so that a VM
-- whose worker died before making it is placed again under the same constraints.
ALTER TABLE vms ADD COLUMN placement TEXT;
