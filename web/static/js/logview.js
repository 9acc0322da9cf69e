// A live log view: lines appended as they arrive, at most MAX_LINES kept (the download has them all), stderr
// and INCL's own notes marked, a `\r` progress line shown as its latest state, following the end unless the
// reader scrolled up. Every line goes in as text.
//
// A line is an element of its own, except in a frame that brings more than CHUNK lines (a job printing tens of
// thousands a second): its finished stdout lines then go in CHUNK at a time, their text joined by newlines, in
// elements the browser lays out only when they are in view (`.log .chunk` in app.css). At 100,000 lines/s each
// frame replaces the whole page of 5,000 lines; one element per line, laid out whether in view or not, made
// those frames last 250-330 ms on a loaded 2-core machine.
import { el } from "./dom.js";

const MAX_LINES = 5000;
const CHUNK = 200;
const STDERR = 2, SYSTEM = 3;

export class LogView {
  constructor(pre, followBox, note) {
    this.pre = pre;
    this.note = note;
    this.follow = followBox;
    this.open = new Map(); // rank -> {node, text}: a line whose last piece did not end it
    this.pending = [];
    this.dropped = 0;
    this.shown = 0; // lines in `pre`
    this.lines = new WeakMap(); // element -> how many lines it holds, where more than one
    this.attempt = null;
    this.frame = 0;
    pre.addEventListener("scroll", () => {
      const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
      if (!atEnd && this.follow.checked && !this.autoScrolling) this.follow.checked = false;
      if (atEnd) this.follow.checked = true;
      this.autoScrolling = false;
    });
  }

  // One batch from the stream: {attempt, rank, lines: [[ts, stream, text, partial], ...]}. Lines wait as text
  // until the next frame; only those that will be on the page then become elements (at 100,000 lines/s, the
  // rest would be made, laid out and removed within the same frame).
  add(batch) {
    if (this.attempt !== null && batch.attempt !== this.attempt) {
      this.open.clear();
      this.pending.push({ cls: "gap", text: `--- attempt ${batch.attempt} ---`, node: null });
    }
    this.attempt = batch.attempt;
    for (const [, stream, text, partial] of batch.lines) {
      let line = this.open.get(batch.rank);
      if (!line) {
        line = { cls: stream === STDERR ? "err" : stream === SYSTEM ? "sys" : "out", text: "", node: null };
        this.pending.push(line);
      }
      line.text += text;
      if (line.text.length > 4096 && line.text.includes("\r")) {
        line.text = line.text.slice(Math.max(0, line.text.lastIndexOf("\r", line.text.length - 2))); // a long progress line: its last state
      }
      if (line.node) line.node.textContent = latest(line.text); // a partial line already shown goes on
      if (partial) this.open.set(batch.rank, line);
      else this.open.delete(batch.rank);
    }
    if (this.pending.length > 2 * MAX_LINES) { // no frames (a hidden tab): keep what the next one would show
      this.dropped += this.pending.length - MAX_LINES;
      this.pending.splice(0, this.pending.length - MAX_LINES);
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const keep = this.pending.length > MAX_LINES ? this.pending.slice(-MAX_LINES) : this.pending;
    this.dropped += this.pending.length - keep.length;
    this.pending = [];
    const nodes = this.nodes(keep);
    if (keep.length === MAX_LINES) {
      this.dropped += this.shown;
      this.pre.replaceChildren(...nodes);
      this.shown = MAX_LINES;
    } else if (nodes.length) {
      this.pre.append(...nodes);
      this.shown += keep.length;
      this.trim(this.shown - MAX_LINES);
    }
    if (this.dropped) {
      this.note.textContent = `${this.dropped.toLocaleString()} earlier lines are not shown: download the log for all of them.`;
      this.note.hidden = false;
    }
    if (this.follow.checked) {
      this.autoScrolling = true;
      this.pre.scrollTop = this.pre.scrollHeight;
    }
  }

  // The elements for these lines: one each, or in a large frame runs of finished stdout lines in elements of CHUNK.
  nodes(lines) {
    const out = [];
    const open = new Set(this.open.values());
    for (let i = 0; i < lines.length;) {
      const line = lines[i];
      if (lines.length <= CHUNK || line.cls !== "out" || open.has(line)) {
        out.push((line.node = el("span", { class: line.cls, text: latest(line.text) })));
        i += 1;
        continue;
      }
      const texts = [];
      for (; i < lines.length && texts.length < CHUNK && lines[i].cls === "out" && !open.has(lines[i]); i++) {
        texts.push(latest(lines[i].text));
      }
      const node = el("span", { class: "out chunk", text: texts.join("\n") });
      this.lines.set(node, texts.length);
      out.push(node);
    }
    return out;
  }

  // Remove the `extra` oldest lines.
  trim(extra) {
    if (extra <= 0) return;
    this.shown -= extra;
    this.dropped += extra;
    const range = document.createRange();
    let last = null;
    for (let node = this.pre.firstElementChild; node && extra > 0; node = node.nextElementSibling) {
      const n = this.lines.get(node) ?? 1;
      if (n > extra) { // the first lines of a run
        let at = -1;
        for (let k = 0; k < extra; k++) at = node.textContent.indexOf("\n", at + 1);
        node.textContent = node.textContent.slice(at + 1);
        this.lines.set(node, n - extra);
        break;
      }
      extra -= n;
      last = node;
    }
    if (last) { // whole elements, in one removal
      range.setStartBefore(this.pre.firstElementChild);
      range.setEndAfter(last);
      range.deleteContents();
    }
  }
}

// What a terminal would show for a line with carriage returns: the text after the last `\r` that has any.
export function latest(text) {
  if (!text.includes("\r")) return text;
  const parts = text.split("\r").filter((p) => p.length);
  return parts.length ? parts[parts.length - 1] : "";
}
