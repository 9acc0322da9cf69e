// The Study page: summary, best-so-far curve, parameter importances, each parameter against the value, parallel
// coordinates and the trials (each linked to its job). Refreshed every few seconds while the study runs.
import { get } from "./api.js";
import { clear, duration, el, showError, when } from "./dom.js";
import { GRID, PALETTE, chartBox, chartWidth, fitOnResize, fmt, scatter } from "./plots.js";
import { parallel } from "./parallel.js";

const studyId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const REFRESH_MS = 5000;
const ENDED = ["COMPLETED", "STOPPED"];
let drawn = ""; // the finished trials last charted: charts are drawn again only when these change
let charts = [];

const jobHref = (id) => `/jobs/${encodeURIComponent(id)}`;
const badge = (state) => el("span", { class: `state ${state}`, text: state });
const paramText = (v) => (v === undefined ? "–" : v === null ? "null" : typeof v === "number" ? fmt(v) : String(v));

function card(label, value, ...extra) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }), ...extra);
}

function summary(s, hpo, trials) {
  const study = s.study;
  document.title = `${study.spec.name || study.id} · Study · INCL`;
  document.getElementById("title").textContent = study.spec.name || study.id;
  const state = document.getElementById("state");
  state.className = `state ${study.state}`;
  state.textContent = study.state;
  const direction = hpo.direction || "minimize";
  document.getElementById("subtitle").textContent = [study.id, `by ${study.user}`, `created ${when(study.created_at)}`,
    `${direction} ${hpo.metric || "?"} (${hpo.objective || "last"})`, `${hpo.sampler || "tpe"} sampler`,
    hpo.pruner && hpo.pruner.type && hpo.pruner.type !== "none" ? `${hpo.pruner.type} pruner` : "", study.reason || ""]
    .filter(Boolean).join(" · ");
  document.getElementById("jobs").href = `/jobs?q=${encodeURIComponent(study.id)}`;
  const best = trials.find((t) => t.number === s.best_trial);
  const bestNote = best ? el("div", { class: "small" }, `trial #${best.number} `,
    best.job_id ? el("a", { href: jobHref(best.job_id), text: best.job_id }) : "") : el("div", { class: "small muted", text: "no finished trial yet" });
  const counts = Object.entries(s.counts || {}).sort().map(([k, v]) => `${v} ${k.toLowerCase()}`).join(" · ");
  const cards = document.getElementById("cards");
  clear(cards);
  cards.append(
    card("Best value", fmt(s.best_value), bestNote),
    card("Trials", `${trials.length} of ${hpo.trials || 10}`, el("div", { class: "small muted", text: counts || "none yet" })),
    card("In flight", String(trials.filter((t) => t.state === "RUNNING").length), el("div", { class: "small muted", text: `at most ${hpo.parallel || 1} at once` })),
    card("GPU hours", fmt(Number((s.gpu_hours || 0).toFixed(3))), el("div", { class: "small muted", text: hpo.budget && hpo.budget.gpu_hours ? `budget ${hpo.budget.gpu_hours}` : "no budget" })),
    card("Elapsed", duration(study.created_at, study.ended_at), el("div", { class: "small muted", text: study.ended_at ? `ended ${when(study.ended_at)}` : "running" })),
  );
}

function trialTable(trials, names, bestTrial) {
  const head = document.getElementById("trialhead");
  clear(head);
  head.append(el("tr", {}, el("th", { class: "num", text: "#" }), el("th", { text: "State" }), el("th", { class: "num", text: "Value" }),
    ...names.map((n) => el("th", { class: "param", text: n })), el("th", { text: "Job" }), el("th", { text: "Duration" }), el("th", { text: "Note" })));
  const body = document.getElementById("trials");
  clear(body);
  for (const t of trials.slice().sort((a, b) => b.number - a.number)) {
    const note = t.reason || (t.steps ? `${t.steps} values reported, last at step ${t.last_step}` : "");
    body.append(el("tr", { class: t.number === bestTrial ? "best" : null, "data-trial": t.number },
      el("td", { class: "num", text: t.number }), el("td", {}, badge(t.state)), el("td", { class: "num", text: fmt(t.value) }),
      ...names.map((n) => el("td", { class: "param", text: paramText(t.params[n]) })),
      el("td", { class: "id" }, t.job_id ? el("a", { href: jobHref(t.job_id), text: t.job_id }) : "–"),
      el("td", { text: t.started_at ? duration(t.started_at, t.ended_at) : "–" }), el("td", { class: "muted", text: note })));
  }
  if (!trials.length) body.append(el("tr", {}, el("td", { colspan: names.length + 6, class: "muted", text: "No trials yet." })));
}

function importances(values) {
  const box = document.getElementById("importances");
  clear(box);
  const entries = Object.entries(values).sort((a, b) => b[1] - a[1]);
  if (!entries.length) { box.append(el("p", { class: "muted", text: "Shown once four trials have finished (and their values differ)." })); return; }
  const top = entries[0][1] || 1;
  for (const [name, v] of entries) {
    box.append(el("div", { class: "barrow", "data-param": name }, el("span", { class: "name", text: name }),
      el("span", { class: "track" }, el("span", { class: "fill", style: `width:${Math.max(1, (100 * v) / top).toFixed(1)}%` })),
      el("span", { class: "num", text: v.toFixed(3) })));
  }
}

function bestCurve(container, done, best) {
  const xs = best.map((_, i) => i + 1);
  const values = done.length === best.length ? done.map((t) => t.value) : best.map(() => null);
  const { plot } = chartBox(container, null);
  return new uPlot({
    width: chartWidth(container, 300), height: 220, scales: { x: { time: false } },
    series: [{ label: "finished" },
      { label: "trial value", stroke: "#94a3b8", fill: "#94a3b855", paths: () => null, points: { show: true, size: 7 } },
      { label: "best so far", stroke: PALETTE[0], width: 2, points: { show: false } }],
    axes: [{ grid: GRID, label: "trials finished", labelSize: 20, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
      { grid: GRID, size: 60 }],
    cursor: { drag: { x: false, y: false } },
  }, [xs, values, best], plot);
}

function drawCharts(body, specs, names) {
  const done = body.trials.filter((t) => t.state === "COMPLETE" && typeof t.value === "number")
    .sort((a, b) => (a.ended_at || 0) - (b.ended_at || 0) || a.number - b.number);
  const key = JSON.stringify([done.map((t) => [t.number, t.value]), body.best_so_far, names]);
  if (key === drawn) return;
  drawn = key;
  for (const u of charts) u.destroy();
  charts = [];
  const bestBox = document.getElementById("best");
  const scatterBox = document.getElementById("scatter");
  const parallelBox = document.getElementById("parallel");
  for (const box of [bestBox, scatterBox, parallelBox]) clear(box);
  if (!done.length) {
    for (const box of [bestBox, scatterBox, parallelBox]) box.append(el("p", { class: "muted", text: "No finished trial yet." }));
    return;
  }
  charts.push(bestCurve(bestBox, done, body.best_so_far));
  const metric = body.summary.study.spec.hpo?.metric || "value";
  const width = chartWidth(scatterBox, 320);
  names.forEach((name, i) => {
    const spec = specs[name] || {};
    const ticks = spec.type === "categorical" ? spec.choices.map(String) : null;
    const points = done.filter((t) => name in t.params).map((t) => [ticks ? ticks.indexOf(String(t.params[name])) : Number(t.params[name]), t.value]);
    const { plot } = chartBox(scatterBox, name, spec.log ? "log scale" : null);
    charts.push(scatter(plot, width, name, metric, points, { ticks, log: !!spec.log, colour: PALETTE[i % PALETTE.length] }));
  });
  fitOnResize(scatterBox, charts.slice(1), 320);
  parallel(parallelBox, done, names, specs, body.summary.study.spec.hpo?.direction || "minimize", metric);
}

async function load() {
  let body;
  try {
    body = await get(`/api/studies/${encodeURIComponent(studyId)}`);
  } catch (err) {
    showError(err.message);
    document.getElementById("title").textContent = studyId;
    if (err.status !== 404) setTimeout(load, REFRESH_MS);
    return;
  }
  showError("");
  const hpo = body.summary.study.spec.hpo || {};
  const specs = hpo.params || {};
  const names = [...new Set([...Object.keys(specs), ...body.trials.flatMap((t) => Object.keys(t.params))])];
  summary(body.summary, hpo, body.trials);
  trialTable(body.trials, names, body.summary.best_trial);
  importances(body.importances || {});
  drawCharts(body, specs, names);
  const ranked = body.trials.filter((t) => t.state === "COMPLETE" && t.job_id && typeof t.value === "number")
    .sort((a, b) => (hpo.direction === "maximize" ? b.value - a.value : a.value - b.value)).slice(0, 3);
  const compare = document.getElementById("compare");
  compare.hidden = ranked.length < 2;
  compare.href = `/compare?jobs=${ranked.map((t) => encodeURIComponent(t.job_id)).join(",")}`;
  compare.textContent = `Compare best ${ranked.length}`;
  document.body.dataset.ready = "1";
  if (!ENDED.includes(body.summary.study.state)) setTimeout(load, REFRESH_MS);
}

load();
