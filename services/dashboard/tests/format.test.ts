import { describe, expect, it } from "vitest";
import { duration, formatBytes, percent, shortId, timeAgo } from "@/lib/format";

describe("format", () => {
  const now = Date.parse("2026-01-01T12:00:00Z");
  it("says how long ago", () => {
    expect(timeAgo("2026-01-01T11:59:55Z", now)).toBe("5s ago");
    expect(timeAgo("2026-01-01T11:50:00Z", now)).toBe("10m ago");
    expect(timeAgo("2025-12-29T12:00:00Z", now)).toBe("3d ago");
    expect(timeAgo(null, now)).toBe("—");
    expect(timeAgo("not a date", now)).toBe("—");
  });
  it("formats durations and sizes", () => {
    expect(duration("2026-01-01T11:59:59.650Z", "2026-01-01T12:00:00Z")).toBe("350 ms");
    expect(duration("2026-01-01T11:56:40Z", "2026-01-01T12:00:00Z")).toBe("3m 20s");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(512)).toBe("512 B");
    expect(percent(3, 4)).toBe(75);
    expect(percent(1, 0)).toBe(0);
    expect(shortId("0123456789abcdef")).toBe("01234567");
  });
});
