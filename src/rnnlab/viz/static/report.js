// The hidden-state report: reads the payload from #rnnlab-data and draws every section.
"use strict";

(() => {
  const D = JSON.parse(document.getElementById("rnnlab-data").textContent);
  const M = D.meta;
  const chars = Array.from(D.text);  // code points, as Python counts them
  const T = chars.length;
  const $ = (id) => document.getElementById(id);
  const NONE = 65535;
  const fmt = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "-" : x.toFixed(d));
  const num = (n) => n.toLocaleString("en-US");

  // ---------------------------------------------------------------- decoded arrays
  const loss = {};
  for (const [name, b64] of Object.entries(D.loss)) {
    const q = RL.uint(b64, 2);
    const v = new Float32Array(T);
    for (let t = 0; t < T; t++) v[t] = q[t] === NONE ? NaN : q[t] / 1000;
    loss[name] = v;
  }
  const K = D.top.k;
  const topIds = RL.uint(D.top.ids, D.top.id_bytes);
  const topP = RL.bytes(D.top.p);
  const props = {};
  for (const [name, b64] of Object.entries(D.props)) props[name] = RL.bytes(b64);
  // stored activations: key "layer/q" -> {units, lo, hi, data, row(unit)}
  const groups = {};
  for (const g of D.acts) {
    const data = RL.bytes(g.data);
    const index = new Map(g.units.map((u, j) => [u, j]));
    groups[`${g.layer}/${g.q}`] = { ...g, data, index };
  }
  function values(layer, q, unit) {  // Float32Array (T,) or null when not stored
    const g = groups[`${layer}/${q}`];
    if (!g || !g.index.has(unit)) return null;
    const j = g.index.get(unit);
    const lo = g.lo[j], span = (g.hi[j] - g.lo[j]) / 15;
    const out = new Float32Array(T);
    for (let t = 0, k = j * T; t < T; t++, k++) out[t] = lo + ((g.data[k >> 1] >> ((k & 1) << 2)) & 15) * span;  // 4-bit codes
    return out;
  }
  const signed = (q) => ["h", "c", "g", "n"].includes(q) && !(M.model === "rnn" && M.nonlinearity === "relu");

  // ---------------------------------------------------------------- header
  const bits = (x) => (x === null ? "-" : (x / Math.LN2).toFixed(3));
  const ml = D.mean_loss;
  let summary = `${M.model.toUpperCase()}, ${M.layers} layer${M.layers > 1 ? "s" : ""} of ${M.hidden} units, vocabulary ${M.vocab}`;
  if (M.run) summary += ` · run ${M.run}`;
  if (M.checkpoint) summary += ` (${M.checkpoint} checkpoint${M.step !== undefined ? `, step ${num(M.step)}` : ""})`;
  summary += ` · loss on this text: RNN ${bits(ml.rnn)} bits/char`;
  if (ml.ngram !== undefined) summary += `, ${M.baseline.orders[1]}-gram ${bits(ml.ngram)}, bigram ${bits(ml.bigram)}`;
  $("summary").textContent = summary;
  const notes = [];
  const src = M.text_file ? `${M.text_file}` : "the text";
  if (M.sampled) {
    notes.push(`${src} is long: shown are ${M.unit} ${num(M.start + 1)}–${num(M.end)} of ${num(M.total)}, a window ` +
      `at a random position (--seed ${M.seed ?? 0})` + (M.warmup ? `; the model read the ${num(M.warmup)} characters before it first.` : "."));
  } else {
    notes.push(`All ${num(T)} positions of ${src} are shown.`);
  }
  if (M.mode === "lines") notes.push("A lines-mode model: each line is read from a fresh state; the newline marks the end of an item.");
  if (M.unknown_chars) notes.push(`${num(M.unknown_chars)} characters outside the model's vocabulary were left out.`);
  if (M.stored_units < M.all_units) {
    notes.push(`Activations of ${num(M.stored_units)} of ${num(M.all_units)} unit traces are stored (budget ${M.max_mb} MB): ` +
      "the ranked units first, then every h, c and gate unit in turn; the unit lists show the stored ones (--max-mb to store more).");
  }
  if (M.baseline) {
    notes.push(`n-gram baselines: interpolated Kneser-Ney of orders ${M.baseline.orders.join(" and ")}, fitted on ${M.baseline.fitted_on}` +
      (M.baseline.in_sample ? " — the very text shown, which flatters them." : "."));
  } else {
    notes.push("No n-gram baseline (the run's training text was not found).");
  }
  const ul = $("notes");
  for (const n of notes) ul.append(RL.el("li", { text: n }));

  // ---------------------------------------------------------------- the text
  const view = new RL.TextView($("text"));
  view.append(chars);
  const tip = new RL.Tip($("tip"));
  const state = { mode: "unit", layer: 0, q: "h", unit: 0, vals: null, overlay: "", tracks: "" };
  if (!M.baseline) for (const v of ["ngram", "bigram", "gain"]) $("mode").querySelector(`option[value=${v}]`).remove();

  function storedUnits(layer, q) { const g = groups[`${layer}/${q}`]; return g ? g.units : []; }
  function fillPicker() {
    const L = $("unit-layer"), Q = $("unit-q"), U = $("unit-select");
    L.replaceChildren(...Array.from({ length: M.layers }, (_, k) => RL.el("option", { value: k, text: `${k}` })));
    Q.replaceChildren(...Object.entries(D.quantities).map(([q, name]) => RL.el("option", { value: q, text: name })));
    L.value = state.layer; Q.value = state.q;
    const units = storedUnits(state.layer, state.q);
    U.replaceChildren(...units.map((u) => RL.el("option", { value: u, text: `${u}` })));
    if (!units.includes(state.unit) && units.length) state.unit = units[0];
    U.value = state.unit;
    U.disabled = units.length === 0;
  }
  function select(layer, q, unit, prop) {
    state.mode = "unit"; state.layer = layer; state.q = q; state.unit = unit;
    if (prop !== undefined) {  // chosen from the ranking: underline the property where that means something
      state.overlay = D.underline.includes(prop) ? prop : "";
      state.tracks = prop;
    }
    $("mode").value = "unit";
    fillPicker();
    paint();
  }
  function paint() {
    $("picker").style.opacity = state.mode === "unit" ? 1 : 0.45;
    const legend = $("legend");
    legend.replaceChildren();
    let vals, fn, lo, hi, label;
    if (state.mode === "unit") {
      vals = values(state.layer, state.q, state.unit);
      state.vals = vals;
      if (!vals) { legend.textContent = "this unit is not stored in the report"; return; }
      const g = groups[`${state.layer}/${state.q}`], j = g.index.get(state.unit);
      if (signed(state.q)) {
        const m = state.q === "c" ? Math.max(Math.abs(g.lo[j]), Math.abs(g.hi[j]), 1e-6) : 1;
        fn = (x) => RL.scales.signed(x / m); lo = -m; hi = m;
      } else if (state.q === "h") {  // relu RNN
        const m = Math.max(g.hi[j], 1e-6);
        fn = (x) => RL.scales.gate(x / m); lo = 0; hi = m;
      } else { fn = RL.scales.gate; lo = 0; hi = 1; }
      label = `layer ${state.layer} · ${D.quantities[state.q]} · unit ${state.unit}`;
    } else if (state.mode === "gain") {
      vals = new Float32Array(T);
      for (let t = 0; t < T; t++) vals[t] = loss.ngram[t] - loss.rnn[t];
      fn = RL.scales.gain; lo = -3; hi = 3; label = `${M.baseline.orders[1]}-gram loss minus RNN loss (nats): green where the RNN does better`;
    } else {
      vals = loss[state.mode];
      fn = RL.scales.loss; lo = 0; hi = 4; label = `${state.mode === "rnn" ? "RNN" : state.mode} loss of each character (nats)`;
    }
    state.vals = vals;
    for (let t = 0; t < T; t++) view.paint(t, Number.isNaN(vals[t]) ? "transparent" : fn(vals[t]));
    const bar = RL.el("span", { class: "bar" });
    bar.style.background = RL.gradient(fn, lo, hi);
    legend.append(RL.el("span", { text: fmt(lo) }), bar, RL.el("span", { text: fmt(hi) }), RL.el("span", { text: label }));
    const u = state.overlay ? props[state.overlay] : null;
    for (let t = 0; t < T; t++) view.spans[t].classList.toggle("u", !!u && u[t] > 0);
    if (state.overlay) legend.append(RL.el("span", { text: `· underlined: ${D.properties[state.overlay]}` }));
    else if (state.tracks && state.mode === "unit") legend.append(RL.el("span", { text: `· ranked for: ${D.properties[state.tracks]}` }));
    $("overlay").value = state.overlay;
  }
  $("mode").addEventListener("change", (e) => { state.mode = e.target.value; paint(); });
  $("unit-layer").addEventListener("change", (e) => { state.layer = +e.target.value; fillPicker(); paint(); });
  $("unit-q").addEventListener("change", (e) => { state.q = e.target.value; fillPicker(); paint(); });
  $("unit-select").addEventListener("change", (e) => { state.unit = +e.target.value; state.mode = "unit"; $("mode").value = "unit"; paint(); });
  function step(d) {
    const units = storedUnits(state.layer, state.q);
    const i = units.indexOf(state.unit);
    if (i < 0 || !units.length) return;
    select(state.layer, state.q, units[(i + d + units.length) % units.length]);
  }
  $("unit-prev").addEventListener("click", () => step(-1));
  $("unit-next").addEventListener("click", () => step(1));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
    if (e.key === "[") step(-1); else if (e.key === "]") step(1);
  });
  for (const name of D.underline) $("overlay").append(RL.el("option", { value: name, text: D.properties[name] }));
  $("overlay").addEventListener("change", (e) => { state.overlay = e.target.value; state.tracks = ""; paint(); });

  // ---------------------------------------------------------------- the tooltip
  function tipFor(t) {
    const box = RL.el("div", {});
    box.append(RL.el("div", {}, RL.el("span", { class: "big", text: RL.visible(chars[t] === "\n" && D.boundary ? "<eos>" : chars[t]) }),
      RL.el("span", { class: "dim", text: `  position ${num(t + 1)}` })));
    if (state.mode === "unit" && state.vals) {
      box.append(RL.el("div", { text: `L${state.layer} ${state.q}[${state.unit}] ≈ ${fmt(state.vals[t], 2)}` }));
    }
    const lr = loss.rnn[t];
    let line = `loss: RNN ${fmt(lr)} nats`;
    if (loss.ngram) line += ` · ${M.baseline.orders[1]}-gram ${fmt(loss.ngram[t])} · bigram ${fmt(loss.bigram[t])}`;
    box.append(RL.el("div", { text: Number.isNaN(lr) ? "loss: - (nothing precedes it)" : line }));
    box.append(RL.el("div", { class: "dim", text: `the model's next character after this one:` }));
    const rows = [];
    for (let j = 0; j < K; j++) rows.push([D.tokens[topIds[t * K + j]], topP[t * K + j] / 255]);
    box.append(RL.topTable(rows));
    return box;
  }
  let hot = null;
  $("text").addEventListener("mouseover", (e) => {
    const s = e.target.closest(".ch");
    if (!s) return;
    if (hot) hot.classList.remove("hot");
    hot = s; s.classList.add("hot");
    tip.show(tipFor(+s.dataset.i), e.clientX, e.clientY);
  });
  $("text").addEventListener("mousemove", (e) => { if (!$("tip").hidden) tip.show($("tip").firstChild, e.clientX, e.clientY); });
  $("text").addEventListener("mouseleave", () => { tip.hide(); if (hot) hot.classList.remove("hot"); hot = null; });

  // ---------------------------------------------------------------- ranking
  const tbody = $("ranking-table").querySelector("tbody");
  const allButtons = [];
  for (const name of D.present) {
    const cell = RL.el("td", {});
    for (const r of D.ranking[name]) {
      const stored = groups[`${r.layer}/${r.q}`] && groups[`${r.layer}/${r.q}`].index.has(r.unit);
      const b = RL.el("button", { class: "unit-btn", title: `colour the text by layer ${r.layer} ${D.quantities[r.q]} unit ${r.unit}` ,
        text: `L${r.layer}·${r.q}·${r.unit}  r=${r.r >= 0 ? "+" : ""}${r.r.toFixed(2)}` });
      b.disabled = !stored;
      b.addEventListener("click", () => {
        for (const o of allButtons) o.classList.remove("sel");
        b.classList.add("sel");
        select(r.layer, r.q, r.unit, name);
        $("viewer").scrollIntoView({ behavior: "smooth" });
      });
      allButtons.push(b);
      cell.append(b);
    }
    tbody.append(RL.el("tr", {}, RL.el("td", {}, RL.el("span", { class: "pname", text: name }),
      RL.el("span", { class: "pdesc", text: D.properties[name] })), cell));
  }
  const absent = Object.keys(D.properties).filter((n) => !D.present.includes(n));
  $("absent").textContent = absent.length ? `Not in this text (constant over it): ${absent.join(", ")}.` : "";

  // ---------------------------------------------------------------- saturation
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) { const e = document.createElementNS(SVG, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }
  const GATE_COLOURS = { i: "#2166ac", f: "#d6604d", o: "#1a9850", r: "#7b3294", z: "#e08214" };
  if (!D.gates.length) {
    $("sat-plots").textContent = "The vanilla RNN has no gates.";
  }
  D.saturation.forEach((layer, k) => {
    if (!D.gates.length) return;
    const W = 250, P = 34;
    const s = svg("svg", { width: W, height: W, viewBox: `0 0 ${W} ${W}`, role: "img" });
    const X = (x) => P + x * (W - P - 8), Y = (y) => W - P - y * (W - P - 8);
    s.append(svg("rect", { x: X(0), y: Y(1), width: X(1) - X(0), height: Y(0) - Y(1), fill: "#fafbfc", stroke: "#ccd" }));
    s.append(svg("line", { x1: X(0), y1: Y(1), x2: X(1), y2: Y(0), stroke: "#ccd", "stroke-dasharray": "3 3" }));
    for (const v of [0, 0.5, 1]) {
      const tx = svg("text", { x: X(v), y: W - P + 14, "font-size": 10, "text-anchor": "middle", fill: "#667" }); tx.textContent = v; s.append(tx);
      const ty = svg("text", { x: P - 5, y: Y(v) + 3, "font-size": 10, "text-anchor": "end", fill: "#667" }); ty.textContent = v; s.append(ty);
    }
    const xl = svg("text", { x: X(0.5), y: W - 4, "font-size": 11, "text-anchor": "middle", fill: "#445" }); xl.textContent = "fraction left-saturated (< 0.1)"; s.append(xl);
    const yl = svg("text", { x: 10, y: Y(0.5), "font-size": 11, "text-anchor": "middle", fill: "#445", transform: `rotate(-90 10 ${Y(0.5)})` });
    yl.textContent = "fraction right-saturated (> 0.9)"; s.append(yl);
    for (const g of D.gates) {
      const { left, right } = layer[g];
      left.forEach((l, u) => {
        const c = svg("circle", { cx: X(l), cy: Y(right[u]), r: 2.6, fill: GATE_COLOURS[g], "fill-opacity": 0.65 });
        const title = svg("title", {}); title.textContent = `layer ${k} ${D.quantities[g]} unit ${u}: left ${(100 * l).toFixed(0)}%, right ${(100 * right[u]).toFixed(0)}%`;
        c.append(title);
        c.addEventListener("click", () => select(k, g, u));
        s.append(c);
      });
    }
    const legend = RL.el("div", {}, ...D.gates.map((g) => {
      const sw = RL.el("span", { text: "\u25CF " }); sw.style.color = GATE_COLOURS[g];
      return RL.el("span", {}, sw, RL.el("span", { text: `${D.quantities[g]}   ` }));
    }));
    $("sat-plots").append(RL.el("figure", {}, s, RL.el("figcaption", {}, RL.el("div", { text: `layer ${k}` }), legend)));
  });

  // ---------------------------------------------------------------- losses
  const canvas = $("loss-strip");
  function drawStrip() {
    const rows = loss.ngram ? [["rnn", "RNN"], ["ngram", `${M.baseline.orders[1]}-gram`], ["bigram", "bigram"], ["gain", "gain"]] : [["rnn", "RNN"]];
    const w = canvas.clientWidth || 800, rh = 22, lab = 62;
    canvas.width = w; canvas.height = rows.length * rh + 4;
    const ctx = canvas.getContext("2d");
    ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
    const cols = w - lab;
    rows.forEach(([name, label], r) => {
      ctx.fillStyle = "#445"; ctx.fillText(label, 4, r * rh + rh / 2 + 2);
      for (let x = 0; x < cols; x++) {
        const a = Math.floor(x * T / cols), b = Math.max(a + 1, Math.floor((x + 1) * T / cols));
        let s = 0, n = 0;
        for (let t = a; t < b; t++) {
          const v = name === "gain" ? loss.ngram[t] - loss.rnn[t] : loss[name][t];
          if (!Number.isNaN(v)) { s += v; n++; }
        }
        if (!n) continue;
        ctx.fillStyle = name === "gain" ? RL.scales.gain(s / n) : RL.scales.loss(s / n);
        ctx.fillRect(lab + x, r * rh + 2, 1, rh - 2);
      }
    });
  }
  function jumpTo(t) {
    const s = view.spans[Math.max(0, Math.min(T - 1, t))];
    if (hot) hot.classList.remove("hot");
    hot = s; s.classList.add("hot");
    s.scrollIntoView({ block: "center", behavior: "smooth" });
  }
  canvas.addEventListener("click", (e) => {
    const r = canvas.getBoundingClientRect();
    const x = e.clientX - r.left - 62;
    if (x >= 0) jumpTo(Math.floor(x / (r.width - 62) * T));
  });
  drawStrip();
  window.addEventListener("resize", drawStrip);
  if (D.by_property.length) {
    const on = M.baseline.orders[1];
    const tb = $("by-property");
    tb.append(RL.el("tr", {}, ...["the character predicted right after …", "characters", "RNN", `${on}-gram`, "bigram", "RNN gain over the n-gram"].map((h) => RL.el("th", { text: h }))));
    for (const row of D.by_property) {
      const gain = row.ngram - row.rnn;
      const g = RL.el("td", { class: gain > 0.02 ? "better" : gain < -0.02 ? "worse" : "", text: `${gain >= 0 ? "+" : ""}${fmt(gain, 3)}` });
      tb.append(RL.el("tr", {}, RL.el("td", { text: row.property ? `… ${D.properties[row.property]}` : "(every character)" }),
        RL.el("td", { text: num(row.chars) }), RL.el("td", { text: fmt(row.rnn, 3) }), RL.el("td", { text: fmt(row.ngram, 3) }),
        RL.el("td", { text: fmt(row.bigram, 3) }), g));
    }
    tb.append(RL.el("caption", { text: "mean loss in nats per character" }));
    // the characters where recurrence pays most
    const idx = [];
    for (let t = 0; t < T; t++) if (!Number.isNaN(loss.rnn[t]) && !Number.isNaN(loss.ngram[t])) idx.push(t);
    idx.sort((a, b) => (loss.ngram[b] - loss.rnn[b]) - (loss.ngram[a] - loss.rnn[a]));
    const box = $("gains");
    box.append(RL.el("span", { text: "Largest RNN gains (click to see): " }));
    for (const t of idx.slice(0, 12)) {
      const ctxs = chars.slice(Math.max(0, t - 12), t).join("").replace(/\n/g, "\u21B5");
      const b = RL.el("button", { title: `n-gram ${fmt(loss.ngram[t])} vs RNN ${fmt(loss.rnn[t])} nats`, text: `${ctxs}[${chars[t] === "\n" ? "\u21B5" : chars[t]}] +${fmt(loss.ngram[t] - loss.rnn[t], 1)}` });
      b.addEventListener("click", () => { state.mode = "gain"; $("mode").value = "gain"; paint(); jumpTo(t); });
      box.append(b);
    }
  } else if (!M.baseline) {
    $("by-property").replaceWith(RL.el("p", { class: "explain", text: "Without a baseline only the RNN's loss is shown." }));
  }

  // ---------------------------------------------------------------- start: the best unit of the first property
  const first = D.present.map((n) => D.ranking[n][0]).filter(Boolean).sort((a, b) => Math.abs(b.r) - Math.abs(a.r))[0];
  if (first && groups[`${first.layer}/${first.q}`] && groups[`${first.layer}/${first.q}`].index.has(first.unit)) {
    select(first.layer, first.q, first.unit);
  } else {
    const g = D.acts[0];
    if (g) select(g.layer, g.q, g.units[0]); else { fillPicker(); paint(); }
  }
  document.body.dataset.ready = "1";
})();
