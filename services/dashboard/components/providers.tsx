"use client";

import { SessionProvider } from "@/lib/session";
import { AppShell } from "./shell";

export function Providers({ children }: { children: React.ReactNode }) {
  return (
    <SessionProvider>
      <AppShell>{children}</AppShell>
    </SessionProvider>
  );
}
