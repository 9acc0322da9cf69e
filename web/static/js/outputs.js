// The Job page's outputs: every stored file and folder with its download (a folder as a .tar, streamed by the
// server), and a Share button on each that makes a read-only link anyone can open, until it expires or is revoked.
import { get, post, postJson } from "./api.js";
import { clear, el } from "./dom.js";

const SHOWN = 1000; // rows on the page; the archive of everything has them all

export function size(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n, u = -1;
  do { v /= 1024; u += 1; } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(1)} ${units[u]}`;
}

const segments = (path) => path.split("/").map(encodeURIComponent).join("/");

export class Outputs {
  constructor(jobId) {
    this.jobId = jobId;
    this.base = `/api/jobs/${encodeURIComponent(jobId)}/outputs`;
    this.body = document.getElementById("outputs");
    this.total = document.getElementById("outputs-total");
    this.all = document.getElementById("outputs-all");
    this.note = document.getElementById("share-note");
    this.expires = document.getElementById("share-expires");
    this.loaded = null; // the attempt whose outputs are shown
  }

  async load() {
    let tree;
    try {
      tree = await get(this.base);
    } catch (err) { // no outputs yet (a running job uploads them when its attempt ends)
      this.empty(err.status === 404 ? err.message : `Could not list the outputs: ${err.message}`);
      return;
    }
    this.loaded = tree.attempt;
    if (tree.attempt == null || !tree.files.length) { this.empty("The job left no outputs."); return; }
    const files = tree.files.filter((f) => f.kind === "file").length;
    this.total.textContent = `attempt ${tree.attempt} · ${files} file${files === 1 ? "" : "s"} · ${size(tree.bytes)}`;
    this.all.href = `${this.base}.tar`;
    this.all.hidden = false;
    clear(this.body);
    for (const f of tree.files.slice(0, SHOWN)) this.body.append(this.row(f));
    if (tree.files.length > SHOWN) {
      this.body.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: `and ${tree.files.length - SHOWN} more: download all to get them` })));
    }
  }

  empty(text) {
    clear(this.body);
    this.all.hidden = true;
    this.total.textContent = "";
    this.body.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text })));
  }

  row(f) {
    const depth = f.path.split("/").length - 1;
    const name = f.path.split("/").pop() + (f.kind === "dir" ? "/" : "");
    const href = `${this.base}/${segments(f.path)}`;
    const label = f.kind === "dir" ? "download folder" : "download";
    const cell = el("td", { class: `path ${f.kind}`, style: `padding-left: ${10 + depth * 18}px`, title: f.path });
    if (f.kind === "symlink") cell.append(name);
    else cell.append(el("a", { href, text: name, "data-path": f.path }));
    const share = el("button", { type: "button", class: "small", text: "Share", "data-share": f.path });
    share.addEventListener("click", () => this.share(f.path, share));
    return el("tr", {}, cell, el("td", { class: "num", text: f.kind === "file" ? size(f.size) : "" }),
      el("td", {}, f.kind === "symlink" ? "" : el("a", { href, class: "small", text: label })),
      el("td", {}, f.kind === "symlink" ? "" : share));
  }

  async share(path, button) {
    button.disabled = true;
    try {
      const made = await postJson("/api/shares", { job: this.jobId, path, expires: this.expires.value });
      this.showLink(made);
    } catch (err) {
      this.showNote(`Could not share ${path}: ${err.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  showLink(made) {
    clear(this.note);
    const link = el("input", { type: "text", readonly: "", value: made.url, id: "share-url", class: "link" });
    const copy = el("button", { type: "button", text: "Copy" });
    copy.addEventListener("click", async () => {
      link.select();
      try { await navigator.clipboard.writeText(made.url); copy.textContent = "Copied"; } catch { /* selected */ }
    });
    const revoke = el("button", { type: "button", class: "danger", text: "Revoke", id: "share-revoke" });
    revoke.addEventListener("click", async () => {
      try {
        await post(`/api/shares/${encodeURIComponent(made.share.id)}/revoke`);
        this.showNote(`The link to ${made.share.target.path || made.share.target.job_id} is revoked: it no longer opens.`);
      } catch (err) { this.showNote(`Could not revoke: ${err.message}`, true); }
    });
    const until = new Date(made.share.expires_at * 1000).toLocaleString();
    this.note.append(el("span", { text: `Read-only link to ${made.share.target.path || "every output"}, until ${until}: ` }),
      link, copy, revoke);
    this.note.hidden = false;
    link.value = made.url;
  }

  showNote(text, error = false) {
    clear(this.note);
    this.note.append(el("span", { class: error ? "error-text" : "", text }));
    this.note.hidden = false;
  }
}
