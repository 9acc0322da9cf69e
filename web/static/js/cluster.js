// The Cluster page: agents with their capacity and jobs, each GPU's last readings, jobs whose GPUs sit idle, and
// quota use. Polled every few seconds (one request: /api/cluster).
import { get } from "./api.js";
import { ago, clear, el, showError } from "./dom.js";

const REFRESH_MS = 3000;

const jobLink = (id) => el("a", { href: `/jobs/${encodeURIComponent(id)}`, text: id });
const gpusText = (n) => `${n} GPU${n === 1 ? "" : "s"}`;
const pct = (v) => (v == null ? "–" : `${Math.round(v)}%`);

function size(bytes) {
  if (bytes == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

function meter(value, max, text) {
  const share = max ? Math.min(1, value / max) : 0;
  return el("span", { class: "meter", title: text },
    el("span", { class: "track" }, el("span", { class: `fill${share >= 0.9 ? " high" : ""}`, style: `width:${(100 * share).toFixed(1)}%` })),
    el("span", { class: "num", text }));
}

function links(ids) {
  const cell = el("td", { class: "id" });
  ids.forEach((id, i) => cell.append(i ? " " : "", jobLink(id)));
  if (!ids.length) cell.append("–");
  return cell;
}

function agentRow(a, now) {
  const instance = [a.provider !== "local" ? a.provider : "", a.instance_type, a.instance_id, a.zone].filter(Boolean).join(" · ");
  return el("tr", { "data-agent": a.id },
    el("td", { class: "id", title: a.hostname }, a.id, el("div", { class: "muted small", text: a.hostname })),
    el("td", {}, el("span", { class: `state agent-${a.state}`, text: a.state })),
    el("td", { text: instance || "local" }),
    el("td", { text: a.market || "–" }),
    el("td", { text: ago(a.registered_at).replace(" ago", ""), title: new Date(a.registered_at * 1000).toLocaleString() }),
    el("td", { text: now - a.last_seen < 2 ? "now" : ago(a.last_seen) }),
    el("td", { class: "num" }, meter(a.used_cpus, a.cpus, `${a.used_cpus}/${a.cpus}`)),
    el("td", { class: "num", text: `${size(a.used_memory)} / ${size(a.memory)}` }),
    el("td", { class: "num", text: a.gpus ? `${a.used_gpus}/${a.gpus}${a.gpu_model ? ` ${a.gpu_model}` : ""}` : "–" }),
    links(a.jobs));
}

function gpuRow(a, g) {
  return el("tr", { class: g.healthy ? null : "unhealthy" },
    el("td", { class: "id", text: a.id }), el("td", { class: "num", text: g.index }), el("td", { text: g.model || "–" }),
    el("td", { class: "util" }, g.util == null ? "–" : meter(g.util, 100, pct(g.util))),
    el("td", { class: "num", text: pct(g.mem_util) }),
    el("td", { class: "num", text: g.memory_total ? `${size(g.memory_used)} / ${size(g.memory_total)}` : "–" }),
    el("td", { class: "num", text: g.power_w == null ? "–" : `${Math.round(g.power_w)} W` }),
    el("td", { class: "num", text: g.temperature_c == null ? "–" : `${Math.round(g.temperature_c)} °C` }),
    el("td", { class: g.healthy ? "ok" : "bad", text: g.healthy ? "ok" : g.reason || "unhealthy" }),
    links(g.jobs));
}

function card(label, value, note) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }),
    el("div", { class: "small muted", text: note }));
}

function render(c) {
  const alive = c.agents.filter((a) => a.state === "alive");
  const gpus = alive.reduce((n, a) => n + a.gpus, 0), used = alive.reduce((n, a) => n + a.used_gpus, 0);
  const jobs = new Set(c.agents.flatMap((a) => a.jobs));
  const readings = c.agents.flatMap((a) => a.gpu_stats).filter((g) => g.util != null);
  const mean = readings.length ? readings.reduce((s, g) => s + g.util, 0) / readings.length : null;
  const cards = document.getElementById("cards");
  clear(cards);
  cards.append(card("Agents", `${alive.length}`, c.agents.length > alive.length ? `${c.agents.length - alive.length} lost` : "all alive"),
    card("GPUs in use", gpus ? `${used} / ${gpus}` : "–", gpus ? `${pct(mean)} mean utilization` : "no GPU agents"),
    card("CPUs in use", `${alive.reduce((n, a) => n + a.used_cpus, 0)} / ${alive.reduce((n, a) => n + a.cpus, 0)}`, ""),
    card("Jobs running", `${jobs.size}`, c.idle.length ? `${c.idle.length} with idle GPUs` : "none idle"));

  const idle = document.getElementById("idle");
  clear(idle);
  for (const i of c.idle) {
    idle.append(el("li", { "data-job": i.job_id }, jobLink(i.job_id), ` ${i.name || ""} (${i.user})`,
      i.agent_id ? ` on ${i.agent_id}` : "", `: GPUs idle for ${ago(i.since).replace(" ago", "")}`,
      i.gpu_util != null ? `, now at ${pct(i.gpu_util)}` : ""));
  }
  document.getElementById("idlebox").hidden = !c.idle.length;

  const agents = document.getElementById("agents");
  clear(agents);
  agents.append(...c.agents.map((a) => agentRow(a, c.now)));
  if (!c.agents.length) agents.append(el("tr", {}, el("td", { colspan: 10, class: "muted", text: "No agents registered." })));

  const rows = c.agents.flatMap((a) => a.gpu_stats.map((g) => gpuRow(a, g)));
  const gpuBody = document.getElementById("gpus");
  clear(gpuBody);
  gpuBody.append(...rows);
  if (!rows.length) gpuBody.append(el("tr", {}, el("td", { colspan: 10, class: "muted", text: "No GPU readings (no agent reports GPUs)." })));

  const quota = document.getElementById("quota");
  clear(quota);
  for (const q of c.quota) {
    quota.append(el("tr", {}, el("td", { text: q.kind }), el("td", { text: q.name }),
      el("td", { class: "util" }, q.limit == null ? gpusText(q.used) : meter(q.used, q.limit, gpusText(q.used))),
      el("td", { class: "num", text: q.limit == null ? "no limit" : q.limit })));
  }
  if (!c.quota.length) quota.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No GPUs held, no quotas set." })));
}

async function load() {
  try {
    render(await get("/api/cluster"));
    document.getElementById("live").classList.remove("off");
    showError("");
    document.body.dataset.ready = "1";
  } catch (err) {
    document.getElementById("live").classList.add("off");
    showError(`Could not load the cluster: ${err.message}`);
  }
  setTimeout(load, REFRESH_MS);
}

load();
