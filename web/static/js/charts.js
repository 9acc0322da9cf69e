// Live metric charts (uPlot): one chart per metric, drawn from the server's reduced points (min/max per
// bucket), with live points appended as they arrive; a dragged range is fetched again at full resolution,
// a double-click goes back to the whole run. Options for every chart of the job: x by step or by the time a
// point was logged (a point logged without a step is numbered by its count when x is the step), y on a log
// scale (a chart with a value at or below 0 stays linear and says why), and TensorBoard's smoothing (an
// exponential moving average, debiased, drawn over the faded raw series). Metric names go in as text (uPlot
// sets labels as text too).
import { get, num } from "./api.js";
import { el } from "./dom.js";

const POINTS = 2000;
const RAW = "#2563eb", FADED = "rgba(37, 99, 235, 0.25)", SMOOTH = "#1d4ed8";

export class Charts {
  constructor(container, empty, jobId) {
    this.container = container;
    this.empty = empty;
    this.jobId = jobId;
    this.charts = new Map();
    this.frame = 0;
    this.x = "step";
    this.log = false;
    this.smoothing = 0;
    this.loaded = false;
    this.seen = 0; // metric batches seen: those of the first reading, then each the stream sent
    this.covered = 0; // batches the last reading included (the stream's batches up to there are in it)
    this.queued = null; // live batches that came while a reading was under way
    this.onLogAllowed = () => {};
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(container);
  }

  // The whole run so far; returns how many metric batches that covered (where the live stream takes over).
  async load() {
    this.queued = [];
    let body;
    try {
      body = await get(`/api/jobs/${encodeURIComponent(this.jobId)}/metrics`, { points: POINTS, x: this.x });
    } catch (err) {
      this.replay();
      throw err;
    }
    for (const [name, c] of Object.entries(body.metrics)) {
      const chart = this.chart(name);
      chart.x = c.x.slice();
      chart.y = c.y.map(num);
      chart.total = c.total;
      chart.downsampled = c.downsampled;
      chart.positive = chart.y.every((v) => v === null || v > 0);
      chart.zoomed = false;
      if (chart.logY !== (this.log && chart.positive)) this.make(chart); // made before its values were known
      this.dirty(chart);
    }
    if (!this.loaded) this.seen = body.batches; // the stream opens after the first reading, from there
    this.loaded = true;
    this.covered = body.batches;
    this.replay();
    this.logAllowed();
    return body.batches;
  }

  replay() {
    const queued = this.queued || [];
    this.queued = null;
    for (const batch of queued) this.add(batch);
  }

  // A live batch: {attempt, rank, points: [[ts, step, {name: value}]]}. The stream numbers batches on from
  // where the page's first reading ended; one a later reading (x changed) already had is skipped.
  add(batch) {
    if (batch.seq === undefined) batch.seq = ++this.seen;
    if (this.queued) { this.queued.push(batch); return; }
    if (batch.seq <= this.covered) return;
    const turned = new Set();
    for (const [ts, step, values] of batch.points) {
      for (const [metric, value] of Object.entries(values)) {
        const name = batch.rank > 0 ? `${metric} [rank ${batch.rank}]` : (this.charts.has(`${metric} [rank 0]`) ? `${metric} [rank 0]` : metric);
        const chart = this.chart(name);
        chart.x.push(this.x === "time" ? ts : step ?? chart.total);
        const y = num(value);
        chart.y.push(y);
        if (y !== null && y <= 0 && chart.positive) { chart.positive = false; turned.add(chart); }
        chart.total += 1;
        this.dirty(chart);
      }
    }
    if (!turned.size) return;
    this.logAllowed();
    if (this.log) for (const chart of turned) this.make(chart); // back to a linear y
  }

  // x by "step" or "time": the charts are read again with that x.
  async setX(x) {
    this.x = x;
    for (const chart of this.charts.values()) chart.x = [];
    this.rebuild();
    await this.load();
  }

  setLog(on) {
    this.log = on;
    this.rebuild();
  }

  setSmoothing(weight) {
    const series = (weight > 0) !== (this.smoothing > 0);
    this.smoothing = weight;
    if (series) this.rebuild(); // a series more or less
    else for (const chart of this.charts.values()) { chart.dirty = true; if (chart.zoomed) this.zoomData(chart); }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  // The log scale needs every value above 0: the option is offered if some chart has only such values.
  logAllowed() {
    const charts = [...this.charts.values()];
    const some = charts.some((c) => c.positive);
    this.onLogAllowed(some || !charts.length, some ? "" : "every chart has a value at or below 0, which a log scale cannot show");
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
    chart = { name, box, plot, note, x: [], y: [], total: 0, downsampled: false, zoomed: false, positive: true, u: null };
    this.charts.set(name, chart);
    this.make(chart);
    return chart;
  }

  // A chart's uPlot, made anew for the options (a scale's kind and the series are fixed when it is made).
  make(chart) {
    const logY = chart.logY = this.log && chart.positive;
    const smooth = this.smoothing > 0;
    const time = this.x === "time";
    const series = [{ label: time ? "time" : "step" },
      { label: chart.name, stroke: smooth ? FADED : RAW, width: smooth ? 1 : 1.5, spanGaps: false, points: { show: false } }];
    if (smooth) series.push({ label: "smoothed", stroke: SMOOTH, width: 1.75, spanGaps: false, points: { show: false } });
    chart.u?.destroy();
    chart.u = new uPlot({
      width: this.width(), height: 220,
      scales: { x: { time }, y: logY ? { distr: 3, log: 10 } : {} },
      series,
      axes: [{ grid: { stroke: "#eef0f3" }, label: time ? "time" : "step", labelSize: 18, labelFont: "11px system-ui",
        font: "11px system-ui" },
      { grid: { stroke: "#eef0f3" }, size: 60, font: "11px system-ui" }],
      legend: { live: true },
      cursor: {
        drag: { x: true, y: false, setScale: false },
        bind: { dblclick: () => () => this.reset(chart) },
      },
      hooks: { setSelect: [(u) => this.selected(chart, u)] },
    }, this.data(chart, chart.x, chart.y), chart.plot);
    chart.zoomed = false;
    // What the chart is drawn with, for a reader of the page (and its tests): uPlot's own state.
    chart.box.dataset.x = chart.u.scales.x.time ? "time" : "step";
    chart.box.dataset.distr = String(chart.u.scales.y.distr);
    chart.box.dataset.series = String(chart.u.series.length - 1);
    chart.box.title = this.log && !chart.positive ? "linear y: this metric has a value at or below 0" : "";
    this.noted(chart);
  }

  rebuild() {
    for (const chart of this.charts.values()) this.make(chart);
  }

  // uPlot's data for the points: x, y, and y smoothed when smoothing is on.
  data(chart, xs, ys) {
    return this.smoothing > 0 ? [xs, ys, smooth(ys, this.smoothing)] : [xs, ys];
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
      chart.u.setData(this.data(chart, chart.x, chart.y));
      this.noted(chart);
    }
  }

  noted(chart) {
    if (chart.zoomed) return;
    const linear = this.log && !chart.positive ? " · linear y: a value is at or below 0" : "";
    chart.note.textContent = (chart.downsampled
      ? `${chart.total.toLocaleString()} points, drawn from ${chart.x.length.toLocaleString()} (min/max per bucket)`
      : `${chart.total.toLocaleString()} points`) + linear;
  }

  async selected(chart, u) {
    if (u.select.width < 5) return;
    const lo = u.posToVal(u.select.left, "x");
    const hi = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    chart.zoomed = { lo, hi, x: null, y: null };
    u.setScale("x", { min: lo, max: hi });
    try {
      const body = await get(`/api/jobs/${encodeURIComponent(this.jobId)}/metrics`, { points: POINTS, from: lo, to: hi, x: this.x });
      const c = body.metrics[chart.name];
      if (!c || chart.zoomed?.lo !== lo || chart.u !== u) return;
      Object.assign(chart.zoomed, { x: c.x, y: c.y.map(num) });
      this.zoomData(chart);
      chart.note.textContent = `zoomed: ${c.points.toLocaleString()} points in range` + (c.downsampled ? ` (drawn from ${c.x.length.toLocaleString()})` : ", full resolution") + " · double-click to reset";
    } catch (err) {
      chart.note.textContent = `could not zoom: ${err.message}`;
    }
  }

  zoomData(chart) {
    const z = chart.zoomed;
    if (!z.x) return;
    chart.u.setData(this.data(chart, z.x, z.y), false);
    chart.u.setScale("x", { min: z.lo, max: z.hi });
  }

  reset(chart) {
    chart.zoomed = false;
    chart.dirty = true;
    this.draw();
  }
}

// TensorBoard's smoothing: an exponential moving average with weight `w`, debiased so the first points are not
// pulled towards 0; a gap (NaN, infinity) stays a gap and does not enter the average.
export function smooth(ys, w) {
  const out = new Array(ys.length);
  let last = 0, n = 0;
  for (let i = 0; i < ys.length; i++) {
    const y = ys[i];
    if (y === null || !Number.isFinite(y)) { out[i] = null; continue; }
    last = last * w + (1 - w) * y;
    n += 1;
    out[i] = last / (1 - w ** n);
  }
  return out;
}
