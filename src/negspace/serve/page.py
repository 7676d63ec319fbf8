"""``GET /``: a small live page, one HTML document with no external asset (no CDN, no font, no
image), drawing on canvases what ``GET /v1/stats`` says: the OOD share over time, the latency,
and an adaptive detector's state as it moves. It never shows or keeps a request's image. Where
the server asks for a token, the page asks for it once (kept in the tab's sessionStorage only).
"""

from __future__ import annotations

import html

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>negspace serve: __TITLE__</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em auto; max-width: 980px; padding: 0 1em; color: #222; }
 h1 { font-size: 1.3em; margin-bottom: .2em; }
 .sub { color: #555; margin-top: 0; }
 .cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
 .card { border: 1px solid #ddd; border-radius: 6px; padding: .5em .8em; min-width: 9em; }
 .card b { display: block; font-size: 1.4em; }
 canvas { width: 100%; height: 180px; border: 1px solid #eee; border-radius: 6px; }
 h2 { font-size: 1.05em; margin: 1.2em 0 .3em; }
 #auth { display: none; margin: 1em 0; }
 #err { color: #a00; }
 table { border-collapse: collapse; } td { padding: .1em .8em .1em 0; }
</style>
</head>
<body>
<h1>negspace serve: __TITLE__</h1>
<p class="sub" id="what"></p>
<div id="auth"><label>Bearer token: <input id="token" type="password" size="40"></label>
 <button id="save">Use</button></div>
<p id="err"></p>
<div class="cards">
 <div class="card">images scored<b id="n">-</b></div>
 <div class="card">OOD share (recent)<b id="share">-</b></div>
 <div class="card">latency p50<b id="p50">-</b></div>
 <div class="card">latency p99<b id="p99">-</b></div>
 <div class="card">queue<b id="queue">-</b></div>
</div>
<h2>OOD share per second (%)</h2>
<canvas id="c_share" width="940" height="180" aria-label="OOD share over time"></canvas>
<h2>Latency per second (ms, p50 solid, p99 dashed)</h2>
<canvas id="c_lat" width="940" height="180" aria-label="latency over time"></canvas>
<div id="adaptive" style="display:none">
<h2>Adaptive state (<span id="mode"></span>; each line on its own range, given beside its name)</h2>
<table id="state"></table>
<canvas id="c_state" width="940" height="180" aria-label="adaptive state over time"></canvas>
</div>
<script>
"use strict";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
function token() { return sessionStorage.getItem("negspace-token") || ""; }
document.getElementById("save").onclick = () => {
  sessionStorage.setItem("negspace-token", document.getElementById("token").value); refresh(); };
function fmt(x, unit) { return x === null || x === undefined ? "-" : (Math.round(x * 10) / 10) + (unit || ""); }
function draw(id, series, opts) {
  const c = document.getElementById(id), g = c.getContext("2d"), W = c.width, H = c.height, P = 34;
  g.clearRect(0, 0, W, H);
  const pts = series.flatMap(s => s.points.filter(p => p[1] !== null));
  g.fillStyle = "#777"; g.font = "11px sans-serif";
  if (!pts.length) { g.fillText("no data yet", W / 2 - 30, H / 2); return; }
  const t0 = Math.min(...pts.map(p => p[0])), t1 = Math.max(...pts.map(p => p[0])) || t0 + 1;
  let lo = opts.min !== undefined ? opts.min : Math.min(...pts.map(p => p[1]));
  let hi = opts.max !== undefined ? opts.max : Math.max(...pts.map(p => p[1]));
  if (hi <= lo) { hi = lo + 1; }
  const x = t => P + (W - P - 8) * (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5);
  const y = v => H - 18 - (H - 28) * (v - lo) / (hi - lo);
  g.strokeStyle = "#ccc"; g.beginPath(); g.moveTo(P, 6); g.lineTo(P, H - 18); g.lineTo(W - 8, H - 18); g.stroke();
  g.fillText(String(Math.round(hi * 100) / 100), 2, 12); g.fillText(String(Math.round(lo * 100) / 100), 2, H - 20);
  g.fillText(((t1 - t0) | 0) + " s", W - 40, H - 4);
  series.forEach((s, k) => {
    g.strokeStyle = s.color || COLORS[k % COLORS.length]; g.setLineDash(s.dash || []); g.beginPath();
    let first = true;
    s.points.forEach(([t, v]) => {
      if (v === null) { first = true; return; }
      if (first) { g.moveTo(x(t), y(v)); first = false; } else { g.lineTo(x(t), y(v)); }
    });
    g.stroke(); g.setLineDash([]);
    // a point with no neighbour draws no line: a dot instead, so one second of traffic shows
    g.fillStyle = g.strokeStyle;
    s.points.forEach(([t, v], i) => {
      const alone = [s.points[i - 1], s.points[i + 1]].every(q => q === undefined || q[1] === null);
      if (v !== null && alone) { g.fillRect(x(t) - 2, y(v) - 2, 5, 5); }
    });
    if (s.name) { g.fillStyle = g.strokeStyle; g.fillText(s.name, P + 70 + 150 * k, 12); }
  });
}
async function refresh() {
  const headers = token() ? {"Authorization": "Bearer " + token()} : {};
  let r;
  try { r = await fetch("v1/stats", {headers, cache: "no-store"}); }
  catch (e) { document.getElementById("err").textContent = "server unreachable"; return; }
  if (r.status === 401) { document.getElementById("auth").style.display = "block";
    document.getElementById("err").textContent = "this server asks for a token"; return; }
  if (!r.ok) { document.getElementById("err").textContent = "HTTP " + r.status; return; }
  document.getElementById("err").textContent = ""; document.getElementById("auth").style.display = "none";
  const s = await r.json();
  document.getElementById("what").textContent = s.detector;
  document.getElementById("n").textContent = s.images_scored;
  const share = s.ood_share_recent;
  document.getElementById("share").textContent = fmt(share === null ? null : 100 * share, "%");
  document.getElementById("p50").textContent = fmt(s.latency_ms_p50, " ms");
  document.getElementById("p99").textContent = fmt(s.latency_ms_p99, " ms");
  document.getElementById("queue").textContent = s.queue_rows;
  const h = s.history;
  draw("c_share", [{points: h.map(p => [p.t, p.ood_share === null ? null : 100 * p.ood_share])}], {min: 0, max: 100});
  draw("c_lat", [{name: "p50", points: h.map(p => [p.t, p.p50_ms])},
                 {name: "p99", dash: [4, 3], points: h.map(p => [p.t, p.p99_ms])}], {min: 0});
  const a = s.adaptive || {};
  if (a.mode) {
    document.getElementById("adaptive").style.display = "block";
    document.getElementById("mode").textContent = a.mode + ", " + a.images_learned + " images learned";
    const rows = Object.entries(a.state || {});
    const table = document.getElementById("state"); table.textContent = "";
    for (const [k, v] of rows) { const tr = table.insertRow(); tr.insertCell().textContent = k;
      tr.insertCell().textContent = fmt(v); }
    // each quantity on its own scale (bank sizes and lam differ by orders of magnitude)
    const series = rows.map(r => r[0]).slice(0, 6).map(n => {
      const pts = h.map(p => [p.t, (p.state || {})[n] ?? null]), vals = pts.map(p => p[1]).filter(v => v !== null);
      const lo = Math.min(...vals), hi = Math.max(...vals), span = hi > lo ? hi - lo : 1;
      const scaled = pts.map(([t, v]) => [t, v === null ? null : (v - lo) / span]);
      return {name: n + " " + fmt(lo) + "-" + fmt(hi), points: scaled};
    });
    draw("c_state", series, {min: 0, max: 1});
  }
}
refresh(); setInterval(refresh, 2000);
</script>
</body>
</html>
"""


def live_page(title: str) -> str:
    """The page, titled with the detector's method (escaped: no markup from outside)."""
    return PAGE.replace("__TITLE__", html.escape(title))
