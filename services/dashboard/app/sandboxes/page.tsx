"use client";

// The sandboxes (the API's VMs), kept current by vm.* events: each event names one
// VM, which is fetched and put in place; nothing polls.

import Link from "next/link";
import { useCallback, useMemo, useRef, useState } from "react";
import { ApiError } from "@/lib/api";
import { useEvents } from "@/lib/events";
import { useResource } from "@/lib/hooks";
import { useSession } from "@/lib/session";
import { formatBytes, fullTime, shortId, timeAgo } from "@/lib/format";
import type { Event, Vm, VmList, VmStatus } from "@/lib/types";
import { Button, EmptyState, ErrorBanner, Input, Loading, PageHeader, Select, StatusBadge, Table, Td } from "@/components/ui";
import { CreateSandboxDialog } from "@/components/sandboxes/create-dialog";
import { LiveIndicator } from "@/components/sandboxes/live-indicator";

const STATUSES: VmStatus[] = ["CREATED", "STARTING", "RUNNING", "PAUSED", "STOPPING", "STOPPED", "FAILED"];

interface Listed {
  vms: Vm[];
  total: number;
}

/** `vm` in place of the row with its id, or first (the list is newest first). */
function upsert(list: Listed, vm: Vm): Listed {
  const at = list.vms.findIndex((v) => v.id === vm.id);
  if (at === -1) return { vms: [vm, ...list.vms], total: list.total + 1 };
  const vms = list.vms.slice();
  vms[at] = vm;
  return { ...list, vms };
}

function remove(list: Listed, id: string): Listed {
  if (!list.vms.some((v) => v.id === id)) return list;
  return { vms: list.vms.filter((v) => v.id !== id), total: Math.max(0, list.total - 1) };
}

export default function SandboxesPage() {
  const { api, can } = useSession();
  const [status, setStatus] = useState<"" | VmStatus>("");
  const [search, setSearch] = useState("");
  const [creating, setCreating] = useState(false);
  const list = useResource<Listed>(
    async (client, signal) => {
      const answer = await client.get<VmList>("/vms", { status, limit: 1000 }, signal);
      return { vms: answer.vms, total: answer.total };
    },
    [status],
  );
  const { setData } = list;

  // The latest fetch per VM wins: events for one VM can come in bursts and their
  // answers out of order.
  const latest = useRef(new Map<string, number>());
  const refresh = useCallback(
    async (id: string) => {
      const ticket = (latest.current.get(id) ?? 0) + 1;
      latest.current.set(id, ticket);
      let vm: Vm | null;
      try {
        vm = await api.get<Vm>(`/vms/${encodeURIComponent(id)}`);
      } catch (e) {
        // Gone (deleted): drop the row. Anything else: keep the row as it was.
        if (!(e instanceof ApiError && e.status === 404)) return;
        vm = null;
      }
      if (latest.current.get(id) !== ticket) return;
      setData((prev) => {
        if (!prev) return prev;
        if (!vm || (status && vm.status !== status)) return remove(prev, id);
        return upsert(prev, vm);
      });
    },
    [api, setData, status],
  );

  const live = useEvents({ types: ["vm.*"] }, (event: Event) => {
    if (event.resource_id) void refresh(event.resource_id);
  });

  const shown = useMemo(() => {
    const vms = list.data?.vms ?? [];
    const q = search.trim().toLowerCase();
    if (!q) return vms;
    return vms.filter((vm) => vm.name.toLowerCase().includes(q) || vm.id.toLowerCase().includes(q) || vm.image.toLowerCase().includes(q));
  }, [list.data, search]);

  const operator = can("operator");
  const onCreated = (vm: Vm) =>
    setData((prev) => (prev && (!status || vm.status === status) ? upsert(prev, vm) : prev));

  const total = list.data?.total;
  const filtered = status !== "" || search.trim() !== "";

  return (
    <div>
      <PageHeader
        title="Sandboxes"
        subtitle={
          <span className="inline-flex flex-wrap items-center gap-x-3 gap-y-1">
            <span data-testid="sandbox-total">{total === undefined ? "…" : `${total} ${total === 1 ? "sandbox" : "sandboxes"}`}</span>
            <LiveIndicator state={live} />
          </span>
        }
        actions={
          operator && (
            <Button variant="primary" data-testid="create-sandbox" onClick={() => setCreating(true)}>
              New sandbox
            </Button>
          )
        }
      />

      <div className="mb-3 flex flex-col gap-2 sm:flex-row">
        <Input
          type="search"
          aria-label="Search sandboxes"
          placeholder="Search by name, id or image"
          value={search}
          onChange={(e) => setSearch(e.target.value)}
          className="sm:max-w-xs"
        />
        <Select aria-label="Status" value={status} onChange={(e) => setStatus(e.target.value as "" | VmStatus)} className="sm:w-44">
          <option value="">All statuses</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s.toLowerCase()}
            </option>
          ))}
        </Select>
      </div>

      <ErrorBanner error={list.error} onRetry={list.reload} />

      {list.data === undefined ? (
        list.loading && <Loading label="Loading sandboxes…" />
      ) : shown.length === 0 ? (
        filtered ? (
          <EmptyState title="No sandboxes match" hint="Clear the search or pick another status." />
        ) : (
          <EmptyState
            title="No sandboxes yet"
            hint={operator ? "Create one to run commands, open a terminal and copy files." : "An operator can create one; it will show up here at once."}
            action={
              operator && (
                <Button variant="primary" onClick={() => setCreating(true)}>
                  Create a sandbox
                </Button>
              )
            }
          />
        )
      ) : (
        <Table label="Sandboxes" head={["Name", "Status", "Backend", "Image", "vCPUs", "Memory", "Worker", "Created"]}>
          {shown.map((vm) => (
            <tr key={vm.id} data-vm-id={vm.id} className="hover:bg-muted/50">
              <Td className="whitespace-nowrap font-medium">
                <Link href={`/sandboxes/detail/?id=${encodeURIComponent(vm.id)}`} className="text-primary hover:underline">
                  {vm.name}
                </Link>
                <div className="font-mono text-xs text-muted-fg" title={vm.id}>
                  {shortId(vm.id)}
                </div>
              </Td>
              <Td>
                <StatusBadge status={vm.status} />
              </Td>
              <Td>{vm.orchestrator}</Td>
              <Td className="max-w-48 truncate font-mono text-xs" title={vm.image}>
                {vm.image}
              </Td>
              <Td className="tabular-nums">{vm.vcpu_count}</Td>
              <Td className="whitespace-nowrap tabular-nums">{formatBytes(vm.memory_mb * 1024 * 1024)}</Td>
              <Td className="font-mono text-xs" title={vm.worker_id ?? undefined}>
                {vm.worker_id ? shortId(vm.worker_id) : "—"}
              </Td>
              <Td className="whitespace-nowrap text-muted-fg" title={fullTime(vm.created_at)}>
                {timeAgo(vm.created_at)}
              </Td>
            </tr>
          ))}
        </Table>
      )}

      <CreateSandboxDialog open={creating} onClose={() => setCreating(false)} onCreated={onCreated} />
    </div>
  );
}
