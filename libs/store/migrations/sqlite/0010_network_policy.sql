-- A container's network policy as JSON (twin of migrations/postgres/0009_network_policy.sql);
-- NULL: the isolated network's defaults. An environment's applies to its workspaces' VMs.
ALTER TABLE vms ADD COLUMN network_policy TEXT;
ALTER TABLE environments ADD COLUMN network_policy TEXT;
