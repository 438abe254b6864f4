-- A container's network policy (twin of migrations/sqlite/0010_network_policy.sql);
-- NULL: the isolated network's defaults. An environment's applies to its workspaces' VMs.
ALTER TABLE vms ADD COLUMN network_policy JSONB;
ALTER TABLE environments ADD COLUMN network_policy JSONB;
