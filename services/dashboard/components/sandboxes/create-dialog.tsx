"use client";

// "New sandbox": the fields of POST /vms that a person sets by hand. The checks
// here mirror the API's (CreateVmRequest.validate) so a typo is caught before the
// round trip, but the API's answer is what counts: its message is shown as is.

import { useId, useState } from "react";
import { errorMessage } from "@/lib/api";
import { useApi } from "@/lib/session";
import type { CreateVmRequest, CreateVmResponse, Orchestrator, Vm, VmNetwork } from "@/lib/types";
import { Button, Dialog, ErrorBanner, Field, Input, Select } from "@/components/ui";

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const MICROVM: Orchestrator[] = ["qemu", "firecracker"];

export interface CreateForm {
  name: string;
  orchestrator: "" | Orchestrator;
  image: string;
  vcpus: string;
  memoryMb: string;
  network: "" | VmNetwork;
  /** Tool specs from the catalog, separated by spaces or commas: `git nodejs@20`. */
  tools: string;
}

const EMPTY: CreateForm = { name: "", orchestrator: "", image: "", vcpus: "", memoryMb: "", network: "", tools: "" };

/** A tool spec as the API checks it (libs/types workspace.rs validate_tool_name). */
// The API's rule (types::validate::validate_tool_spec): name[@version].
const TOOL_RE = /^[a-z0-9][a-z0-9-]{0,63}(@[A-Za-z0-9._-]{1,64})?$/;

export function parseTools(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((t) => t.trim())
    .filter(Boolean);
}

type Errors = Partial<Record<keyof CreateForm, string>>;

/** The API's rules for the fields, with its wording. */
export function validateCreate(form: CreateForm): Errors {
  const errors: Errors = {};
  const name = form.name.trim();
  if (name && !NAME_RE.test(name)) {
    errors.name =
      name.length > 63
        ? "name must be 1 to 63 characters long"
        : "name must start with a letter or digit and hold only letters, digits, '-', '_' and '.'";
  }
  if (form.image.trim() && /\s/.test(form.image.trim())) {
    errors.image = "image must be a non-empty reference without spaces";
  }
  if (form.vcpus.trim()) {
    const n = Number(form.vcpus);
    if (!Number.isInteger(n)) errors.vcpus = "vcpus must be a whole number";
    else if (n < 1) errors.vcpus = "vcpus must be at least 1";
    else if (n > 64) errors.vcpus = "vcpus must be at most 64";
  }
  if (form.memoryMb.trim()) {
    const n = Number(form.memoryMb);
    if (!Number.isInteger(n)) errors.memoryMb = "memory_mb must be a whole number";
    else if (n < 128) errors.memoryMb = "memory_mb must be at least 128";
    else if (n > 1048576) errors.memoryMb = "memory_mb must be at most 1048576";
  }
  const badTool = parseTools(form.tools).find((t) => !TOOL_RE.test(t));
  if (badTool) errors.tools = `tool "${badTool}" must be name or name@version (name: lowercase letters, digits and '-'; version: letters, digits, '.', '_' and '-'), like nodejs@20`;
  return errors;
}

/** The request body: empty fields are left out, so the platform's defaults apply. */
export function createRequest(form: CreateForm): CreateVmRequest {
  const body: CreateVmRequest = {};
  if (form.name.trim()) body.name = form.name.trim();
  // The served spec still lists only "docker" here, but workers run QEMU and
  // Firecracker too and the API accepts them (Orchestrator's full enum).
  if (form.orchestrator) body.orchestrator = form.orchestrator as CreateVmRequest["orchestrator"];
  if (form.image.trim()) body.image = form.image.trim();
  if (form.vcpus.trim()) body.vcpus = Number(form.vcpus);
  if (form.memoryMb.trim()) body.memory_mb = Number(form.memoryMb);
  if (form.network && form.orchestrator && MICROVM.includes(form.orchestrator)) body.network = form.network;
  const tools = parseTools(form.tools);
  if (tools.length) body.additional_tools = tools;
  return body;
}

export function CreateSandboxDialog({ open, onClose, onCreated }: { open: boolean; onClose: () => void; onCreated: (vm: Vm) => void }) {
  const api = useApi();
  const formId = useId();
  const [form, setForm] = useState<CreateForm>(EMPTY);
  const [errors, setErrors] = useState<Errors>({});
  const [apiError, setApiError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const set = <K extends keyof CreateForm>(key: K, value: CreateForm[K]) => {
    setForm((f) => ({ ...f, [key]: value }));
    setErrors((e) => ({ ...e, [key]: undefined }));
  };

  // Closing drops the draft; a failed Create keeps the dialog open with it.
  const close = () => {
    setForm(EMPTY);
    setApiError(null);
    setErrors({});
    onClose();
  };

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    const found = validateCreate(form);
    setErrors(found);
    if (Object.values(found).some(Boolean)) return;
    setBusy(true);
    setApiError(null);
    try {
      const answer = await api.post<CreateVmResponse>("/vms", createRequest(form));
      // The answer carries the VM as it stands; older gateways may leave it out.
      const vm = answer.vm ?? (await api.get<Vm>(`/vms/${encodeURIComponent(answer.vm_id)}`));
      onCreated(vm);
      close();
    } catch (err) {
      // Keep what was typed: the message says what to change.
      setApiError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  const microVm = form.orchestrator !== "" && MICROVM.includes(form.orchestrator);

  return (
    <Dialog
      open={open}
      onClose={close}
      title="New sandbox"
      footer={
        <>
          <Button type="button" onClick={close}>
            Cancel
          </Button>
          <Button type="submit" form={formId} variant="primary" busy={busy}>
            Create
          </Button>
        </>
      }
    >
      <form id={formId} onSubmit={submit} noValidate className="flex flex-col gap-3" aria-label="New sandbox">
        <ErrorBanner error={apiError} onDismiss={() => setApiError(null)} />
        <Field label="Name" hint="Letters, digits, '-', '_' and '.'; empty: a generated vm-<id>." error={errors.name}>
          {(id) => <Input id={id} name="name" autoComplete="off" placeholder="my-sandbox" value={form.name} onChange={(e) => set("name", e.target.value)} autoFocus />}
        </Field>
        <Field label="Backend" hint="Docker runs a container; QEMU and Firecracker a microVM." error={errors.orchestrator}>
          {(id) => (
            <Select id={id} name="orchestrator" value={form.orchestrator} onChange={(e) => set("orchestrator", e.target.value as CreateForm["orchestrator"])}>
              <option value="">Platform default</option>
              <option value="docker">docker</option>
              <option value="qemu">qemu</option>
              <option value="firecracker">firecracker</option>
            </Select>
          )}
        </Field>
        <Field label="Image" hint="Empty: the platform's default image." error={errors.image}>
          {(id) => <Input id={id} name="image" autoComplete="off" placeholder="platform default" value={form.image} onChange={(e) => set("image", e.target.value)} />}
        </Field>
        <div className="grid grid-cols-1 gap-3 sm:grid-cols-2">
          <Field label="vCPUs" hint="1 to 64; default 1." error={errors.vcpus}>
            {(id) => <Input id={id} name="vcpus" type="number" inputMode="numeric" min={1} max={64} placeholder="1" value={form.vcpus} onChange={(e) => set("vcpus", e.target.value)} />}
          </Field>
          <Field label="Memory (MB)" hint="At least 128; default 256." error={errors.memoryMb}>
            {(id) => <Input id={id} name="memory_mb" type="number" inputMode="numeric" min={128} placeholder="256" value={form.memoryMb} onChange={(e) => set("memoryMb", e.target.value)} />}
          </Field>
        </div>
        <Field label="Tools" hint="Installed before the sandbox turns running, e.g. git nodejs@20 python@3.12 (docs/tools.md)." error={errors.tools}>
          {(id) => <Input id={id} name="tools" autoComplete="off" placeholder="none" value={form.tools} onChange={(e) => set("tools", e.target.value)} />}
        </Field>
        {microVm && (
          <Field label="Network" hint="nat: egress through the host's NAT; none: no network device at all.">
            {(id) => (
              <Select id={id} name="network" value={form.network} onChange={(e) => set("network", e.target.value as CreateForm["network"])}>
                <option value="">Default (nat)</option>
                <option value="nat">nat</option>
                <option value="none">none</option>
              </Select>
            )}
          </Field>
        )}
      </form>
    </Dialog>
  );
}
