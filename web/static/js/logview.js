// A live log view: lines appended as they arrive, at most MAX_LINES kept (the download has them all), stderr
// and INCL's own notes marked, terminal colours shown (ansi.js), a `\r` progress line shown as its latest state,
// following the end unless the reader scrolled up. A search keeps the lines that contain its text (any case)
// with the text marked, and an attempt filter keeps one attempt's; lines that arrive later are filtered as they
// come. Every line goes in as text: colours are spans and styles, marks are <mark> elements, never markup.
//
// A job printing tens of thousands of lines a second must not freeze the page. Lines wait as text until the next
// animation frame, and only those the frame keeps (the newest MAX_LINES) become elements: at 100,000 lines/s the
// others would be made, laid out and removed within the same frame. A frame that brings more than CHUNK lines
// puts runs of plain finished stdout lines (no colours, the open partial line left out) CHUNK to an element,
// their text joined by newlines, which the browser lays out only when in view (`.log .chunk` in app.css). One
// element per line, each laid out whether in view or not, made such frames last up to 317 ms. While a search or
// an attempt filter is on, nothing is chunked, and applying one splits the chunks back into a line each.
import { PLAIN, look, parse } from "./ansi.js";
import { el } from "./dom.js";

const MAX_LINES = 5000;
const CHUNK = 200;
const CUT = 4096; // a longer line with `\r` in it keeps only its last state
const LONG = 256 * 1024; // a longer line without one is shown up to here
const STDERR = 2, SYSTEM = 3;

export class LogView {
  constructor(pre, follow, note, count) {
    this.pre = pre;
    this.note = note;
    this.count = count;
    this.follow = follow;
    // {cls, attempt, gap, runs, text, marked, node, chunk}, oldest first: what the page keeps, and at the end
    // the `fresh` lines that have no element yet (they get one in the next frame, if it keeps them).
    this.lines = [];
    this.fresh = 0;
    this.chunks = 0; // chunk elements in the page
    this.open = new Map(); // rank:stream -> the line whose last piece did not end it
    this.styles = new Map(); // rank:stream -> the colours a line starts with (a terminal keeps them across lines)
    this.dropped = 0;
    this.attempt = null;
    this.attempts = new Set();
    this.query = null; // a RegExp, or null
    this.only = null; // an attempt number, or null for all
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
    if (batch.attempt !== this.attempt && (this.attempt !== null || batch.attempt > 1)) {
      this.open.clear();
      this.styles.clear();
      this.push({ cls: "gap", text: `— attempt ${batch.attempt} —`, attempt: batch.attempt, gap: true });
    }
    this.attempt = batch.attempt;
    this.attempts.add(batch.attempt);
    for (const [, stream, text, partial] of batch.lines) {
      const key = `${batch.rank}:${stream}`;
      let line = this.open.get(key);
      if (!line) {
        const cls = stream === STDERR ? "err" : stream === SYSTEM ? "sys" : "out";
        line = { cls, attempt: batch.attempt, raw: "", start: this.styles.get(key) ?? PLAIN };
        this.push(line);
      }
      if (!line.long) {
        line.raw += text;
        if (line.raw.length > CUT && line.raw.includes("\r")) { // a long progress line: its last state
          const cut = Math.max(0, line.raw.lastIndexOf("\r", line.raw.length - 2));
          line.start = parse(line.raw.slice(0, cut), line.start).style;
          line.raw = line.raw.slice(cut);
        }
        const shown = parse(line.raw, line.start); // a sequence cut at a piece's end waits in `raw` for its rest
        line.end = shown.style;
        line.long = line.raw.length > LONG; // an endless line: the page shows its start
        line.runs = line.long ? [...shown.runs, { text: " … (cut here: the download has all of it)", style: PLAIN }] : shown.runs;
        line.text = line.runs.length === 1 ? line.runs[0].text : line.runs.map((r) => r.text).join("");
        if (line.node) this.filter(line, true); // a partial line already shown goes on (the rest wait for a frame)
      }
      if (partial) this.open.set(key, line);
      else {
        this.open.delete(key);
        this.styles.set(key, line.end); // a sequence cut at the line's end is dropped with it
        line.raw = null;
      }
    }
    if (this.lines.length > 2 * MAX_LINES) this.trim(this.lines.length - MAX_LINES); // no frames (a hidden tab)
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  push(line) {
    this.lines.push(line);
    this.fresh += 1;
  }

  // A frame: the oldest lines beyond MAX_LINES go, then the fresh lines that are kept get their elements.
  flush() {
    this.frame = 0;
    this.trim(this.lines.length - MAX_LINES);
    if (this.fresh) {
      this.pre.append(...this.nodes(this.lines.slice(this.lines.length - this.fresh)));
      this.fresh = 0;
    }
    if (this.dropped) {
      this.note.textContent = `${this.dropped.toLocaleString()} earlier lines are not shown: download the log for all of them.`;
      this.note.hidden = false;
    }
    this.counted();
    if (this.follow.checked) {
      this.autoScrolling = true;
      this.pre.scrollTop = this.pre.scrollHeight;
    }
  }

  // The elements for these lines: one each, or, in a frame that brings more than CHUNK lines with no filter on,
  // runs of plain finished stdout lines in chunks of up to CHUNK.
  nodes(lines) {
    const out = [];
    const chunking = lines.length > CHUNK && this.query === null && this.only === null;
    const open = new Set(this.open.values());
    const plain = (line) => line.cls === "out" && !open.has(line) && !coloured(line);
    for (let i = 0; i < lines.length;) {
      if (!chunking || !plain(lines[i])) {
        out.push(this.element(lines[i++]));
        continue;
      }
      const chunk = { lines: [], first: 0, node: null };
      for (; i < lines.length && chunk.lines.length < CHUNK && plain(lines[i]); i++) {
        chunk.lines.push(lines[i]);
        lines[i].chunk = chunk;
      }
      chunk.node = el("span", { class: "out chunk", text: chunk.lines.map((l) => l.text).join("\n") });
      this.chunks += 1;
      out.push(chunk.node);
    }
    return out;
  }

  // A line's own element, filtered and painted.
  element(line) {
    line.chunk = null;
    if (line.gap) {
      line.node = el("span", { class: "gap", text: line.text });
      this.show(line);
    } else {
      line.node = el("span", { class: line.cls });
      this.filter(line, true);
    }
    return line.node;
  }

  // Drop the `extra` oldest lines: those still fresh were never shown; the elements of the rest go in one
  // removal (they are the first in the page), and a chunk that keeps some of its lines keeps only those.
  trim(extra) {
    if (extra <= 0) return;
    this.dropped += extra;
    const gone = this.lines.splice(0, extra);
    this.fresh = Math.min(this.fresh, this.lines.length);
    let last = null, cut = null;
    for (const line of gone) {
      if (line.node) last = line.node;
      else if (line.chunk) {
        line.chunk.first += 1;
        if (line.chunk.first === line.chunk.lines.length) { last = line.chunk.node; this.chunks -= 1; cut = null; }
        else cut = line.chunk;
      }
    }
    if (last && last.parentNode === this.pre) {
      const range = document.createRange();
      range.setStartBefore(this.pre.firstChild);
      range.setEndAfter(last);
      range.deleteContents();
    }
    if (cut) { // the first lines of a chunk
      cut.lines = cut.lines.slice(cut.first);
      cut.first = 0;
      cut.node.textContent = cut.lines.map((l) => l.text).join("\n");
    }
  }

  // Search: the lines that contain `text`, any case ("" for every line).
  search(text) {
    const escaped = text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    this.query = text ? new RegExp(escaped, "gi") : null;
    this.refilter();
  }

  // One attempt's lines (its number), or every attempt's (null).
  showAttempt(attempt) {
    this.only = attempt;
    this.refilter();
  }

  // Every kept line again, with the view out of the document meanwhile: thousands of changes to nodes in the
  // page cost the browser a style pass each (1.6 s for 5,000 lines against 60 ms detached, measured). With a
  // filter on, a chunk becomes a line element each, so each line can be hidden or marked on its own.
  refilter() {
    const holder = this.pre.parentNode, after = this.pre.nextSibling;
    this.pre.remove();
    if (this.chunks && (this.query !== null || this.only !== null)) this.split();
    for (const line of this.lines) {
      if (!line.node) continue; // fresh: filtered when its frame makes its element
      if (line.gap) this.show(line);
      else this.filter(line, false);
    }
    holder.insertBefore(this.pre, after);
    this.counted();
    if (this.follow.checked) {
      this.autoScrolling = true;
      this.pre.scrollTop = this.pre.scrollHeight;
    }
  }

  // Every chunk replaced by its lines' own elements.
  split() {
    let chunk = null, lines = [];
    const done = () => { if (chunk) chunk.node.replaceWith(...lines.map((l) => this.element(l))); };
    for (const line of this.lines) {
      if (!line.chunk) continue;
      if (line.chunk !== chunk) { done(); chunk = line.chunk; lines = []; }
      lines.push(line);
    }
    done();
    this.chunks = 0;
  }

  // A separator between attempts shows only with every attempt's lines.
  show(line) {
    line.node.hidden = this.only !== null;
  }

  // Hidden if a filter leaves the line out; drawn again if it has (or had) marks, or its text changed.
  filter(line, changed) {
    const matches = this.query ? ranges(line.text, this.query) : [];
    line.node.hidden = (this.only !== null && line.attempt !== this.only) || (this.query !== null && !matches.length);
    if (changed || line.marked || matches.length) this.paint(line, matches);
  }

  // A line's content: its coloured runs, the search's matches marked.
  paint(line, matches) {
    line.marked = matches.length > 0;
    if (!line.marked && !coloured(line)) {
      line.node.textContent = line.text; // the usual line: plain text, no spans
      return;
    }
    line.node.replaceChildren();
    let at = 0, m = 0;
    for (const run of line.runs) {
      const style = look(run.style);
      const box = style ? el("span", { class: style.className }) : line.node;
      if (style?.color) box.style.color = style.color;
      if (style?.background) box.style.backgroundColor = style.background;
      const end = at + run.text.length;
      let pos = at;
      while (pos < end) {
        while (m < matches.length && matches[m][1] <= pos) m++;
        const match = matches[m];
        if (!match || match[0] >= end) { box.append(run.text.slice(pos - at)); break; }
        if (match[0] > pos) { box.append(run.text.slice(pos - at, match[0] - at)); pos = match[0]; }
        const stop = Math.min(match[1], end);
        box.append(el("mark", { text: run.text.slice(pos - at, stop - at) }));
        pos = stop;
      }
      at = end;
      if (box !== line.node) line.node.append(box);
    }
  }

  counted() {
    if (!this.count) return;
    if (this.query === null && this.only === null) { this.count.textContent = ""; return; }
    let shown = 0, total = 0;
    for (const line of this.lines) {
      if (line.gap || !line.node) continue; // no element: fresh, or in a chunk (made with no filter on)
      total += 1;
      if (!line.node.hidden) shown += 1;
    }
    this.count.textContent = `${shown.toLocaleString()} of ${total.toLocaleString()} lines`;
  }
}

// Whether a line has colours or styles of its own (spans), rather than one plain text.
function coloured(line) {
  return line.runs.length > 1 || (line.runs.length === 1 && Boolean(look(line.runs[0].style)));
}

// Where a RegExp (global) matches in a text: [[start, end], ...].
function ranges(text, re) {
  const out = [];
  re.lastIndex = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (!m[0].length) { re.lastIndex += 1; continue; }
    out.push([m.index, m.index + m[0].length]);
  }
  return out;
}
