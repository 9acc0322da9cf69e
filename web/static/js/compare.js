// The Compare page: the jobs named in ?jobs=a,b overlaid on one chart per metric (one series per job, drawn from
// each job's reduced points), and their params, env and final metrics side by side, differences marked. While
// one of them runs, the page reads again every few seconds: its states, final metrics and charts follow (a
// zoomed chart stays as it is until a double-click brings it back to the whole runs).
import { get, num } from "./api.js";
import { clear, el, showError, stateBadge } from "./dom.js";
import { PALETTE, chartBox, chartWidth, fitOnResize, joined, overlay } from "./plots.js";

const POINTS = 1000;
const REFRESH_MS = 3000; // how often a comparison with a running job reads again
const ENDED = ["SUCCEEDED", "FAILED", "CANCELLED"];
const KINDS = { job: "Job", param: "HPO params", env: "Environment", metric: "Final metrics (the last value logged)" };
const ids = (new URL(location.href).searchParams.get("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean);
const charts = [];
let fitting = false;

const colour = (i) => PALETTE[i % PALETTE.length];
let label = (job) => job.name || job.id;
const swatch = (i) => el("span", { class: "swatch", style: `background:${colour(i)}` });
const jobLink = (job) => el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, text: job.name || job.id, title: job.id });

function legend(jobs) {
  const box = document.getElementById("legend");
  clear(box);
  jobs.forEach((job, i) => box.append(el("span", { class: "chip" }, swatch(i), jobLink(job),
    el("span", { class: "muted small", text: job.name ? job.id : "" }), stateBadge(job.state))));
}

function table(jobs, rows) {
  const head = document.getElementById("head");
  clear(head);
  head.append(el("tr", {}, el("th", { text: "" }), ...jobs.map((job, i) => el("th", {}, swatch(i), jobLink(job)))));
  const body = document.getElementById("rows");
  clear(body);
  let kind = null;
  for (const row of rows) {
    if (row.kind !== kind) {
      kind = row.kind;
      body.append(el("tr", { class: "group" }, el("td", { colspan: jobs.length + 1, text: KINDS[kind] || kind })));
    }
    body.append(el("tr", { class: row.differs ? "differs" : "same", "data-key": `${row.kind}:${row.key}` },
      el("th", { text: row.kind === "env" ? `$${row.key}` : row.key, title: row.differs ? "differs between the jobs" : null }),
      ...row.values.map((v) => el("td", { class: row.differs ? "diff" : null, text: v }))));
  }
}

const metricsOf = (job, range) => get(`/api/jobs/${encodeURIComponent(job.id)}/metrics`, { points: POINTS, ...range });

function chart(container, width, name, jobs, bodies) {
  const series = [];
  bodies.forEach((b, i) => {
    const c = b.metrics[name];
    if (c) series.push({ job: jobs[i], label: label(jobs[i]), colour: colour(i), x: c.x, y: c.y.map(num), downsampled: c.downsampled });
  });
  const whole = `${series.length} of ${jobs.length} jobs log it` + (series.some((s) => s.downsampled) ? " · long runs drawn from min/max per bucket" : "");
  const { box, plot } = chartBox(container, name, whole);
  const note = box.querySelector(".note");
  let asked = 0; // the latest zoom: an older answer that comes late is dropped
  let zoomed = false;
  const zoom = {
    // A dragged range, fetched again for every job: at full resolution once few enough points fall in it.
    async range(u, lo, hi) {
      zoomed = true;
      const mine = ++asked;
      note.textContent = "zooming…";
      try {
        const parts = await Promise.all(series.map((s) => metricsOf(s.job, { from: lo, to: hi })));
        if (mine !== asked) return;
        const cs = parts.map((p) => p.metrics[name] || { x: [], y: [], downsampled: false });
        u.setData(joined(cs.map((c, i) => ({ ...series[i], x: c.x, y: c.y.map(num) }))), false);
        u.setScale("x", { min: lo, max: hi });
        note.textContent = `zoomed: ${cs.some((c) => c.downsampled) ? "min/max per bucket" : "full resolution"} · double-click to reset`;
      } catch (err) {
        note.textContent = `could not zoom: ${err.message}`;
      }
    },
    reset(u) {
      asked += 1;
      zoomed = false;
      u.setData(joined(series));
      note.textContent = whole;
    },
  };
  const u = overlay(plot, width, series, { zoom });
  // The whole runs again (`fresh`: a body per job, null for one not read again): redrawn unless zoomed. False,
  // changing nothing, when a job logs this metric for the first time (it needs a series of its own).
  u.follow = (fresh) => {
    const found = fresh.map((b, i) => [b && b.metrics[name], series.find((s) => s.job === jobs[i])]);
    if (found.some(([c, s]) => c && !s)) return false;
    for (const [c, s] of found) if (c) Object.assign(s, { x: c.x, y: c.y.map(num), downsampled: c.downsampled });
    if (!zoomed) u.setData(joined(series));
    return true;
  };
  return u;
}

async function draw(jobs) {
  const bodies = await Promise.all(jobs.map((job) => metricsOf(job, {}).catch((err) => {
    showError(`Could not load the metrics of ${job.id}: ${err.message}`);
    return { metrics: {} };
  })));
  const container = document.getElementById("charts");
  const names = [...new Set(bodies.flatMap((b) => Object.keys(b.metrics)))].sort();
  if (names.length) clear(container);
  const width = chartWidth(container);
  for (const name of names) charts.push(chart(container, width, name, jobs, bodies));
  if (!fitting) fitOnResize(container, charts); // once: it resizes whatever `charts` holds then
  fitting = true;
  return names;
}

// While a job runs: its record (state, final metrics: the table) and its charts again, every REFRESH_MS. A metric
// none of the jobs had logged before draws the charts anew.
function follow(jobs, names) {
  const timer = setInterval(async () => {
    try {
      const body = await get("/api/compare", { jobs: ids.join(",") });
      legend(body.jobs);
      table(body.jobs, body.rows);
      const fresh = await Promise.all(body.jobs.map((job, i) =>
        ENDED.includes(jobs[i].state) ? null : metricsOf(job, {}).catch(() => null)));
      const known = new Set(names);
      const added = fresh.some((b) => b && Object.keys(b.metrics).some((n) => !known.has(n)));
      if (added || !charts.every((u) => u.follow(fresh))) {
        charts.forEach((u) => u.destroy());
        charts.length = 0;
        names = await draw(body.jobs);
      }
      jobs = body.jobs;
      if (jobs.every((job) => ENDED.includes(job.state))) {
        clearInterval(timer);
        document.body.dataset.following = "0";
      }
    } catch (err) {
      showError(`Could not refresh: ${err.message}`);
    }
  }, REFRESH_MS);
  document.body.dataset.following = "1";
}

async function main() {
  const input = document.getElementById("ids");
  input.value = ids.join(", ");
  document.getElementById("pick").addEventListener("submit", (e) => {
    e.preventDefault();
    const picked = input.value.split(/[\s,]+/).filter(Boolean);
    location.href = `/compare?jobs=${picked.map(encodeURIComponent).join(",")}`;
  });
  document.getElementById("onlydiff").addEventListener("change", (e) => {
    document.getElementById("table").classList.toggle("onlydiff", e.target.checked);
  });
  if (!ids.length) { document.body.dataset.ready = "1"; return; }
  try {
    const body = await get("/api/compare", { jobs: ids.join(",") });
    document.title = `Compare ${body.jobs.length} jobs · INCL`;
    const names = body.jobs.map((j) => j.name);
    if (new Set(names).size < names.length) label = (job) => (job.name ? `${job.name} · ${job.id}` : job.id);
    legend(body.jobs);
    table(body.jobs, body.rows);
    const metrics = await draw(body.jobs);
    if (!body.jobs.every((job) => ENDED.includes(job.state))) follow(body.jobs, metrics);
  } catch (err) {
    showError(err.message);
  }
  document.body.dataset.ready = "1";
}

main();
