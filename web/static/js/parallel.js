// Parallel coordinates as SVG: one vertical axis per parameter and one for the value, one line per finished
// trial, darker the better its value. Every label is set as text (createTextNode), never as markup.
// Brushing: a vertical drag on an axis keeps the trials whose value there falls in the dragged range (the others
// fade); ranges on several axes must all hold; a click on an axis clears its range. The ranges outlive the page's
// refreshes (the study page draws this again every few seconds while the study runs).
import { clear, el } from "./dom.js";
import { fmt } from "./plots.js";

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 280, TOP = 34, BOTTOM = 30, SIDE = 60;
const brushes = new Map(); // axis name -> [lo, hi] as positions on it (0 bottom, 1 top)

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.append(document.createTextNode(String(text)));
  return node;
}

// An axis: where a value lies on it (0 at the bottom, 1 at the top) and the labels of its ends or choices.
function axis(name, values, spec) {
  if (spec && spec.type === "categorical") {
    const choices = spec.choices.map(String);
    const at = (v) => (choices.length < 2 ? 0.5 : choices.indexOf(String(v)) / (choices.length - 1));
    return { name, at, ticks: choices.map((c) => [at(c), c]) };
  }
  const nums = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  const log = spec && spec.log && nums.every((v) => v > 0);
  const f = log ? Math.log10 : (v) => v;
  let lo = spec && spec.low !== undefined ? spec.low : Math.min(...nums);
  let hi = spec && spec.high !== undefined ? spec.high : Math.max(...nums);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
  const span = f(hi) - f(lo);
  const at = (v) => (span ? (f(v) - f(lo)) / span : 0.5);
  return { name, at, ticks: [[0, fmt(lo)], [1, fmt(hi)]] };
}

export function parallel(container, trials, names, specs, direction, metric) {
  clear(container);
  const width = Math.max(360, container.clientWidth || 800);
  const values = trials.map((t) => t.value);
  const axes = [...names.map((n) => axis(n, trials.map((t) => t.params[n]), specs[n])), axis(metric, values, null)];
  const x = (i) => SIDE + (i * (width - 2 * SIDE)) / Math.max(1, axes.length - 1);
  const y = (p) => TOP + (1 - p) * (HEIGHT - TOP - BOTTOM);
  const root = svg("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: "img" });
  root.append(svg("title", {}, `${trials.length} trials across ${names.length} parameters and ${metric}`));
  const lo = Math.min(...values), hi = Math.max(...values);
  // Worst first, so that the best lines are drawn last, on top.
  const order = trials.slice().sort((a, b) => (direction === "maximize" ? a.value - b.value : b.value - a.value));
  const lines = [];
  for (const t of order) {
    const goodness = hi === lo ? 1 : direction === "maximize" ? (t.value - lo) / (hi - lo) : (hi - t.value) / (hi - lo);
    const at = axes.map((a, i) => {
      const v = i < names.length ? t.params[names[i]] : t.value;
      return v === undefined ? null : a.at(v);
    });
    const points = at.map((p, i) => (p === null ? null : `${x(i).toFixed(1)},${y(p).toFixed(1)}`)).filter(Boolean).join(" ");
    const line = svg("polyline", { points, fill: "none", stroke: `hsl(221, 83%, ${Math.round(82 - 50 * goodness)}%)`,
      "stroke-width": 1.6, "stroke-opacity": 0.9, class: "trial", "data-trial": t.number });
    line.append(svg("title", {}, `trial #${t.number}: ${metric} ${fmt(t.value)}`));
    root.append(line);
    lines.push({ line, at });
  }
  const note = el("p", { class: "muted small" });
  const apply = () => {
    let kept = 0;
    for (const { line, at } of lines) {
      const keep = axes.every((a, i) => {
        const range = brushes.get(a.name);
        return !range || (at[i] !== null && at[i] >= range[0] - 1e-9 && at[i] <= range[1] + 1e-9);
      });
      line.classList.toggle("dim", !keep);
      kept += keep ? 1 : 0;
    }
    const brushed = axes.filter((a) => brushes.has(a.name)).map((a) => a.name);
    note.textContent = brushed.length
      ? `${kept} of ${lines.length} trials in the ranges dragged on ${brushed.join(", ")} · click an axis to clear its range`
      : "ranges: each parameter's search space; the value's lowest to highest seen · drag along an axis to keep a range";
  };
  axes.forEach((a, i) => {
    root.append(svg("line", { x1: x(i), x2: x(i), y1: TOP, y2: HEIGHT - BOTTOM, stroke: "#6b7280", "stroke-width": 1 }));
    root.append(svg("text", { x: x(i), y: TOP - 16, "text-anchor": "middle", class: "axis" }, a.name));
    for (const [p, label] of a.ticks) {
      root.append(svg("text", { x: x(i) + 5, y: y(p) + 4, class: "tick" }, label));
    }
    root.append(brushable(root, a.name, x(i), y, apply));
  });
  container.append(root);
  container.append(note);
  apply();
}

// An axis's drag area, and its range drawn as a band: a drag sets the range, a click (no drag) clears it.
function brushable(root, name, cx, y, apply) {
  const group = svg("g", { class: "brush", "data-axis": name });
  const band = svg("rect", { x: cx - 7, width: 14, y: 0, height: 0, class: "band" });
  const area = svg("rect", { x: cx - 12, width: 24, y: TOP, height: HEIGHT - TOP - BOTTOM, class: "area" });
  const toPos = (clientY) => {
    const box = root.getBoundingClientRect();
    const svgY = ((clientY - box.top) * HEIGHT) / box.height;
    return Math.min(1, Math.max(0, 1 - (svgY - TOP) / (HEIGHT - TOP - BOTTOM)));
  };
  const show = () => {
    const range = brushes.get(name);
    band.setAttribute("y", range ? y(range[1]) : 0);
    band.setAttribute("height", range ? Math.max(1, y(range[0]) - y(range[1])) : 0);
  };
  let from = null;
  area.addEventListener("pointerdown", (e) => { from = toPos(e.clientY); area.setPointerCapture(e.pointerId); });
  area.addEventListener("pointermove", (e) => {
    if (from === null) return;
    const to = toPos(e.clientY);
    if (Math.abs(to - from) > 0.01) { brushes.set(name, [Math.min(from, to), Math.max(from, to)]); show(); apply(); }
  });
  area.addEventListener("pointerup", (e) => {
    if (from !== null && Math.abs(toPos(e.clientY) - from) <= 0.01) { brushes.delete(name); show(); apply(); }
    from = null;
  });
  show();
  group.append(band, area);
  return group;
}
