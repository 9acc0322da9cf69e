// The Models page: every registered model, the most recently registered first, refreshed live.
import { get } from "./api.js";
import { ago, clear, el, showError, when } from "./dom.js";
import { aliasTags, jobLink, modelHref } from "./registry.js";

const REFRESH_MS = 5000;

function row(m) {
  const v = m.latest;
  return el("tr", { "data-model": m.name },
    el("td", { class: "name" }, el("a", { href: modelHref(m.name), text: m.name })),
    el("td", { class: "id", text: `v${v.version}` }),
    el("td", { class: "num", text: m.versions }),
    el("td", {}, ...aliasTags(m.name, m.aliases)),
    el("td", {}, jobLink(v.lineage)),
    el("td", { text: v.registered_by }),
    el("td", { title: when(m.updated_at), text: ago(m.updated_at) }));
}

async function load() {
  try {
    const { models } = await get("/api/models");
    const body = document.getElementById("rows");
    clear(body);
    body.append(...models.map(row));
    if (!models.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No models yet: register a finished job's outputs (incl model register NAME --job ID)." })));
    document.getElementById("count").textContent = models.length ? `${models.length}` : "";
    document.getElementById("live").classList.remove("off");
    showError("");
    document.body.dataset.ready = "1";
  } catch (err) {
    document.getElementById("live").classList.add("off");
    showError(`Could not load models: ${err.message}`);
  }
  setTimeout(load, REFRESH_MS);
}

load();
