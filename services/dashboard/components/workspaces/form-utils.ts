// Parsing of the free-text form fields (one item per line, KEY=VALUE lines) and
// mapping of the API's 400 messages to the field they name. Pure: unit-testable.

/** Non-empty trimmed lines. */
export function parseLines(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
}

/** `KEY=VALUE` lines into an object; throws naming the first bad line. */
export function parseKeyValues(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`line ${i + 1} ("${line}") is not KEY=VALUE`);
    out[line.slice(0, eq).trim()] = line.slice(eq + 1);
  });
  return out;
}

export function formatKeyValues(values: Record<string, string> | null | undefined): string {
  return Object.entries(values ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join("\n");
}

/**
 * Which form field an API validation message is about. The gateway's messages
 * name the field ("git_branch … is not a valid branch", "tool \"x\" must be …"),
 * so the first matching pattern wins; more specific ones come first.
 */
export function fieldOfMessage<F extends string>(message: string, patterns: [RegExp, F][]): F | null {
  for (const [pattern, field] of patterns) {
    if (pattern.test(message)) return field;
  }
  return null;
}

/** "30 min", "2 h", "never" for an idle timeout in seconds. */
export function idleLabel(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds === 0) return "never";
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}
