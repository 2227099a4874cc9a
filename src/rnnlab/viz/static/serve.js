// The web app: streams a sample with its hidden states, and asks the server for reports.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let INFO = null;
  const tip = new RL.Tip($("tip"));

  // ---------------------------------------------------------------- tabs
  for (const b of document.querySelectorAll(".tab")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll(".tab")) {
        o.classList.toggle("on", o === b);
        $(o.dataset.panel).hidden = o !== b;
      }
    });
  }

  // ---------------------------------------------------------------- half floats
  function half(u) {
    const s = u & 0x8000 ? -1 : 1, e = (u >> 10) & 0x1f, f = u & 0x3ff;
    if (e === 0) return s * f * 2 ** -24;
    if (e === 31) return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * 2 ** (e - 15);
  }
  function halves(b64) {
    const q = RL.uint(b64, 2);
    const out = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) out[i] = half(q[i]);
    return out;
  }

  // ---------------------------------------------------------------- the sample and its strip
  const view = new RL.TextView($("sample"));
  const steps = [];  // {ch, p, h: Float32Array (layers * H), top}
  const canvas = $("strip");
  const COL = 3;  // pixels per character
  function rowHeight() { return Math.max(1, Math.floor(160 / INFO.hidden)); }
  function selected() { return { layer: +$("layer").value || 0, unit: Math.min(Math.max(0, +$("unit").value || 0), INFO.hidden - 1) }; }
  function colour(x) { return INFO.model === "rnn" && x > 1 ? RL.scales.signed(1) : RL.scales.signed(Math.max(-1, Math.min(1, x))); }
  function paintChar(t) {
    const { layer, unit } = selected();
    view.paint(t, colour(steps[t].h[layer * INFO.hidden + unit]));
  }
  function resizeStrip() {
    const rh = rowHeight();
    const w = Math.max(steps.length * COL, $("strip-box").clientWidth - 2);
    if (canvas.width !== w || canvas.height !== INFO.hidden * rh) {
      let old = null;
      if (canvas.width && canvas.height) {  // keep what is drawn: resizing a canvas clears it
        old = document.createElement("canvas");
        old.width = canvas.width; old.height = canvas.height;
        old.getContext("2d").drawImage(canvas, 0, 0);
      }
      canvas.width = w; canvas.height = INFO.hidden * rh;
      if (old) canvas.getContext("2d").drawImage(old, 0, 0);
    }
  }
  function drawColumn(t) {
    const { layer } = selected();
    const ctx = canvas.getContext("2d");
    const H = INFO.hidden, rh = rowHeight();
    for (let u = 0; u < H; u++) {
      ctx.fillStyle = colour(steps[t].h[layer * H + u]);
      ctx.fillRect(t * COL, u * rh, COL, rh);
    }
  }
  function markUnit() {
    const { unit } = selected();
    drawAll();
    const ctx = canvas.getContext("2d");
    ctx.strokeStyle = "#111"; ctx.lineWidth = 1;
    ctx.strokeRect(0.5, unit * rowHeight() - 0.5, canvas.width - 1, rowHeight() + 1);
  }
  function drawAll() {
    canvas.width = 0;  // clear
    resizeStrip();
    for (let t = 0; t < steps.length; t++) drawColumn(t);
  }
  function repaint() {
    for (let t = 0; t < steps.length; t++) paintChar(t);
    markUnit();
    const { layer, unit } = selected();
    const bar = RL.el("span", { class: "bar" });
    bar.style.background = RL.gradient(RL.scales.signed, -1, 1);
    $("legend").replaceChildren(RL.el("span", { text: "-1" }), bar, RL.el("span", { text: "+1" }),
      RL.el("span", { text: `text coloured by layer ${layer} hidden unit ${unit}` }));
  }
  $("layer").addEventListener("change", repaint);
  $("unit").addEventListener("input", repaint);
  canvas.addEventListener("click", (e) => {
    const r = canvas.getBoundingClientRect();
    $("unit").value = Math.min(INFO.hidden - 1, Math.floor((e.clientY - r.top) / rowHeight()));
    repaint();
  });
  canvas.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect();
    const t = Math.floor((e.clientX - r.left) / COL), u = Math.floor((e.clientY - r.top) / rowHeight());
    if (t < 0 || t >= steps.length || u < 0 || u >= INFO.hidden) { tip.hide(); return; }
    const { layer } = selected();
    tip.show(RL.el("div", { text: `character ${t + 1} ${JSON.stringify(steps[t].ch)} · layer ${layer} unit ${u}: ` +
      `${steps[t].h[layer * INFO.hidden + u].toFixed(3)} (click to colour the text by it)` }), e.clientX, e.clientY);
  });
  canvas.addEventListener("mouseleave", () => tip.hide());
  $("sample").addEventListener("mouseover", (e) => {
    const s = e.target.closest(".ch");
    if (!s) return;
    const t = +s.dataset.i, st = steps[t];
    const { layer, unit } = selected();
    const box = RL.el("div", {}, RL.el("div", {}, RL.el("span", { class: "big", text: RL.visible(st.ch) }),
      RL.el("span", { class: "dim", text: `  ${st.p ? "prime" : "sampled"}, character ${t + 1}` })),
      RL.el("div", { text: `layer ${layer} unit ${unit}: ${st.h[layer * INFO.hidden + unit].toFixed(3)}` }),
      RL.el("div", { class: "dim", text: "the model's next character after this one:" }), RL.topTable(st.top));
    tip.show(box, e.clientX, e.clientY);
  });
  $("sample").addEventListener("mouseleave", () => tip.hide());

  // ---------------------------------------------------------------- streaming (fetch + server-sent events)
  let controller = null;
  function status(text, err) { $("status").textContent = text; $("status").classList.toggle("err", !!err); }
  async function errorOf(resp) {
    try { return (await resp.json()).error || resp.statusText; } catch (e) { return resp.statusText; }
  }
  function onEvent(event, data) {
    if (event === "meta") return;
    if (event === "done") { status(`${data.chars} characters in ${data.seconds} s`); return; }
    if (event === "failed") { status(data.error, true); return; }
    steps.push({ ch: data.ch, p: data.p, h: halves(data.h), top: data.top });
    const t = steps.length - 1;
    view.append([data.ch]);
    if (data.p) view.spans[t].classList.add("pr");
    paintChar(t);
    resizeStrip();
    drawColumn(t);
    if (t % 20 === 0) {
      $("strip-box").scrollLeft = canvas.width;
      $("sample").scrollTop = $("sample").scrollHeight;
    }
  }
  async function generate(ev) {
    ev.preventDefault();
    if (controller) controller.abort();
    steps.length = 0;
    view.clear();
    canvas.width = 0;
    const q = new URLSearchParams({ prime: $("prime").value, temperature: $("temperature").value,
      top_k: $("top-k").value, length: $("length").value, cps: $("cps").value });
    if ($("seed").value !== "") q.set("seed", $("seed").value);
    controller = new AbortController();
    $("generate").disabled = true; $("stop").disabled = false;
    status("generating…");
    document.body.dataset.streaming = "1";
    try {
      const resp = await fetch(`api/sample?${q}`, { signal: controller.signal });
      if (!resp.ok) { status(`${resp.status}: ${await errorOf(resp)}`, true); return; }
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let event = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) onEvent(event, JSON.parse(data));
        }
      }
    } catch (e) {
      if (e.name === "AbortError") status(`stopped after ${steps.length} characters`);
      else status(`the connection failed: ${e.message}`, true);
    } finally {
      controller = null;
      $("generate").disabled = false; $("stop").disabled = true;
      document.body.dataset.streaming = "0";
      markUnit();
      $("strip-box").scrollLeft = canvas.width;
    }
  }
  $("sample-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });

  // ---------------------------------------------------------------- reports
  let reportUrl = null;
  $("make-report").addEventListener("click", async () => {
    const st = $("report-status");
    st.classList.remove("err");
    st.textContent = "computing…";
    $("make-report").disabled = true;
    try {
      const resp = await fetch("api/report", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: $("report-text").value, chars: +$("report-chars").value || 3000 }) });
      if (!resp.ok) { st.textContent = `${resp.status}: ${await errorOf(resp)}`; st.classList.add("err"); return; }
      const html = await resp.text();
      $("report-frame").srcdoc = html;
      if (reportUrl) URL.revokeObjectURL(reportUrl);
      reportUrl = URL.createObjectURL(new Blob([html], { type: "text/html" }));
      $("report-download").href = reportUrl; $("report-download").hidden = false;
      st.textContent = `${(html.length / 1e6).toFixed(2)} MB`;
    } catch (e) {
      st.textContent = `the request failed: ${e.message}`; st.classList.add("err");
    } finally {
      $("make-report").disabled = false;
    }
  });

  // ---------------------------------------------------------------- start
  fetch("api/info").then((r) => r.json()).then((info) => {
    INFO = info;
    $("model-info").textContent = `${info.model.toUpperCase()}, ${info.layers} layer${info.layers > 1 ? "s" : ""} of ` +
      `${info.hidden} units, vocabulary ${info.vocab}` + (info.run ? ` · run ${info.run}` : "") +
      ` · up to ${info.limits.max_length} characters per sample`;
    $("layer").replaceChildren(...Array.from({ length: info.layers }, (_, k) => RL.el("option", { value: k, text: `${k}` })));
    $("layer").value = info.layers - 1;
    $("unit").max = info.hidden - 1;
    $("length").max = info.limits.max_length;
    $("prime").maxLength = info.limits.max_prime;
    $("report-chars").max = info.limits.max_chars;
    if (!$("prime").value) $("prime").value = info.prime;
    repaint();
    document.body.dataset.ready = "1";
  }).catch((e) => { $("model-info").textContent = `cannot reach the server: ${e.message}`; });
})();
