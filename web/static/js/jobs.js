// The Jobs page: filters and sort in the URL (shareable), server-side pages by cursor, refreshed live.
import { get } from "./api.js";
import { clear, duration, el, ago, showError, stateBadge, when } from "./dom.js";

const REFRESH_MS = 3000;
const PAGE = 50;
const url = new URL(location.href);
const view = {
  q: url.searchParams.get("q") || "",
  user: url.searchParams.get("user") || "",
  team: url.searchParams.get("team") || "",
  study: url.searchParams.get("study") || "",
  state: url.searchParams.get("state") || "",
  sort: url.searchParams.get("sort") || "-submitted",
  cursors: [""], // the cursor of each page seen, for "First"
};
let timer = null;
const picked = new Set(); // jobs ticked for Compare, kept across refreshes and pages
const COMPARE_MAX = 10;

function syncUrl() {
  const u = new URL(location.href);
  for (const key of ["q", "user", "team", "study", "state", "sort"]) {
    if (view[key] && !(key === "sort" && view[key] === "-submitted")) u.searchParams.set(key, view[key]);
    else u.searchParams.delete(key);
  }
  history.replaceState(null, "", u);
}

function row(job) {
  const link = el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, text: job.id });
  const name = el("td", { class: "name", title: job.run, text: job.name || job.run });
  if (job.study) {
    name.append(" ", el("a", { class: "tag", href: `/studies/${encodeURIComponent(job.study)}`, text: job.study, title: "its HPO study" }));
  }
  const box = el("input", { type: "checkbox", "aria-label": `compare ${job.id}` });
  box.checked = picked.has(job.id);
  box.addEventListener("change", () => {
    if (box.checked) picked.add(job.id); else picked.delete(job.id);
    markCompare();
  });
  return el("tr", {},
    el("td", { class: "pick" }, box),
    el("td", {}, stateBadge(job.state)),
    el("td", { class: "id" }, link),
    name,
    el("td", { text: job.user }),
    el("td", { title: when(job.submitted_at), text: ago(job.submitted_at) }),
    el("td", { text: ["QUEUED", "ASSIGNED"].includes(job.state) ? "–" : duration(job.submitted_at, isEnded(job) ? job.updated_at : null) }),
    el("td", { class: "num", text: job.gpu_util == null ? "–" : `${Math.round(job.gpu_util)}%` }),
    el("td", { class: "num", text: job.recoveries || "" }),
  );
}

function markCompare() {
  const button = document.getElementById("compare");
  button.disabled = picked.size < 2 || picked.size > COMPARE_MAX;
  button.textContent = picked.size ? `Compare ${picked.size}` : "Compare";
  button.title = picked.size > COMPARE_MAX ? `at most ${COMPARE_MAX} jobs` : "tick two jobs or more";
}

function isEnded(job) {
  return ["SUCCEEDED", "FAILED", "CANCELLED"].includes(job.state);
}

async function load() {
  clearTimeout(timer);
  const cursor = view.cursors[view.cursors.length - 1];
  try {
    const page = await get("/api/jobs", {
      q: view.q, user: view.user, team: view.team, study: view.study, state: view.state, sort: view.sort, cursor,
      limit: PAGE,
    });
    const body = document.getElementById("rows");
    clear(body);
    body.append(...page.jobs.map(row));
    if (!page.jobs.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "muted", text: "No jobs match." })));
    const start = (view.cursors.length - 1) * PAGE;
    document.getElementById("count").textContent = page.total
      ? `${start + 1}–${start + page.jobs.length} of ${page.total.toLocaleString()}` : "";
    const next = document.getElementById("next");
    next.disabled = !page.next;
    next.dataset.cursor = page.next || "";
    document.getElementById("first").disabled = view.cursors.length === 1;
    document.getElementById("live").classList.remove("off");
    showError("");
  } catch (err) {
    document.getElementById("live").classList.add("off");
    showError(`Could not load jobs: ${err.message}`);
  }
  timer = setTimeout(load, REFRESH_MS);
}

function markSort() {
  for (const th of document.querySelectorAll("th[data-sort]")) {
    const field = th.dataset.sort;
    th.classList.toggle("sorted", view.sort.replace("-", "") === field);
    th.classList.toggle("asc", view.sort === field);
  }
}

function restart() {
  view.cursors = [""];
  syncUrl();
  markSort();
  load();
}

document.getElementById("q").value = view.q;
document.getElementById("user").value = view.user;
document.getElementById("team").value = view.team;
document.getElementById("study").value = view.study;
document.getElementById("state").value = view.state;
let typing = null;
document.getElementById("filters").addEventListener("input", (e) => {
  view[e.target.name] = e.target.value.trim();
  clearTimeout(typing);
  typing = setTimeout(restart, e.target.tagName === "SELECT" ? 0 : 250);
});
document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.addEventListener("click", () => {
    const field = th.dataset.sort;
    view.sort = view.sort === `-${field}` ? field : `-${field}`;
    restart();
  });
}
document.getElementById("next").addEventListener("click", (e) => {
  if (!e.target.dataset.cursor) return;
  view.cursors.push(e.target.dataset.cursor);
  load();
});
document.getElementById("first").addEventListener("click", () => { view.cursors = [""]; load(); });
document.getElementById("compare").addEventListener("click", () => {
  location.href = `/compare?jobs=${[...picked].map(encodeURIComponent).join(",")}`;
});
markSort();
load();
