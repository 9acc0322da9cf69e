// A live log view: lines appended as they arrive, at most MAX_LINES kept (the download has them all), stderr
// and INCL's own notes marked, a `\r` progress line shown as its latest state, following the end unless the
// reader scrolled up. Every line goes in as text.
import { el } from "./dom.js";

const MAX_LINES = 5000;
const STDERR = 2, SYSTEM = 3;

export class LogView {
  constructor(pre, followBox, note) {
    this.pre = pre;
    this.note = note;
    this.follow = followBox;
    this.open = new Map(); // rank -> {node, text}: a line whose last piece did not end it
    this.pending = [];
    this.dropped = 0;
    this.attempt = null;
    this.frame = 0;
    pre.addEventListener("scroll", () => {
      const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
      if (!atEnd && this.follow.checked && !this.autoScrolling) this.follow.checked = false;
      if (atEnd) this.follow.checked = true;
      this.autoScrolling = false;
    });
  }

  // One batch from the stream: {attempt, rank, lines: [[ts, stream, text, partial], ...]}.
  add(batch) {
    if (this.attempt !== null && batch.attempt !== this.attempt) {
      this.open.clear();
      this.pending.push(el("span", { class: "gap", text: `--- attempt ${batch.attempt} ---` }));
    }
    this.attempt = batch.attempt;
    for (const [, stream, text, partial] of batch.lines) {
      let line = this.open.get(batch.rank);
      if (!line) {
        const cls = stream === STDERR ? "err" : stream === SYSTEM ? "sys" : "out";
        line = { node: el("span", { class: cls }), text: "" };
        this.pending.push(line.node);
      }
      line.text += text;
      if (line.text.length > 4096 && line.text.includes("\r")) {
        line.text = line.text.slice(Math.max(0, line.text.lastIndexOf("\r", line.text.length - 2))); // a long progress line: its last state
      }
      line.node.textContent = latest(line.text);
      if (partial) this.open.set(batch.rank, line);
      else this.open.delete(batch.rank);
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    if (this.pending.length) {
      this.pre.append(...this.pending);
      this.pending = [];
    }
    let extra = this.pre.childElementCount - MAX_LINES;
    if (extra > 0) {
      this.dropped += extra;
      while (extra-- > 0) this.pre.firstElementChild.remove();
      this.note.textContent = `${this.dropped.toLocaleString()} earlier lines are not shown: download the log for all of them.`;
      this.note.hidden = false;
    }
    if (this.follow.checked) {
      this.autoScrolling = true;
      this.pre.scrollTop = this.pre.scrollHeight;
    }
  }
}

// What a terminal would show for a line with carriage returns: the text after the last `\r` that has any.
export function latest(text) {
  if (!text.includes("\r")) return text;
  const parts = text.split("\r").filter((p) => p.length);
  return parts.length ? parts[parts.length - 1] : "";
}
