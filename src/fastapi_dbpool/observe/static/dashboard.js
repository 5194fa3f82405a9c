// The pool dashboard of fastapi-dbpool: polls <base>/stats every second and draws
// each pool's last minutes on canvases. Plain script, no dependencies, no build step.
"use strict";

(function () {
  const base = document.body.dataset.base;
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue("--" + name).trim();
  const sections = new Map(); // pool name -> its <section>
  let updates = 0;

  // -- numbers --------------------------------------------------------------------

  function formatNumber(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (Number.isInteger(value)) return value.toLocaleString("en");
    const abs = Math.abs(value);
    if (abs >= 100) return Math.round(value).toLocaleString("en");
    if (abs >= 10) return value.toFixed(1);
    if (abs >= 1) return value.toFixed(2);
    return value.toFixed(3);
  }

  // Mean of a per-second mean weighted by its per-second count, over the last n points.
  function weightedMean(means, counts, n) {
    let total = 0, count = 0;
    for (let i = Math.max(0, means.length - n); i < means.length; i++) {
      if (means[i] !== null) { total += means[i] * counts[i]; count += counts[i]; }
    }
    return count ? total / count : null;
  }

  function lastMean(values, n) {
    const tail = values.slice(-n);
    return tail.length ? tail.reduce((a, b) => a + b, 0) / tail.length : null;
  }

  // -- charts ---------------------------------------------------------------------

  // A tick step of 1, 2, 2.5 or 5 times a power of ten, at least value; counts
  // (integer charts) never get a fractional step.
  function niceStep(value, integer) {
    if (value <= 0) return integer ? 1 : 0.025;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    const steps = integer && power < 10 ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    for (const step of steps) if (value <= step * power) return Math.max(step * power, integer ? 1 : 0);
    return 10 * power;
  }

  // Seconds to show: the history there is, at least a minute, at most `kept`.
  function visibleSpan(t, end, kept) {
    const have = t.length ? end - t[0] : 0;
    return Math.min(kept, Math.max(60, Math.ceil(have / 60) * 60));
  }

  // Draw lines of {values, stroke, fill?, dash?} against times t over the `span`
  // seconds ending at `end`; `level`, if given, is a dashed horizontal line (a limit).
  // Null values leave gaps.
  function drawChart(canvas, t, end, span, lines, options) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 44, right = 8, top = 8, bottom = 20;
    const plotW = width - left - right, plotH = height - top - bottom;
    const start = end - span;
    let peak = options.level || 0;
    for (const line of lines) {
      line.values.forEach((v, i) => { if (v !== null && t[i] >= start && v > peak) peak = v; });
    }
    const step = niceStep(peak / 4, options.integer);
    const yMax = step * 4;
    const x = (time) => left + ((time - start) / span) * plotW;
    const y = (value) => top + plotH - (value / yMax) * plotH;

    g.font = "11px system-ui, sans-serif";
    g.fillStyle = color("muted");
    g.strokeStyle = color("line");
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const py = Math.round(y(step * i)) + 0.5;
      g.beginPath(); g.moveTo(left, py); g.lineTo(width - right, py); g.stroke();
      g.fillText(formatNumber(Math.round(step * i * 1000) / 1000), left - 6, py);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    const tick = span <= 120 ? 15 : 60;
    for (let ago = span; ago >= 0; ago -= tick) {
      const label = ago === 0 ? "now" : tick < 60 ? "-" + ago + " s" : "-" + ago / 60 + " min";
      const px = Math.min(Math.max(x(end - ago), left + 14), width - right - 14);
      g.fillText(label, px, top + plotH + 5);
    }

    g.save();
    g.beginPath(); g.rect(left, top, plotW, plotH); g.clip();
    if (options.level) {
      g.strokeStyle = color("capacity");
      g.setLineDash([4, 4]);
      g.beginPath(); g.moveTo(left, y(options.level)); g.lineTo(width - right, y(options.level)); g.stroke();
      g.setLineDash([]);
    }
    for (const line of lines) {
      g.strokeStyle = line.stroke;
      g.lineWidth = line.width || 1.5;
      let run = [];
      const flush = () => {
        if (!run.length) return;
        if (line.fill) {
          g.beginPath();
          g.moveTo(run[0][0], y(0));
          for (const [px, py] of run) g.lineTo(px, py);
          g.lineTo(run[run.length - 1][0], y(0));
          g.closePath();
          g.globalAlpha = 0.15; g.fillStyle = line.stroke; g.fill(); g.globalAlpha = 1;
        }
        g.beginPath();
        run.forEach(([px, py], i) => (i ? g.lineTo(px, py) : g.moveTo(px, py)));
        if (run.length === 1) g.lineTo(run[0][0] + 1, run[0][1]);
        g.stroke();
        run = [];
      };
      for (let i = 0; i < t.length; i++) {
        const v = line.values[i];
        if (v === null || v === undefined) flush();
        else run.push([x(t[i]), y(v)]);
      }
      flush();
    }
    g.restore();
  }

  // -- one pool -------------------------------------------------------------------

  function sectionFor(pool) {
    let section = sections.get(pool.name);
    if (!section) {
      const template = document.getElementById("pool-template");
      section = template.content.firstElementChild.cloneNode(true);
      section.dataset.pool = pool.name;
      section.querySelector(".pool-name").textContent = "Pool " + pool.name;
      document.getElementById("pools").appendChild(section);
      sections.set(pool.name, section);
    }
    return section;
  }

  function renderPool(pool, kept) {
    const section = sectionFor(pool);
    const s = pool.series, now = pool.now;
    section.querySelector(".pool-config").textContent =
      "size " + pool.size + " + overflow " + pool.max_overflow;
    const figures = {
      checked_out: now.checked_out, capacity: pool.capacity, overflow: now.overflow,
      max_overflow: pool.max_overflow, waiting: now.waiting,
      checkouts_rate: lastMean(s.checkouts, 5),
      wait_ms: weightedMean(s.wait_avg_ms, s.wait_count, 10),
      hold_ms: weightedMean(s.hold_avg_ms, s.hold_count, 10),
      checkouts_total: now.checkouts_total, timeouts_total: now.timeouts_total,
    };
    for (const [key, value] of Object.entries(figures)) {
      section.querySelector('[data-metric="' + key + '"]').textContent = formatNumber(value);
    }
    const end = s.t.length ? s.t[s.t.length - 1] : Date.now() / 1000;
    const span = visibleSpan(s.t, end, kept);
    const chart = (name) => section.querySelector('[data-chart="' + name + '"]');
    drawChart(chart("connections"), s.t, end, span, [
      { values: s.checked_out, stroke: color("inuse"), fill: true, width: 2 },
      { values: s.overflow, stroke: color("overflow") },
    ], { integer: true, level: pool.capacity });
    drawChart(chart("waiting"), s.t, end, span, [
      { values: s.waiting, stroke: color("waiting"), fill: true, width: 2 },
    ], { integer: true });
    drawChart(chart("wait"), s.t, end, span, [
      { values: s.wait_max_ms, stroke: color("wait-max") },
      { values: s.wait_avg_ms, stroke: color("wait"), width: 2 },
    ], {});
    drawChart(chart("hold"), s.t, end, span, [
      { values: s.hold_max_ms, stroke: color("hold-max") },
      { values: s.hold_avg_ms, stroke: color("hold"), width: 2 },
    ], {});
    drawChart(chart("rate"), s.t, end, span, [
      { values: s.checkouts, stroke: color("rate"), fill: true, width: 2 },
      { values: s.timeouts, stroke: color("timeouts") },
    ], { integer: true });
    if (now.waiting > 0 || now.checked_out >= pool.capacity) return "saturated";
    if (now.checked_out >= 0.8 * pool.capacity) return "busy";
    return "ok";
  }

  // -- refresh loop ---------------------------------------------------------------

  function setStatus(state, text) {
    const pill = document.getElementById("status");
    pill.className = "pill pill-" + state;
    pill.textContent = text;
  }

  function showError(text) {
    const error = document.getElementById("error");
    error.hidden = !text;
    error.textContent = text || "";
  }

  async function refresh() {
    let response;
    try {
      response = await fetch(base + "/stats", { cache: "no-store", credentials: "same-origin" });
    } catch (e) {
      setStatus("idle", "offline");
      showError("The server does not answer; retrying every second.");
      return;
    }
    if (response.status === 401) {
      setStatus("idle", "locked");
      showError("This dashboard needs the metrics token (DB_METRICS_TOKEN); reload to enter it.");
      return;
    }
    if (!response.ok) {
      setStatus("idle", "error " + response.status);
      return;
    }
    const stats = await response.json();
    const states = stats.pools.map((pool) => renderPool(pool, stats.window_s));
    const worst = ["saturated", "busy", "ok"].find((state) => states.includes(state)) || "idle";
    setStatus(worst, worst);
    showError("");
    document.getElementById("meta").textContent =
      "worker pid " + stats.pid + " · updated " + new Date().toLocaleTimeString("en-GB");
    document.body.dataset.updates = String(++updates);
  }

  async function loop() {
    const started = performance.now();
    try {
      await refresh();
    } finally {
      setTimeout(loop, Math.max(100, 1000 - (performance.now() - started)));
    }
  }

  loop();
})();
