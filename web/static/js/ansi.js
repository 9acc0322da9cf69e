// Terminal escape sequences in a log line, read as a terminal would show them: SGR (`ESC [ ... m`: colours,
// bold, italic, underline, inverse, reset) becomes styled runs of text; every other sequence (cursor moves, erase
// line, window titles, hyperlinks' markers) and stray control characters are dropped, so no garbage shows. A `\r`
// returns to the line's start: what shows is the last piece that has any text (a progress bar's latest state).
// Pure: text and a style in, runs and the style after out; the caller builds the DOM (as text, never markup).

// A style: fg/bg are null (the log's own), a palette index 0..255, or "#rrggbb" (truecolor).
export const PLAIN = Object.freeze({ fg: null, bg: null, bold: false, dim: false, italic: false, underline: false,
  inverse: false, strike: false });

// The 16 base colours, chosen to read on the log's dark background (black is a grey, or it would vanish).
export const PALETTE = ["#64748b", "#f87171", "#4ade80", "#facc15", "#60a5fa", "#e879f9", "#22d3ee", "#e2e8f0",
  "#94a3b8", "#fca5a5", "#86efac", "#fde047", "#93c5fd", "#f0abfc", "#67e8f9", "#ffffff"];
const DEFAULT_FG = "#e2e8f0", DEFAULT_BG = "#0f172a";
const CUBE = [0, 95, 135, 175, 215, 255];
const hex = (r, g, b) => "#" + [r, g, b].map((v) => Math.max(0, Math.min(255, v | 0)).toString(16).padStart(2, "0")).join("");

// A colour as CSS: the palette, xterm's 6×6×6 cube and grey ramp for 16..255, truecolor as is.
export function color(c) {
  if (c === null || c === undefined) return null;
  if (typeof c === "string") return c;
  if (c < 16) return PALETTE[c];
  if (c < 232) {
    const n = c - 16;
    return hex(CUBE[Math.floor(n / 36)], CUBE[Math.floor(n / 6) % 6], CUBE[n % 6]);
  }
  const g = 8 + 10 * (c - 232);
  return hex(g, g, g);
}

// An extended colour (38/48) from the parameters after it: [colour, how many parameters it used].
function extended(params, i) {
  const sub = params[i].includes(":") ? params[i].split(":").slice(1) : null; // the `38:2::r:g:b` form
  const args = sub ?? params.slice(i + 1);
  const used = sub ? 0 : null;
  const mode = Number(args[0]);
  if (mode === 5 && args.length >= 2) return [Number(args[1]) & 255, used ?? 2];
  if (mode === 2) {
    const rgb = sub && args.length >= 5 ? args.slice(2, 5) : args.slice(1, 4); // colon form may name a colour space
    if (rgb.length === 3) return [hex(...rgb.map(Number)), used ?? 4];
  }
  return [undefined, used ?? args.length];
}

// One SGR sequence's parameters applied to a style: the new style.
export function sgr(style, text) {
  const s = { ...style };
  const params = text === "" ? ["0"] : text.split(";");
  for (let i = 0; i < params.length; i++) {
    const p = params[i];
    const code = p === "" ? 0 : parseInt(p, 10);
    if (code === 38 || code === 48) {
      const [c, used] = extended(params, i);
      if (c !== undefined) s[code === 38 ? "fg" : "bg"] = c;
      i += used;
      continue;
    }
    if (code === 0) Object.assign(s, PLAIN);
    else if (code === 1) s.bold = true;
    else if (code === 2) s.dim = true;
    else if (code === 3) s.italic = true;
    else if (code === 4) s.underline = true;
    else if (code === 7) s.inverse = true;
    else if (code === 9) s.strike = true;
    else if (code === 22) { s.bold = false; s.dim = false; }
    else if (code === 23) s.italic = false;
    else if (code === 24) s.underline = false;
    else if (code === 27) s.inverse = false;
    else if (code === 29) s.strike = false;
    else if (code >= 30 && code <= 37) s.fg = code - 30;
    else if (code === 39) s.fg = null;
    else if (code >= 40 && code <= 47) s.bg = code - 40;
    else if (code === 49) s.bg = null;
    else if (code >= 90 && code <= 97) s.fg = code - 90 + 8;
    else if (code >= 100 && code <= 107) s.bg = code - 100 + 8;
  }
  return Object.freeze(s);
}

export function plain(style) {
  return style.fg === null && style.bg === null && !style.bold && !style.dim && !style.italic && !style.underline &&
    !style.inverse && !style.strike;
}

// What a style looks like: {className, color, background} (null for the log's own look).
export function look(style) {
  if (plain(style)) return null;
  let fg = color(style.fg), bg = color(style.bg);
  if (style.inverse) [fg, bg] = [bg ?? DEFAULT_BG, fg ?? DEFAULT_FG];
  const cls = ["ansi"];
  if (style.bold) cls.push("ansi-bold");
  if (style.dim) cls.push("ansi-dim");
  if (style.italic) cls.push("ansi-italic");
  if (style.underline || style.strike) cls.push(style.underline && style.strike ? "ansi-under-strike" : style.underline ? "ansi-under" : "ansi-strike");
  return { className: cls.join(" "), color: fg, background: bg };
}

// The end of an escape sequence that starts at `i` (text[i] is ESC or the 8-bit CSI), or -1 if the text ends
// first (the sequence is cut: the caller keeps it until the rest arrives).
function sequenceEnd(text, i) {
  const n = text.length;
  let j = i + 1;
  if (text[i] === "\x9b") j = i; // 8-bit CSI: parameters follow at once
  else {
    if (j >= n) return -1;
    const kind = text[j];
    if (kind === "]" || kind === "P" || kind === "X" || kind === "^" || kind === "_") {
      // OSC, DCS, SOS, PM, APC: a string up to BEL or ST (ESC \).
      for (let k = j + 1; k < n; k++) {
        if (text[k] === "\x07") return k + 1;
        if (text[k] === "\x1b") return k + 1 < n ? (text[k + 1] === "\\" ? k + 2 : k + 1) : -1;
      }
      return -1;
    }
    if (kind !== "[") {
      // ESC, intermediates (0x20-0x2F), a final byte: `ESC ( B`, `ESC 7`, `ESC =`.
      while (j < n && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
      return j < n ? j + 1 : -1;
    }
  }
  // CSI: parameter bytes (0x30-0x3F), intermediates (0x20-0x2F), a final byte (0x40-0x7E).
  for (let k = j + 1; k < n; k++) {
    const c = text.charCodeAt(k);
    if (c >= 0x40 && c <= 0x7e) return k + 1;
    if (c < 0x20 || c > 0x3f) return k; // malformed: drop what came so far, go on with this character
  }
  return -1;
}

// What parse reads specially: escape sequences, `\r`, other control characters (a tab is text).
const SPECIAL = /[\x00-\x08\x0a-\x1f\x7f\x9b]/;

// A line's text from `style` on: {runs: [{text, style}], style (after it), rest (a cut sequence at its end)}.
export function parse(text, style = PLAIN) {
  if (!SPECIAL.test(text)) return { runs: text ? [{ text, style }] : [], style, rest: "" }; // the usual line
  let runs = [], shown = [];
  let buf = "", start = 0;
  const push = () => {
    if (!buf) return;
    const last = runs[runs.length - 1];
    if (last && last.style === style) last.text += buf;
    else runs.push({ text: buf, style });
    buf = "";
  };
  let i = 0;
  const n = text.length;
  for (; i < n; i++) {
    const ch = text[i];
    const c = text.charCodeAt(i);
    if (ch === "\x1b" || ch === "\x9b") {
      buf += text.slice(start, i);
      const end = sequenceEnd(text, i);
      if (end < 0) { start = n; push(); return { runs: runs.length ? runs : shown, style, rest: text.slice(i) }; }
      const seq = text.slice(i, end);
      if (seq.endsWith("m") && (seq[1] === "[" || ch === "\x9b")) {
        const params = seq.slice(ch === "\x9b" ? 1 : 2, -1);
        if (/^[\d;:]*$/.test(params)) { push(); style = sgr(style, params); }
      }
      i = end - 1;
      start = end;
    } else if (ch === "\r") {
      buf += text.slice(start, i);
      push();
      if (runs.length) { shown = runs; runs = []; }
      start = i + 1;
    } else if ((c < 0x20 && ch !== "\t") || c === 0x7f) {
      buf += text.slice(start, i); // a stray control character (backspace, bell, a newline inside a piece)
      start = i + 1;
    }
  }
  buf += text.slice(start, n);
  push();
  return { runs: runs.length ? runs : shown, style, rest: "" };
}
