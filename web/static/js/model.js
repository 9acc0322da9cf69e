// The Model page: every version of one model, newest first, each with the job it was made from (linked), who
// registered it and when, its files, final metrics, params, code snapshot or image, note; and its aliases.
import { get } from "./api.js";
import { ago, clear, el, showError, when } from "./dom.js";
import { fmt } from "./plots.js";
import { aliasTags, jobLink } from "./registry.js";

const name = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${i ? bytes.toFixed(1) : bytes} ${units[i]}`;
}

// key value lines, one a line ("–" for none)
function lines(pairs) {
  if (!pairs.length) return [el("span", { class: "muted", text: "–" })];
  return pairs.map(([k, v]) => el("div", { class: "pair" }, el("span", { class: "muted", text: k }), " ", String(v)));
}

function row(v, aliases) {
  const l = v.lineage;
  const metrics = Object.entries(l.metrics || {}).sort().map(([k, x]) => [k, typeof x === "number" ? fmt(x) : x]);
  const params = [...Object.entries(l.params || {}).sort().map(([k, x]) => [k, typeof x === "number" ? fmt(x) : String(x)]),
    ...Object.entries(l.env || {}).sort().map(([k, x]) => [`$${k}`, x])];
  const code = l.code ? `snapshot ${l.code.digest.slice(0, 12)} (${l.code.files} file${l.code.files === 1 ? "" : "s"})` : "no snapshot";
  return el("tr", { id: `v${v.version}`, "data-version": v.version },
    el("td", { class: "id" }, el("strong", { text: `v${v.version}` }), " ", ...aliasTags(v.name, aliases, v.version)),
    el("td", {}, jobLink(l), l.study_id ? el("div", { class: "small" }, el("a", { href: `/studies/${encodeURIComponent(l.study_id)}`, text: l.study_id })) : null,
      el("div", { class: "small muted", text: `attempt ${l.attempt} · by ${l.user}` })),
    el("td", {}, el("div", { text: v.registered_by }), el("div", { class: "small muted", title: when(v.registered_at), text: ago(v.registered_at) })),
    el("td", { class: "files" }, el("div", { text: `${v.tree.files} file${v.tree.files === 1 ? "" : "s"} · ${size(v.tree.bytes)}` }),
      ...(v.paths || []).map((p) => el("div", { class: "small mono", text: p }))),
    el("td", { class: "small mono" }, ...lines(metrics)),
    el("td", { class: "small mono" }, ...lines(params)),
    el("td", { class: "small" }, el("div", { class: "mono", text: code }), el("div", { class: "muted", text: l.image ? `image ${l.image}` : "process runtime" })),
    el("td", { class: "note", text: v.note || "" }));
}

async function main() {
  document.getElementById("title").textContent = name;
  document.title = `${name} · Models · INCL`;
  let model;
  try {
    model = await get(`/api/models/${encodeURIComponent(name)}`);
  } catch (err) {
    showError(err.message);
    return;
  }
  const latest = model.versions[0];
  const box = document.getElementById("aliases");
  box.append(...aliasTags(name, model.aliases));
  document.getElementById("subtitle").append(`${model.versions.length} version${model.versions.length === 1 ? "" : "s"} · latest v${latest.version}, registered by ${latest.registered_by} ${when(latest.registered_at)} · `,
    el("code", { text: `incl model download ${name}:v${latest.version} --to DIR` }));
  const body = document.getElementById("versions");
  clear(body);
  body.append(...model.versions.map((v) => row(v, model.aliases)));
  document.body.dataset.ready = "1";
}

main();
