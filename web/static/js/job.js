// The Job page: state, attempts, spec (secrets come masked from the server), params, live logs and charts,
// cancel. Live updates arrive over one EventSource; the browser resumes it by itself after a drop.
import { get, post } from "./api.js";
import { Charts } from "./charts.js";
import { clear, duration, el, showError, stateBadge, when } from "./dom.js";
import { LogView } from "./logview.js";
import { Outputs } from "./outputs.js";
import { modelHref } from "./registry.js";

const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const ENDED = ["SUCCEEDED", "FAILED", "CANCELLED"];
let current = null;
let outputs = null;
let logs = null;

function render(job) {
  current = job;
  const name = job.spec.name || job.id;
  document.title = `${name} · INCL`;
  document.getElementById("title").textContent = name;
  const state = document.getElementById("state");
  state.className = `state ${job.state}`;
  state.textContent = job.state;
  const sub = document.getElementById("subtitle");
  clear(sub);
  const lastEnd = ENDED.includes(job.state) ? job.updated_at : null;
  sub.append(`${job.id} · by ${job.user} · submitted ${when(job.submitted_at)} · ${duration(job.submitted_at, lastEnd)}`,
    job.reason ? ` · ${job.reason}` : "", job.exit_code != null ? ` · exit ${job.exit_code}` : "");
  if (job.trial) {
    sub.append(" · ", el("a", { href: `/studies/${encodeURIComponent(job.trial.study_id)}`, text: `trial #${job.trial.number} of ${job.trial.study_id}` }));
  }
  const cancel = document.getElementById("cancel");
  cancel.hidden = ENDED.includes(job.state) || job.cancel_requested;
  renderAttempts(job.attempts);
  if (logs) offerAttempts(job.attempts.map((a) => a.number));
  renderSpec(job.spec);
  renderParams(job);
  // Outputs are uploaded when an attempt ends: list them again when one has.
  const ended = job.attempts.filter((a) => a.ended_at).length;
  if (outputs && outputs.ends !== ended) { outputs.ends = ended; outputs.load(); }
}

function renderAttempts(attempts) {
  const body = document.getElementById("attempts");
  clear(body);
  for (const a of attempts) {
    body.append(el("tr", {},
      el("td", { text: a.number }), el("td", {}, stateBadge(a.state)), el("td", { text: a.agent_id }),
      el("td", { text: [a.instance_id, a.instance_type].filter(Boolean).join(" · ") || "–" }),
      el("td", { text: a.market || "–" }), el("td", { text: when(a.assigned_at) }),
      el("td", { text: when(a.started_at) }), el("td", { text: when(a.ended_at) }),
      el("td", { class: "num", text: a.exit_code ?? "–" }), el("td", { text: a.reason || "" })));
  }
  if (!attempts.length) body.append(el("tr", {}, el("td", { colspan: 10, class: "muted", text: "Not started yet." })));
}

function kv(dl, pairs) {
  clear(dl);
  for (const [key, value] of pairs) {
    if (value === undefined || value === null || value === "" || (typeof value === "object" && !Object.keys(value).length)) continue;
    dl.append(el("dt", { text: key }), el("dd", { text: typeof value === "object" ? JSON.stringify(value) : value }));
  }
}

function renderSpec(spec) {
  const r = spec.resources || {};
  kv(document.getElementById("spec"), [
    ["run", spec.run], ["setup", spec.setup], ["image", spec.image || "(process on the agent)"], ["workdir", spec.workdir],
    ["resources", resources(r)],
    ["priority", spec.priority], ["team", spec.team], ["retry", spec.retry], ["secrets", spec.secrets],
  ]);
}

// The spec comes without the fields left at their defaults (1 CPU, the agent's memory, no GPU, one node).
function resources(r) {
  const gpus = r.gpus ? `${r.gpus}×${r.gpu_model || "GPU"}` : "no GPU";
  const memory = r.memory ? `${(r.memory / 2 ** 30).toFixed(r.memory % 2 ** 30 ? 1 : 0)} GiB` : "default memory";
  const extra = [r.nodes > 1 ? `${r.nodes} nodes` : "", r.spot != null ? `spot: ${r.spot}` : "",
    (r.instance_types || []).join(", ")].filter(Boolean);
  return [`${r.cpus ?? 1} CPU`, memory, gpus, ...extra].join(" · ");
}

function renderParams(job) {
  const pairs = Object.entries(job.trial?.params || {}).map(([k, v]) => [k, String(v)]);
  if (job.trial) pairs.unshift(["study", `${job.trial.study_id} · trial ${job.trial.number}`]);
  for (const [k, v] of Object.entries(job.spec.env || {})) pairs.push([`$${k}`, v]);
  kv(document.getElementById("params"), pairs);
  if (!pairs.length) document.getElementById("params").append(el("dd", { class: "muted", text: "none" }));
}

// The model versions registered from this job (only an ended job's outputs can be), each linked to its model.
async function showModels() {
  const { versions } = await get(`/api/jobs/${encodeURIComponent(jobId)}/models`);
  const box = document.getElementById("models");
  for (const v of versions) {
    box.append(" ", el("a", { class: "tag", href: modelHref(v.name, v.version), text: `${v.name} v${v.version}` }));
  }
  box.hidden = !versions.length;
}

function setupCancel() {
  const button = document.getElementById("cancel");
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) { // two clicks, no dialog: a stray click cancels nothing
      armed = true;
      button.textContent = "Click again to cancel";
      setTimeout(() => { armed = false; button.textContent = "Cancel job"; }, 4000);
      return;
    }
    button.disabled = true;
    try {
      render((await post(`/api/jobs/${encodeURIComponent(jobId)}/cancel`)).job);
    } catch (err) {
      showError(`Could not cancel: ${err.message}`);
    } finally {
      button.disabled = false;
      button.textContent = "Cancel job";
      armed = false;
    }
  });
}

// The page's address keeps the log's search and attempt and the charts' options, so a link shows the same view.
const options = new URLSearchParams(location.search);

function remember(key, value, unset = "") {
  const u = new URL(location.href);
  if (value === unset || value === null) u.searchParams.delete(key);
  else u.searchParams.set(key, value);
  history.replaceState(null, "", u);
}

// The log's search (as one types, a moment after the last key) and its attempt filter.
function setupLogControls(view) {
  const search = document.getElementById("logsearch");
  let timer = 0;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { view.search(search.value); remember("q", search.value); }, 120);
  });
  const pick = document.getElementById("attempt");
  pick.addEventListener("change", () => {
    view.showAttempt(pick.value ? Number(pick.value) : null);
    remember("attempt", pick.value);
  });
  search.value = options.get("q") || "";
  if (search.value) view.search(search.value);
  const attempt = parseInt(options.get("attempt"), 10);
  if (attempt > 0) {
    offerAttempts([attempt]);
    pick.value = String(attempt);
    view.showAttempt(attempt);
  }
}

// The attempt filter lists every attempt the job record or the log has named; it shows once there are two.
function offerAttempts(numbers) {
  const pick = document.getElementById("attempt");
  const known = new Set([...pick.options].map((o) => o.value).filter(Boolean).map(Number));
  for (const n of numbers) {
    if (known.has(n)) continue;
    known.add(n);
    const after = [...pick.options].find((o) => o.value && Number(o.value) > n);
    pick.insertBefore(el("option", { value: n, text: `Attempt ${n}` }), after ?? null);
  }
  pick.hidden = known.size < 2;
}

// x by step or time, log scale and smoothing: for every chart of the job.
function setupChartControls(charts) {
  const x = document.getElementById("xaxis");
  const logy = document.getElementById("logy");
  const smoothing = document.getElementById("smoothing");
  const shown = document.getElementById("smoothing-value");
  const showWeight = () => { shown.textContent = Number(smoothing.value).toFixed(2).replace(/\.?0+$/, "") || "0"; };
  x.addEventListener("change", () => {
    remember("x", x.value, "step");
    charts.setX(x.value).catch((err) => showError(`Could not load metrics: ${err.message}`));
  });
  logy.addEventListener("change", () => { remember("log", logy.checked ? "1" : ""); charts.setLog(logy.checked); });
  smoothing.addEventListener("input", () => {
    showWeight();
    remember("smooth", smoothing.value, "0");
    charts.setSmoothing(Number(smoothing.value));
  });
  // Options from the address apply before the first reading (the charts are made with them).
  charts.x = x.value = options.get("x") === "time" ? "time" : "step";
  charts.log = logy.checked = options.get("log") === "1";
  smoothing.value = String(Math.min(0.99, Math.max(0, Number(options.get("smooth")) || 0)));
  charts.smoothing = Number(smoothing.value);
  showWeight();
  charts.onLogAllowed = (allowed, why) => {
    logy.disabled = !allowed;
    document.getElementById("logy-label").title = allowed ? "a log scale on y, for the charts whose values are all above 0" : why;
  };
}

async function main() {
  // The charts first: their reading of a long run is the slowest answer the page waits for, so it goes out before
  // the job's record, and they draw as soon as it comes, whatever else the page is still doing.
  const charts = new Charts(document.getElementById("charts"), document.getElementById("nometrics"), jobId);
  setupChartControls(charts); // the options from the address, before the reading (it is for their x)
  let failed = null;
  const drawn = charts.load().catch((err) => { failed = err; return 0; });
  document.getElementById("download").href = `/api/jobs/${encodeURIComponent(jobId)}/logs`;
  try {
    render((await get(`/api/jobs/${encodeURIComponent(jobId)}`)).job);
  } catch (err) {
    showError(err.message);
    document.getElementById("title").textContent = jobId;
    return;
  }
  setupCancel();
  outputs = new Outputs(jobId);
  outputs.ends = current.attempts.filter((a) => a.ended_at).length;
  outputs.load();
  if (ENDED.includes(current.state)) {
    showModels().catch((err) => showError(`Could not load model versions: ${err.message}`));
  }
  logs = new LogView(document.getElementById("log"), document.getElementById("follow"), document.getElementById("lognote"),
    document.getElementById("logcount"));
  offerAttempts(current.attempts.map((a) => a.number));
  setupLogControls(logs);
  const batches = await drawn;
  if (failed) showError(`Could not load metrics: ${failed.message}`);
  const events = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/stream?since=0.${batches}`);
  events.addEventListener("log", (e) => {
    const batch = JSON.parse(e.data);
    offerAttempts([batch.attempt]);
    logs.add(batch);
  });
  events.addEventListener("metric", (e) => charts.add(JSON.parse(e.data)));
  events.addEventListener("job", (e) => render(JSON.parse(e.data)));
  events.addEventListener("end", () => { events.close(); document.body.dataset.streamEnded = "1"; });
  document.body.dataset.ready = "1";
}

main();
