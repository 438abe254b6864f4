"use client";

import { useRouter } from "next/navigation";
import { useSession } from "@/lib/session";
import type { Environment } from "@/lib/types";
import { Card, EmptyState, PageHeader } from "@/components/ui";
import { EnvironmentForm } from "@/components/workspaces/environment-form";

export default function NewEnvironmentPage() {
  const { api, can } = useSession();
  const router = useRouter();
  return (
    <div>
      <PageHeader title="Create environment" subtitle="A template workspaces start from. Only the name is required." />
      {can("operator") ? (
        <Card>
          <EnvironmentForm
            submitLabel="Create environment"
            onSubmit={async (body) => {
              const env = await api.post<Environment>("/environments", body);
              router.push(`/environments/detail/?id=${encodeURIComponent(env.id)}`);
            }}
            onCancel={() => router.push("/environments/")}
          />
        </Card>
      ) : (
        <EmptyState title="Creating environments needs the operator role" hint="Ask an admin for an operator account or key." />
      )}
    </div>
  );
}
