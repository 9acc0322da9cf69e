// The Studies page: every HPO study, newest first, refreshed live.
import { get } from "./api.js";
import { ago, clear, el, showError, when } from "./dom.js";
import { fmt } from "./plots.js";

const REFRESH_MS = 5000;

function row(s) {
  const study = s.study;
  const hpo = study.spec.hpo || {};
  const counts = Object.entries(s.counts || {}).sort().map(([k, v]) => `${v} ${k.toLowerCase()}`).join(" · ");
  return el("tr", {},
    el("td", {}, el("span", { class: `state ${study.state}`, text: study.state })),
    el("td", { class: "id" }, el("a", { href: `/studies/${encodeURIComponent(study.id)}`, text: study.id })),
    el("td", { class: "name", title: study.spec.run, text: study.spec.name || study.spec.run }),
    el("td", { text: study.user }),
    el("td", { title: when(study.created_at), text: ago(study.created_at) }),
    el("td", { text: `${Object.values(s.counts || {}).reduce((a, b) => a + b, 0)}/${hpo.trials || 10}`, title: counts }),
    el("td", { class: "num", text: s.best_trial == null ? "–" : `${fmt(s.best_value)} (#${s.best_trial})` }),
    el("td", { class: "num", text: fmt(Number((s.gpu_hours || 0).toFixed(2))) }));
}

async function load() {
  try {
    const { studies } = await get("/api/studies");
    const body = document.getElementById("rows");
    clear(body);
    body.append(...studies.map(row));
    if (!studies.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No studies yet: submit a spec with an hpo: section (incl submit -f study.yaml)." })));
    document.getElementById("count").textContent = studies.length ? `${studies.length}` : "";
    document.getElementById("live").classList.remove("off");
    showError("");
  } catch (err) {
    document.getElementById("live").classList.add("off");
    showError(`Could not load studies: ${err.message}`);
  }
  setTimeout(load, REFRESH_MS);
}

load();
