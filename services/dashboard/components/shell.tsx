"use client";

// The frame around every page: navigation (a sidebar on a laptop, a menu on a
// phone), the theme switch, who is logged in. Pages other than /login need a
// session: without one the shell sends the browser to /login/?next=<page>.

import Link from "next/link";
import { usePathname, useRouter } from "next/navigation";
import { Suspense, useEffect, useState } from "react";
import { useSession } from "@/lib/session";
import type { Role } from "@/lib/types";
import { Button, Loading, cx } from "./ui";

interface NavItem {
  href: string;
  label: string;
  role?: Role;
}

export const NAV: { section: string; items: NavItem[] }[] = [
  {
    section: "Platform",
    items: [
      { href: "/", label: "Overview" },
      { href: "/sandboxes/", label: "Sandboxes" },
      { href: "/tasks/", label: "Tasks" },
      { href: "/workers/", label: "Workers" },
      { href: "/queue/", label: "Queue" },
      { href: "/logs/", label: "Logs" },
    ],
  },
  {
    section: "Agents",
    items: [
      { href: "/workspaces/", label: "Workspaces" },
      { href: "/environments/", label: "Environments" },
      { href: "/secrets/", label: "Secrets" },
    ],
  },
  {
    section: "Admin",
    items: [
      { href: "/admin/keys/", label: "API keys", role: "admin" },
      { href: "/admin/users/", label: "Users", role: "admin" },
      { href: "/audit/", label: "Audit log", role: "admin" },
    ],
  },
];

function isActive(pathname: string, href: string): boolean {
  if (href === "/") return pathname === "/";
  return pathname === href || pathname.startsWith(href) || `${pathname}/` === href;
}

export function ThemeToggle() {
  const [dark, setDark] = useState(false);
  useEffect(() => setDark(document.documentElement.classList.contains("dark")), []);
  const toggle = () => {
    const next = !dark;
    document.documentElement.classList.toggle("dark", next);
    window.localStorage.setItem("aetherium.theme", next ? "dark" : "light");
    setDark(next);
  };
  return (
    <Button variant="ghost" size="sm" onClick={toggle} aria-label={dark ? "Switch to light theme" : "Switch to dark theme"} title="Theme">
      {dark ? "☀" : "☾"}
    </Button>
  );
}

function Nav({ onNavigate }: { onNavigate?: () => void }) {
  const pathname = usePathname();
  const { can, api } = useSession();
  return (
    <nav aria-label="Main" className="flex flex-col gap-4">
      {NAV.map((group) => {
        const items = group.items.filter((item) => !item.role || can(item.role));
        if (!items.length) return null;
        return (
          <div key={group.section}>
            <div className="px-2 pb-1 text-xs font-semibold uppercase text-muted-fg">{group.section}</div>
            {items.map((item) => (
              <Link
                key={item.href}
                href={item.href}
                onClick={onNavigate}
                aria-current={isActive(pathname, item.href) ? "page" : undefined}
                className={cx(
                  "block rounded-md px-2 py-1.5 text-sm",
                  isActive(pathname, item.href) ? "bg-muted font-medium text-fg" : "text-muted-fg hover:bg-muted hover:text-fg",
                )}
              >
                {item.label}
              </Link>
            ))}
          </div>
        );
      })}
      {/* The gateway's own API reference (OpenAPI): outside this app, on the gateway. */}
      <a href={`${api.baseUrl}/api/v1/docs`} target="_blank" rel="noreferrer" className="block rounded-md px-2 py-1.5 text-sm text-muted-fg hover:bg-muted hover:text-fg">
        API reference ↗
      </a>
    </nav>
  );
}

export function AppShell({ children }: { children: React.ReactNode }) {
  const { session, logout, endedReason } = useSession();
  const pathname = usePathname();
  const router = useRouter();
  const [menuOpen, setMenuOpen] = useState(false);
  const onLogin = pathname === "/login" || pathname === "/login/";

  useEffect(() => {
    if (session === undefined && !onLogin) {
      const next = `${window.location.pathname}${window.location.search}`;
      router.replace(`/login/?next=${encodeURIComponent(next)}`);
    }
  }, [session, onLogin, router]);

  if (onLogin) {
    return <Suspense fallback={<Loading />}>{children}</Suspense>;
  }
  if (!session) {
    // Reading storage (first render) or on the way to /login.
    return (
      <div className="p-6">
        <Loading label={endedReason ?? "Loading…"} />
      </div>
    );
  }

  return (
    <div className="flex min-h-screen">
      {/* The aside spans the page (its background and border), its content sticks. */}
      <aside className="hidden w-56 shrink-0 border-r border-border bg-card md:block">
        <div className="sticky top-0 flex max-h-screen flex-col overflow-y-auto p-3">
          <Link href="/" className="mb-4 px-2 text-lg font-semibold">
            Aetherium
          </Link>
          <Nav />
        </div>
      </aside>
      <div className="flex min-w-0 flex-1 flex-col">
        <header className="sticky top-0 z-10 flex h-12 items-center justify-between gap-2 border-b border-border bg-card/90 px-3 backdrop-blur">
          <div className="flex items-center gap-2">
            <Button variant="ghost" size="sm" className="md:hidden" aria-label="Menu" aria-expanded={menuOpen} onClick={() => setMenuOpen((o) => !o)}>
              ☰
            </Button>
            <span className="font-semibold md:hidden">Aetherium</span>
          </div>
          <div className="flex items-center gap-2 text-sm">
            <ThemeToggle />
            <span className="hidden text-muted-fg sm:inline" data-testid="whoami">
              {session.name} · {session.role}
            </span>
            <Button size="sm" onClick={() => void logout()}>
              Log out
            </Button>
          </div>
        </header>
        {menuOpen && (
          <div className="border-b border-border bg-card p-3 md:hidden">
            <Nav onNavigate={() => setMenuOpen(false)} />
          </div>
        )}
        <main className="mx-auto w-full max-w-7xl flex-1 p-3 sm:p-5">
          <Suspense fallback={<Loading />}>{children}</Suspense>
        </main>
      </div>
    </div>
  );
}
