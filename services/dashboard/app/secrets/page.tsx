"use client";

import { useSession } from "@/lib/session";
import { EmptyState, PageHeader } from "@/components/ui";
import { SecretsPanel } from "@/components/workspaces/secrets-panel";

export default function SecretsPage() {
  const { can } = useSession();
  return (
    <div>
      <PageHeader
        title="Secrets"
        subtitle="Global secrets reach every workspace as environment variables; a workspace's own secret of the same name wins."
      />
      {can("operator") ? (
        <SecretsPanel basePath="/secrets" emptyHint="Add an API key or token below (e.g. ANTHROPIC_API_KEY) to give it to every workspace. Values are stored encrypted and never shown again." />
      ) : (
        <EmptyState title="Secrets need the operator role" hint="Your role can see workspaces but not the secrets given to them. Ask an admin for an operator account or key." />
      )}
    </div>
  );
}
