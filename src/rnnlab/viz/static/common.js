// Shared by the report and the web app: decoding, colour scales, the character view and its tooltip.
"use strict";

const RL = (() => {
  function bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function uint(b64, width) {  // little-endian uint16 / uint32
    const b = bytes(b64);
    const dv = new DataView(b.buffer);
    const n = b.length / width;
    const out = width === 2 ? new Uint16Array(n) : new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = width === 2 ? dv.getUint16(2 * i, true) : dv.getUint32(4 * i, true);
    return out;
  }
  // Colour scales: white at the neutral value.
  const WHITE = [248, 248, 248];
  function mix(c, t) {
    t = Math.max(0, Math.min(1, t));
    return `rgb(${Math.round(WHITE[0] + (c[0] - WHITE[0]) * t)},${Math.round(WHITE[1] + (c[1] - WHITE[1]) * t)},${Math.round(WHITE[2] + (c[2] - WHITE[2]) * t)})`;
  }
  const NEG = [33, 102, 172], POS = [214, 66, 36], GATE = [26, 133, 72], LOSS = [96, 46, 160], GOOD = [26, 140, 70], BAD = [200, 40, 40];
  const scales = {
    signed: (x) => (x >= 0 ? mix(POS, x) : mix(NEG, -x)),   // x in [-1, 1]
    gate: (x) => mix(GATE, x),                              // x in [0, 1]
    loss: (x) => mix(LOSS, x / 4),                          // nats, full colour at 4
    gain: (x) => (x >= 0 ? mix(GOOD, x / 3) : mix(BAD, -x / 3)),  // nats, full colour at +-3
  };
  function gradient(fn, lo, hi) {
    const stops = [];
    for (let k = 0; k <= 10; k++) stops.push(fn(lo + (hi - lo) * k / 10));
    return `linear-gradient(90deg, ${stops.join(",")})`;
  }
  function visible(ch) {
    if (ch === "\n") return "\u21B5 newline";
    if (ch === " ") return "\u2423 space";
    if (ch === "\t") return "\u21E5 tab";
    if (ch === "<eos>") return "\u23CE end of item";
    return ch;
  }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  // The character view: one <span class="ch"> per character, coloured from outside.
  class TextView {
    constructor(container) {
      this.root = container;
      this.spans = [];
    }
    clear() { this.root.textContent = ""; this.spans = []; }
    append(chars) {
      const frag = document.createDocumentFragment();
      for (const ch of chars) {
        const s = document.createElement("span");
        s.className = ch === "\n" ? "ch nl" : "ch";
        s.dataset.i = this.spans.length;
        s.textContent = ch;
        this.spans.push(s);
        frag.append(s);
      }
      this.root.append(frag);
    }
    paint(i, css) { this.spans[i].style.backgroundColor = css; }
  }
  // The tooltip: shows next to the mouse, kept inside the window.
  class Tip {
    constructor(node) { this.node = node; }
    show(content, x, y) {
      this.node.replaceChildren(content);
      this.node.hidden = false;
      const r = this.node.getBoundingClientRect();
      const left = Math.min(x + 14, window.innerWidth - r.width - 6);
      const top = y + 18 + r.height > window.innerHeight ? y - r.height - 10 : y + 18;
      this.node.style.left = `${Math.max(4, left)}px`;
      this.node.style.top = `${Math.max(4, top)}px`;
    }
    hide() { this.node.hidden = true; }
  }
  // The top-k table of a tooltip: [[token, probability], ...].
  function topTable(rows) {
    const t = el("table", {});
    for (const [tok, p] of rows) {
      const bar = el("span", { class: "pbar" });
      bar.style.width = `${Math.max(1, Math.round(p * 90))}px`;
      t.append(el("tr", {}, el("td", { class: "c", text: visible(tok) }), el("td", {}, bar),
                  el("td", { text: `${(100 * p).toFixed(1)}%` })));
    }
    return t;
  }
  return { bytes, uint, scales, gradient, visible, el, TextView, Tip, topTable };
})();
