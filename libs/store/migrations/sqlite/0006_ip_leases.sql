-- Guest addresses of microVMs (twin of migrations/postgres/0005_ip_leases.sql).
-- `network` names one address space, "<worker id>/<bridge>"; `ip` is the IPv4
-- address as an integer. The two keys make sure no two VMs ever share an address
-- and a VM holds at most one per network, whoever writes.
CREATE TABLE ip_leases (
    network   TEXT    NOT NULL,
    vm_id     TEXT    NOT NULL,
    ip        INTEGER NOT NULL CHECK (ip BETWEEN 0 AND 4294967295),
    leased_at INTEGER NOT NULL,
    PRIMARY KEY (network, vm_id),
    UNIQUE (network, ip)
);
