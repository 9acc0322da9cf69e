// Live metric charts (uPlot): one chart per metric, drawn from the server's reduced points (min/max per
// bucket), with live points appended as they arrive; a dragged range is fetched again at full resolution,
// a double-click goes back to the whole run. Metric names go in as text (uPlot sets labels as text too).
import { get, num } from "./api.js";
import { el } from "./dom.js";

const POINTS = 2000;

export class Charts {
  constructor(container, empty, jobId) {
    this.container = container;
    this.empty = empty;
    this.jobId = jobId;
    this.charts = new Map();
    this.frame = 0;
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(container);
  }

  // The whole run so far; returns how many metric batches that covered (where the live stream takes over).
  async load() {
    const body = await get(`/api/jobs/${encodeURIComponent(this.jobId)}/metrics`, { points: POINTS });
    for (const [name, c] of Object.entries(body.metrics)) {
      const chart = this.chart(name);
      chart.x = c.x.slice();
      chart.y = c.y.map(num);
      chart.total = c.total;
      chart.downsampled = c.downsampled;
      this.dirty(chart);
    }
    return body.batches;
  }

  // A live batch: {attempt, rank, points: [[ts, step, {name: value}]]}.
  add(batch) {
    for (const [, step, values] of batch.points) {
      for (const [metric, value] of Object.entries(values)) {
        const name = batch.rank > 0 ? `${metric} [rank ${batch.rank}]` : (this.charts.has(`${metric} [rank 0]`) ? `${metric} [rank 0]` : metric);
        const chart = this.chart(name);
        chart.x.push(step ?? chart.total);
        chart.y.push(num(value));
        chart.total += 1;
        this.dirty(chart);
      }
    }
  }

  chart(name) {
    let chart = this.charts.get(name);
    if (chart) return chart;
    this.empty.hidden = true;
    const note = el("div", { class: "note" });
    const box = el("div", { class: "chart" }, el("h3", { text: name }));
    const plot = el("div");
    box.append(plot, note);
    // Keep charts in name order.
    const after = [...this.charts.keys()].sort().find((n) => n > name);
    this.container.insertBefore(box, after ? this.charts.get(after).box : null);
    chart = { name, box, note, x: [], y: [], total: 0, downsampled: false, zoomed: false, u: null };
    chart.u = new uPlot({
      width: this.width(), height: 220,
      scales: { x: { time: false } },
      series: [{ label: "step" }, { label: name, stroke: "#2563eb", width: 1.5, spanGaps: false, points: { show: false } }],
      axes: [{ grid: { stroke: "#eef0f3" } }, { grid: { stroke: "#eef0f3" }, size: 60 }],
      legend: { live: true },
      cursor: {
        drag: { x: true, y: false, setScale: false },
        bind: { dblclick: () => () => this.reset(chart) },
      },
      hooks: { setSelect: [(u) => this.selected(chart, u)] },
    }, [[], []], plot);
    this.charts.set(name, chart);
    return chart;
  }

  width() {
    const cols = Math.max(1, Math.floor(this.container.clientWidth / 380));
    return Math.max(300, Math.floor((this.container.clientWidth - 16 * (cols - 1)) / cols));
  }

  fit() {
    for (const chart of this.charts.values()) chart.u.setSize({ width: this.width(), height: 220 });
  }

  dirty(chart) {
    chart.dirty = true;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    for (const chart of this.charts.values()) {
      if (!chart.dirty || chart.zoomed) continue;
      chart.dirty = false;
      chart.u.setData([chart.x, chart.y]);
      chart.note.textContent = chart.downsampled
        ? `${chart.total.toLocaleString()} points, drawn from ${chart.x.length.toLocaleString()} (min/max per bucket)`
        : `${chart.total.toLocaleString()} points`;
    }
  }

  async selected(chart, u) {
    if (u.select.width < 5) return;
    const lo = u.posToVal(u.select.left, "x");
    const hi = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    chart.zoomed = true;
    u.setScale("x", { min: lo, max: hi });
    try {
      const body = await get(`/api/jobs/${encodeURIComponent(this.jobId)}/metrics`, { points: POINTS, from: lo, to: hi });
      const c = body.metrics[chart.name];
      if (!c || !chart.zoomed) return;
      u.setData([c.x, c.y.map(num)], false);
      u.setScale("x", { min: lo, max: hi });
      chart.note.textContent = `zoomed: ${c.points.toLocaleString()} points in range` + (c.downsampled ? ` (drawn from ${c.x.length.toLocaleString()})` : ", full resolution") + " · double-click to reset";
    } catch (err) {
      chart.note.textContent = `could not zoom: ${err.message}`;
    }
  }

  reset(chart) {
    chart.zoomed = false;
    chart.dirty = true;
    this.draw();
  }
}
