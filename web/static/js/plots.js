// Small uPlot helpers for the Compare and Study pages: a colour per series, overlaid lines on a shared x, and
// points without lines (scatter). Labels reach uPlot as text; it draws axis values on the canvas.
import { el } from "./dom.js";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
  "#4b5563", "#65a30d"];

export const GRID = { stroke: "#eef0f3" };

// A number as a person reads it: up to 6 significant digits, no exponent for ordinary sizes.
export function fmt(v) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString();
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-4 || a >= 1e7) ? v.toExponential(3) : String(Number(v.toPrecision(6)));
}

// The width a chart gets in a grid of columns at least `min` wide.
export function chartWidth(container, min = 380) {
  const w = container.clientWidth || 800;
  const cols = Math.max(1, Math.floor(w / min));
  return Math.max(280, Math.floor((w - 16 * (cols - 1)) / cols));
}

// A titled box holding one uPlot chart, appended to `container`; returns {box, plot}.
export function chartBox(container, title, note) {
  const plot = el("div");
  const box = el("div", { class: "chart" }, title ? el("h3", { text: title }) : null, plot);
  if (note) box.append(el("div", { class: "note", text: note }));
  container.append(box);
  return { box, plot };
}

// Lines sharing one x scale. `series`: one {label, colour, x, y} each; joined so that a point one series lacks
// is spanned (undefined), while a null it has (NaN, infinity) stays a gap (uPlot's default). With `zoom`, a
// dragged range calls zoom.range(u, lo, hi) (to fetch it again) and a double-click zoom.reset(u).
export function joined(series) {
  const tables = series.map((s) => [s.x, s.y]);
  return tables.length === 1 ? tables[0] : uPlot.join(tables);
}

export function overlay(target, width, series, { xLabel = "step", zoom = null } = {}) {
  const cursor = { drag: { x: true, y: false } };
  const hooks = {};
  if (zoom) {
    cursor.drag.setScale = false;
    cursor.bind = { dblclick: (u) => () => { zoom.reset(u); return null; } };
    hooks.setSelect = [(u) => {
      if (u.select.width < 5) return;
      const lo = u.posToVal(u.select.left, "x"), hi = u.posToVal(u.select.left + u.select.width, "x");
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      u.setScale("x", { min: lo, max: hi });
      zoom.range(u, lo, hi);
    }];
  }
  return new uPlot({
    width, height: 240,
    scales: { x: { time: false } },
    series: [{ label: xLabel }, ...series.map((s) => ({
      label: s.label, stroke: s.colour, width: 1.5, spanGaps: false, points: { show: false },
    }))],
    axes: [{ grid: GRID }, { grid: GRID, size: 60 }],
    legend: { live: true },
    cursor,
    hooks,
  }, joined(series), target);
}

// Charts in a grid that keep filling its width as the window changes.
export function fitOnResize(container, charts, min = 380) {
  new ResizeObserver(() => {
    const width = chartWidth(container, min);
    for (const u of charts) u.setSize({ width, height: u.height });
  }).observe(container);
}

// Points only. `points`: [[x, y], ...]; `ticks`: names for integer x (a categorical parameter); `log`: x on a
// log scale (a log-uniform parameter).
export function scatter(target, width, xLabel, yLabel, points, { ticks = null, log = false, colour = PALETTE[0] } = {}) {
  const sorted = points.slice().sort((a, b) => a[0] - b[0]);
  const xAxis = { grid: GRID };
  if (log) xAxis.values = (u, splits) => splits.map((v) => (Number.isInteger(Math.log10(v)) ? fmt(v) : ""));
  if (ticks) {
    xAxis.splits = () => ticks.map((_, i) => i);
    xAxis.values = (u, splits) => splits.map((i) => (Number.isInteger(i) && ticks[i] !== undefined ? ticks[i] : ""));
  }
  return new uPlot({
    width, height: 220,
    scales: { x: { time: false, ...(ticks ? { range: () => [-0.5, ticks.length - 0.5] } : log ? { distr: 3 } : {}) } },
    series: [{ label: xLabel }, {
      label: yLabel, stroke: colour, fill: colour + "55", paths: () => null, points: { show: true, size: 8, width: 1 },
    }],
    axes: [xAxis, { grid: GRID, size: 60 }],
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
  }, [sorted.map((p) => p[0]), sorted.map((p) => p[1])], target);
}
