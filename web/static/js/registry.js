// What the Models, Model and Job pages show of a model version: links to its model and job, its aliases.
import { el } from "./dom.js";

export const modelHref = (name, version) => `/models/${encodeURIComponent(name)}` + (version ? `#v${version}` : "");
export const jobHref = (id) => `/jobs/${encodeURIComponent(id)}`;

// The aliases naming one version (or, without `version`, all of the model's: "production → v2").
export function aliasTags(name, aliases, version) {
  return Object.entries(aliases || {}).sort().filter(([, v]) => version == null || v === version)
    .map(([alias, v]) => el("a", { class: "tag", href: modelHref(name, v), title: `${name}@${alias}`, text: version == null ? `${alias} → v${v}` : alias }));
}

// The job a version was made from: its id linked, its name and (when it did not succeed) its state.
export function jobLink(lineage) {
  const span = el("span", {}, el("a", { class: "mono", href: jobHref(lineage.job_id), text: lineage.job_id }));
  if (lineage.job_name && lineage.job_name !== lineage.job_id) span.append(" ", el("span", { class: "muted", text: lineage.job_name }));
  if (lineage.job_state !== "SUCCEEDED") span.append(" ", el("span", { class: `state ${lineage.job_state}`, text: lineage.job_state }));
  return span;
}
