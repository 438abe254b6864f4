"use client";

// The dashboard's small component kit, in the style of shadcn/ui (Tailwind classes,
// CSS variables for the theme) but written here: a handful of parts, no runtime
// dependency beyond React.

import { forwardRef, useEffect, useId, useRef } from "react";

export function cx(...classes: (string | false | null | undefined)[]): string {
  return classes.filter(Boolean).join(" ");
}

type ButtonVariant = "primary" | "secondary" | "danger" | "ghost";

const BUTTON: Record<ButtonVariant, string> = {
  primary: "bg-primary text-primary-fg hover:opacity-90",
  secondary: "border border-border bg-card hover:bg-muted",
  danger: "bg-danger text-white hover:opacity-90",
  ghost: "hover:bg-muted",
};

export const Button = forwardRef<
  HTMLButtonElement,
  React.ButtonHTMLAttributes<HTMLButtonElement> & { variant?: ButtonVariant; busy?: boolean; size?: "sm" | "md" }
>(function Button({ variant = "secondary", busy, size = "md", className, children, disabled, ...rest }, ref) {
  return (
    <button
      ref={ref}
      className={cx(
        "inline-flex items-center justify-center gap-1.5 rounded-md font-medium transition disabled:cursor-not-allowed disabled:opacity-50",
        size === "sm" ? "h-7 px-2.5 text-xs" : "h-9 px-3.5 text-sm",
        BUTTON[variant],
        className,
      )}
      disabled={disabled || busy}
      aria-busy={busy || undefined}
      {...rest}
    >
      {busy && <Spinner className="h-3.5 w-3.5" />}
      {children}
    </button>
  );
});

export function Spinner({ className }: { className?: string }) {
  return (
    <span
      role="status"
      aria-label="loading"
      className={cx("inline-block animate-spin rounded-full border-2 border-current border-t-transparent", className ?? "h-4 w-4")}
    />
  );
}

export function Card({ title, actions, children, className }: { title?: React.ReactNode; actions?: React.ReactNode; children: React.ReactNode; className?: string }) {
  return (
    <section className={cx("rounded-lg border border-border bg-card p-4 shadow-sm", className)}>
      {(title || actions) && (
        <header className="mb-3 flex flex-wrap items-center justify-between gap-2">
          {title && <h2 className="text-sm font-semibold">{title}</h2>}
          {actions && <div className="flex flex-wrap items-center gap-2">{actions}</div>}
        </header>
      )}
      {children}
    </section>
  );
}

export function PageHeader({ title, subtitle, actions }: { title: React.ReactNode; subtitle?: React.ReactNode; actions?: React.ReactNode }) {
  return (
    <div className="mb-4 flex flex-wrap items-start justify-between gap-3">
      <div className="min-w-0">
        <h1 className="truncate text-xl font-semibold">{title}</h1>
        {subtitle && <p className="mt-0.5 text-sm text-muted-fg">{subtitle}</p>}
      </div>
      {actions && <div className="flex flex-wrap items-center gap-2">{actions}</div>}
    </div>
  );
}

/** Colours per state, shared by VMs, tasks, executions, workers and workspaces. */
const STATUS_TONE: Record<string, string> = {
  running: "bg-green-500/15 text-green-700 dark:text-green-400",
  ready: "bg-green-500/15 text-green-700 dark:text-green-400",
  completed: "bg-green-500/15 text-green-700 dark:text-green-400",
  active: "bg-green-500/15 text-green-700 dark:text-green-400",
  online: "bg-green-500/15 text-green-700 dark:text-green-400",
  healthy: "bg-green-500/15 text-green-700 dark:text-green-400",
  pending: "bg-amber-500/15 text-amber-700 dark:text-amber-400",
  creating: "bg-amber-500/15 text-amber-700 dark:text-amber-400",
  preparing: "bg-amber-500/15 text-amber-700 dark:text-amber-400",
  scheduled: "bg-amber-500/15 text-amber-700 dark:text-amber-400",
  queued: "bg-amber-500/15 text-amber-700 dark:text-amber-400",
  paused: "bg-sky-500/15 text-sky-700 dark:text-sky-400",
  draining: "bg-sky-500/15 text-sky-700 dark:text-sky-400",
  stopped: "bg-zinc-500/15 text-zinc-600 dark:text-zinc-400",
  cancelled: "bg-zinc-500/15 text-zinc-600 dark:text-zinc-400",
  deleted: "bg-zinc-500/15 text-zinc-600 dark:text-zinc-400",
  offline: "bg-zinc-500/15 text-zinc-600 dark:text-zinc-400",
  failed: "bg-red-500/15 text-red-700 dark:text-red-400",
  unhealthy: "bg-red-500/15 text-red-700 dark:text-red-400",
  error: "bg-red-500/15 text-red-700 dark:text-red-400",
};

export function StatusBadge({ status }: { status: string | null | undefined }) {
  const s = (status ?? "unknown").toLowerCase();
  return (
    <span
      data-status={s}
      className={cx("inline-flex items-center rounded-full px-2 py-0.5 text-xs font-medium", STATUS_TONE[s] ?? "bg-muted text-muted-fg")}
    >
      {s}
    </span>
  );
}

export function Badge({ children, className }: { children: React.ReactNode; className?: string }) {
  return <span className={cx("inline-flex items-center rounded border border-border px-1.5 py-0.5 text-xs", className)}>{children}</span>;
}

/** A readable error: never a blank page. */
export function ErrorBanner({ error, onRetry, onDismiss }: { error: string | null | undefined; onRetry?: () => void; onDismiss?: () => void }) {
  if (!error) return null;
  return (
    <div role="alert" className="mb-3 flex flex-wrap items-start justify-between gap-2 rounded-md border border-red-500/40 bg-red-500/10 px-3 py-2 text-sm text-red-800 dark:text-red-300">
      <span className="min-w-0 break-words">{error}</span>
      <span className="flex gap-2">
        {onRetry && (
          <Button size="sm" onClick={onRetry}>
            Retry
          </Button>
        )}
        {onDismiss && (
          <Button size="sm" variant="ghost" onClick={onDismiss} aria-label="Dismiss">
            ✕
          </Button>
        )}
      </span>
    </div>
  );
}

/** What to do when there is nothing to show. */
export function EmptyState({ title, hint, action }: { title: string; hint?: React.ReactNode; action?: React.ReactNode }) {
  return (
    <div className="flex flex-col items-center justify-center gap-2 rounded-lg border border-dashed border-border px-4 py-10 text-center">
      <p className="font-medium">{title}</p>
      {hint && <p className="max-w-md text-sm text-muted-fg">{hint}</p>}
      {action}
    </div>
  );
}

export function Loading({ label = "Loading…" }: { label?: string }) {
  return (
    <div className="flex items-center gap-2 py-6 text-sm text-muted-fg">
      <Spinner /> {label}
    </div>
  );
}

const FIELD = "h-9 w-full rounded-md border border-border bg-background px-2.5 text-sm outline-none focus:ring-2 focus:ring-primary/40";

export const Input = forwardRef<HTMLInputElement, React.InputHTMLAttributes<HTMLInputElement>>(function Input({ className, ...rest }, ref) {
  return <input ref={ref} className={cx(FIELD, className)} {...rest} />;
});

export const Select = forwardRef<HTMLSelectElement, React.SelectHTMLAttributes<HTMLSelectElement>>(function Select({ className, children, ...rest }, ref) {
  return (
    <select ref={ref} className={cx(FIELD, "pr-7", className)} {...rest}>
      {children}
    </select>
  );
});

export const Textarea = forwardRef<HTMLTextAreaElement, React.TextareaHTMLAttributes<HTMLTextAreaElement>>(function Textarea({ className, ...rest }, ref) {
  return <textarea ref={ref} className={cx(FIELD, "h-auto min-h-20 py-2 font-mono", className)} {...rest} />;
});

/** A labelled form field; `hint` under it, `error` in red. */
export function Field({ label, hint, error, children }: { label: string; hint?: React.ReactNode; error?: string | null; children: (id: string) => React.ReactNode }) {
  const id = useId();
  return (
    <div className="flex flex-col gap-1">
      <label htmlFor={id} className="text-sm font-medium">
        {label}
      </label>
      {children(id)}
      {hint && !error && <p className="text-xs text-muted-fg">{hint}</p>}
      {error && <p className="text-xs text-red-600 dark:text-red-400">{error}</p>}
    </div>
  );
}

/** A modal dialog on the native <dialog> element (focus trap and Escape for free). */
export function Dialog({ open, onClose, title, children, footer, wide }: { open: boolean; onClose: () => void; title: string; children: React.ReactNode; footer?: React.ReactNode; wide?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) {
      if (typeof dialog.showModal === "function") dialog.showModal();
      else dialog.setAttribute("open", "");
    }
    if (!open && dialog.open) {
      if (typeof dialog.close === "function") dialog.close();
      else dialog.removeAttribute("open");
    }
  }, [open]);
  return (
    <dialog
      ref={ref}
      onClose={onClose}
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
      aria-label={title}
      className={cx("m-auto w-[calc(100%-2rem)] rounded-lg border border-border bg-card p-0 text-fg shadow-xl backdrop:bg-black/50", wide ? "max-w-2xl" : "max-w-md")}
    >
      {open && (
        <div className="flex max-h-[85vh] flex-col">
          <header className="flex items-center justify-between border-b border-border px-4 py-3">
            <h2 className="font-semibold">{title}</h2>
            <Button variant="ghost" size="sm" onClick={onClose} aria-label="Close">
              ✕
            </Button>
          </header>
          <div className="overflow-y-auto px-4 py-3">{children}</div>
          {footer && <footer className="flex flex-wrap justify-end gap-2 border-t border-border px-4 py-3">{footer}</footer>}
        </div>
      )}
    </dialog>
  );
}

/** "Are you sure?" with the consequence spelled out. */
export function ConfirmDialog({ open, title, message, confirmLabel = "Delete", busy, error, onConfirm, onClose }: { open: boolean; title: string; message: React.ReactNode; confirmLabel?: string; busy?: boolean; error?: string | null; onConfirm: () => void; onClose: () => void }) {
  return (
    <Dialog
      open={open}
      onClose={onClose}
      title={title}
      footer={
        <>
          <Button onClick={onClose}>Cancel</Button>
          <Button variant="danger" busy={busy} onClick={onConfirm}>
            {confirmLabel}
          </Button>
        </>
      }
    >
      <ErrorBanner error={error} />
      <div className="text-sm">{message}</div>
    </Dialog>
  );
}

/** A table that scrolls sideways on a phone instead of breaking the layout. */
export function Table({ head, children, label }: { head: React.ReactNode[]; children: React.ReactNode; label?: string }) {
  return (
    <div className="overflow-x-auto rounded-lg border border-border">
      <table className="w-full min-w-[36rem] text-left text-sm" aria-label={label}>
        <thead className="bg-muted text-xs uppercase text-muted-fg">
          <tr>
            {head.map((h, i) => (
              <th key={i} scope="col" className="px-3 py-2 font-medium">
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody className="divide-y divide-border">{children}</tbody>
      </table>
    </div>
  );
}

export function Td({ children, className, ...rest }: React.TdHTMLAttributes<HTMLTableCellElement>) {
  return (
    <td className={cx("px-3 py-2 align-middle", className)} {...rest}>
      {children}
    </td>
  );
}

/** A usage bar: used of total, coloured by how full it is. */
export function UsageBar({ used, total, label, unit = "" }: { used: number; total: number; label: string; unit?: string }) {
  const pct = total > 0 ? Math.min(100, (used / total) * 100) : 0;
  const tone = pct >= 90 ? "bg-red-500" : pct >= 70 ? "bg-amber-500" : "bg-primary";
  return (
    <div className="flex flex-col gap-1" aria-label={`${label} ${used} of ${total}${unit}`}>
      <div className="flex justify-between text-xs text-muted-fg">
        <span>{label}</span>
        <span>
          {used} / {total}
          {unit}
        </span>
      </div>
      <div className="h-2 overflow-hidden rounded-full bg-muted" role="progressbar" aria-valuenow={Math.round(pct)} aria-valuemin={0} aria-valuemax={100}>
        <div className={cx("h-full rounded-full transition-all", tone)} style={{ width: `${pct}%` }} />
      </div>
    </div>
  );
}

/** A number with a label, for the overview. */
export function Stat({ label, value, hint }: { label: string; value: React.ReactNode; hint?: React.ReactNode }) {
  return (
    <div className="rounded-lg border border-border bg-card p-3">
      <div className="text-xs uppercase text-muted-fg">{label}</div>
      <div className="mt-1 text-2xl font-semibold tabular-nums">{value}</div>
      {hint && <div className="mt-0.5 text-xs text-muted-fg">{hint}</div>}
    </div>
  );
}

/** Preformatted output (command output, payloads). */
export function Pre({ children, className }: { children: React.ReactNode; className?: string }) {
  return <pre className={cx("max-h-96 overflow-auto whitespace-pre-wrap break-all rounded-md bg-muted p-3 font-mono text-xs", className)}>{children}</pre>;
}
