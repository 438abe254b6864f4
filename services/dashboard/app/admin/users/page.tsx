"use client";

import { useState } from "react";
import { errorMessage } from "@/lib/api";
import { useSession } from "@/lib/session";
import { useResource } from "@/lib/hooks";
import { fullTime, timeAgo } from "@/lib/format";
import type { CreateUserRequest, Role, UpdateUserRequest, User, UserList } from "@/lib/types";
import { Button, ConfirmDialog, Dialog, EmptyState, ErrorBanner, Field, Input, Loading, PageHeader, Select, StatusBadge, Table, Td } from "@/components/ui";
import { RequireAdmin } from "@/components/admin/require-admin";

const ROLES: Role[] = ["viewer", "operator", "admin"];
const MIN_PASSWORD = 12;

function passwordProblem(password: string): string | null {
  return password.length < MIN_PASSWORD ? `At least ${MIN_PASSWORD} characters (${password.length} so far).` : null;
}

function CreateUserDialog({ open, onClose, onCreated }: { open: boolean; onClose: () => void; onCreated: () => void }) {
  const { api } = useSession();
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState<Role>("viewer");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [touched, setTouched] = useState(false);

  const close = () => {
    setUsername("");
    setPassword("");
    setRole("viewer");
    setError(null);
    setTouched(false);
    onClose();
  };

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setTouched(true);
    if (passwordProblem(password)) return;
    setBusy(true);
    setError(null);
    try {
      const body: CreateUserRequest = { username: username.trim(), password, role };
      await api.post<User>("/users", body);
      onCreated();
      close();
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <Dialog
      open={open}
      onClose={close}
      title="Create user"
      footer={
        <>
          <Button onClick={close}>Cancel</Button>
          <Button type="submit" form="create-user" variant="primary" busy={busy}>
            Create user
          </Button>
        </>
      }
    >
      <form id="create-user" onSubmit={submit} className="flex flex-col gap-3" autoComplete="off">
        <ErrorBanner error={error} />
        <Field label="Username" hint="1–64 of letters, digits, '.', '_', '@', '-'.">
          {(id) => <Input id={id} name="username" value={username} onChange={(e) => setUsername(e.target.value)} required autoFocus />}
        </Field>
        <Field label="Password" hint={`At least ${MIN_PASSWORD} characters.`} error={touched ? passwordProblem(password) : null}>
          {(id) => <Input id={id} name="password" type="password" autoComplete="new-password" value={password} onChange={(e) => setPassword(e.target.value)} onBlur={() => setTouched(true)} required />}
        </Field>
        <Field label="Role">
          {(id) => (
            <Select id={id} name="role" value={role} onChange={(e) => setRole(e.target.value as Role)}>
              {ROLES.map((r) => (
                <option key={r} value={r}>
                  {r}
                </option>
              ))}
            </Select>
          )}
        </Field>
      </form>
    </Dialog>
  );
}

function ResetPasswordDialog({ user, onClose, onDone }: { user: User | null; onClose: () => void; onDone: () => void }) {
  const { api } = useSession();
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [touched, setTouched] = useState(false);

  const close = () => {
    setPassword("");
    setError(null);
    setTouched(false);
    onClose();
  };

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setTouched(true);
    if (!user || passwordProblem(password)) return;
    setBusy(true);
    setError(null);
    try {
      const body: UpdateUserRequest = { password };
      await api.patch<User>(`/users/${encodeURIComponent(user.id)}`, body);
      onDone();
      close();
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <Dialog
      open={user !== null}
      onClose={close}
      title={`Reset password of ${user?.username ?? ""}`}
      footer={
        <>
          <Button onClick={close}>Cancel</Button>
          <Button type="submit" form="reset-password" variant="primary" busy={busy}>
            Set password
          </Button>
        </>
      }
    >
      <form id="reset-password" onSubmit={submit} className="flex flex-col gap-3" autoComplete="off">
        <ErrorBanner error={error} />
        <p className="text-sm text-muted-fg">Setting a new password signs the user out of every open session.</p>
        <Field label="New password" hint={`At least ${MIN_PASSWORD} characters.`} error={touched ? passwordProblem(password) : null}>
          {(id) => <Input id={id} name="new_password" type="password" autoComplete="new-password" value={password} onChange={(e) => setPassword(e.target.value)} onBlur={() => setTouched(true)} required autoFocus />}
        </Field>
      </form>
    </Dialog>
  );
}

function Users() {
  const { api, session } = useSession();
  const users = useResource((a, signal) => a.get<UserList>("/users", undefined, signal), []);
  const [creating, setCreating] = useState(false);
  const [resetting, setResetting] = useState<User | null>(null);
  const [toDelete, setToDelete] = useState<User | null>(null);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState<string | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [busyId, setBusyId] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const update = async (user: User, body: UpdateUserRequest) => {
    setBusyId(user.id);
    setActionError(null);
    setNotice(null);
    try {
      const updated = await api.patch<User>(`/users/${encodeURIComponent(user.id)}`, body);
      users.setData((list) => list && { ...list, users: list.users.map((u) => (u.id === updated.id ? updated : u)) });
    } catch (e) {
      setActionError(`${user.username}: ${errorMessage(e)}`);
    } finally {
      setBusyId(null);
    }
  };

  const remove = async () => {
    if (!toDelete) return;
    setDeleting(true);
    setDeleteError(null);
    try {
      await api.delete(`/users/${encodeURIComponent(toDelete.id)}`);
      setToDelete(null);
      users.reload();
    } catch (e) {
      // A 409 here is the API refusing to delete your own account.
      setDeleteError(errorMessage(e));
    } finally {
      setDeleting(false);
    }
  };

  const rows = users.data?.users ?? [];
  const isMe = (u: User) => session?.kind === "session" && session.name === u.username;
  return (
    <div>
      <PageHeader
        title="Users"
        subtitle="Accounts that sign in to this dashboard. Scripts use API keys instead."
        actions={
          <Button variant="primary" onClick={() => setCreating(true)}>
            Create user
          </Button>
        }
      />
      <ErrorBanner error={users.error} onRetry={users.reload} />
      <ErrorBanner error={actionError} onDismiss={() => setActionError(null)} />
      {notice && (
        <p role="status" className="mb-3 text-sm text-green-700 dark:text-green-400">
          {notice}
        </p>
      )}
      {users.loading && !users.data ? (
        <Loading />
      ) : rows.length === 0 && !users.error ? (
        <EmptyState title="No users" hint="Create an account for each person who uses the dashboard, with the lowest role that does their job." />
      ) : (
        <Table head={["Username", "Role", "Status", "Last login", "Created", "Actions"]} label="Users">
          {rows.map((u) => (
            <tr key={u.id} data-testid="user-row">
              <Td className="font-medium">
                {u.username}
                {isMe(u) && <span className="ml-1 text-xs text-muted-fg">(you)</span>}
              </Td>
              <Td>
                <Select
                  aria-label={`Role of ${u.username}`}
                  className="h-8 w-32"
                  value={u.role}
                  disabled={busyId === u.id}
                  onChange={(e) => void update(u, { role: e.target.value as Role })}
                >
                  {ROLES.map((r) => (
                    <option key={r} value={r}>
                      {r}
                    </option>
                  ))}
                </Select>
              </Td>
              <Td>{u.disabled ? <StatusBadge status="disabled" /> : <StatusBadge status="active" />}</Td>
              <Td title={fullTime(u.last_login_at)}>{u.last_login_at ? timeAgo(u.last_login_at) : "never"}</Td>
              <Td title={fullTime(u.created_at)}>{timeAgo(u.created_at)}</Td>
              <Td>
                <div className="flex flex-wrap gap-1">
                  <Button size="sm" busy={busyId === u.id} onClick={() => void update(u, { disabled: !u.disabled })}>
                    {u.disabled ? "Enable" : "Disable"}
                  </Button>
                  <Button size="sm" onClick={() => setResetting(u)}>
                    Reset password
                  </Button>
                  <Button size="sm" variant="ghost" onClick={() => setToDelete(u)} aria-label={`Delete ${u.username}`}>
                    Delete
                  </Button>
                </div>
              </Td>
            </tr>
          ))}
        </Table>
      )}
      <CreateUserDialog open={creating} onClose={() => setCreating(false)} onCreated={users.reload} />
      <ResetPasswordDialog
        user={resetting}
        onClose={() => setResetting(null)}
        onDone={() => setNotice(`Password of ${resetting?.username ?? "the user"} changed; their sessions were ended.`)}
      />
      <ConfirmDialog
        open={toDelete !== null}
        title="Delete user"
        message={
          <>
            Delete <strong>{toDelete?.username}</strong>? They are signed out and cannot sign in again. Their entries in the audit log stay.
          </>
        }
        busy={deleting}
        error={deleteError}
        onConfirm={() => void remove()}
        onClose={() => {
          setToDelete(null);
          setDeleteError(null);
        }}
      />
    </div>
  );
}

export default function UsersPage() {
  return (
    <RequireAdmin what="Managing users">
      <Users />
    </RequireAdmin>
  );
}
