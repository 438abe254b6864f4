"use client";

// Admin pages call admin-only routes: for any other role, say so up front instead
// of showing the API's 403s.

import { useSession } from "@/lib/session";
import { EmptyState } from "@/components/ui";

export function RequireAdmin({ what, children }: { what: string; children: React.ReactNode }) {
  const { session, can } = useSession();
  if (can("admin")) return <>{children}</>;
  return (
    <EmptyState
      title={`${what} needs the admin role`}
      hint={`You are signed in as ${session?.name ?? "someone"} with the ${session?.role ?? "unknown"} role. Ask an admin, or sign in with an admin account or key.`}
    />
  );
}
