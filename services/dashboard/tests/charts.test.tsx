import { describe, expect, it } from "vitest";
import { render, screen } from "@testing-library/react";
import { BarChart, Sparkline, StackedBar } from "@/components/charts";

describe("charts", () => {
  it("BarChart draws one bar per value and series and sums them in its label", () => {
    const { container } = render(
      <BarChart
        label="Tasks per minute"
        series={[
          { name: "completed", tone: "green", values: [1, 2, 3, 0, 4] },
          { name: "failed", tone: "red", values: [0, 1, 0, 0, 2] },
        ]}
        line={{ name: "created", tone: "primary", values: [2, 2, 2, 2, 2] }}
      />,
    );
    expect(container.querySelectorAll('rect[data-bar="completed"]')).toHaveLength(5);
    expect(container.querySelectorAll('rect[data-bar="failed"]')).toHaveLength(5);
    const img = screen.getByRole("img");
    expect(img.getAttribute("aria-label")).toBe("Tasks per minute: 10 completed, 3 failed, 10 created over 5 minutes");
    // The tallest bar reaches the top; an empty minute has no height.
    const heights = [...container.querySelectorAll('rect[data-bar="completed"]')].map((r) => Number(r.getAttribute("height")));
    expect(heights[3]).toBe(0);
    expect(Math.max(...heights)).toBe(heights[4]);
  });

  it("StackedBar draws a segment per non-zero state and names them", () => {
    const { container } = render(
      <StackedBar
        label="Sandboxes by state"
        segments={[
          { label: "RUNNING", value: 3, tone: "green" },
          { label: "PAUSED", value: 0, tone: "sky" },
          { label: "FAILED", value: 1, tone: "red" },
        ]}
      />,
    );
    const segments = container.querySelectorAll("rect[data-segment]");
    expect(segments).toHaveLength(2);
    expect(Number(segments[0].getAttribute("width"))).toBeCloseTo(75);
    expect(screen.getByRole("img").getAttribute("aria-label")).toBe("Sandboxes by state: 3 RUNNING, 1 FAILED");
  });

  it("Sparkline summarises its points", () => {
    render(<Sparkline label="Tasks created per minute" values={[0, 4, 1]} />);
    expect(screen.getByRole("img").getAttribute("aria-label")).toBe("Tasks created per minute: 5 in total over 3 points, at most 4");
  });
});
