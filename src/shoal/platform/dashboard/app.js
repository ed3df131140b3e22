// Shoal dashboard: polls the control API (session cookie from /login) and draws with canvas.
"use strict";

const POLL_MS = 2000;
const state = { logCursor: null, eventSeq: 0, services: [], logKey: "" };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

async function api(path) {
  const resp = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) {
    $("#auth").classList.remove("hidden");
    throw new Error("unauthorised");
  }
  if (!resp.ok) throw new Error(`${path}: ${resp.status}`);
  $("#auth").classList.add("hidden");
  return resp.json();
}

const fmt = {
  num: (v, d = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(d)),
  ms: (v) => (v === null || v === undefined ? "–" : `${(v * 1000).toFixed(1)} ms`),
  pct: (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`),
  dur: (s) => (s >= 3600 ? `${(s / 3600).toFixed(1)}h` : s >= 60 ? `${(s / 60).toFixed(1)}m`
    : `${Math.round(s)}s`),
  time: (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false }),
};
const BREAKER = { 0: "closed", 1: "open", 2: "half-open" };

function renderStatus(status, metrics) {
  $("#system").textContent = status.system;
  $("#phase").textContent = status.phase;
  $("#meta").textContent = `control ${status.control.url}` +
    (status.gateway ? ` · gateway ${status.gateway}` : "");
  const services = metrics.services || {};
  const body = $("#services tbody");
  const instances = $("#instances tbody");
  body.replaceChildren();
  instances.replaceChildren();
  for (const svc of status.services) {
    const m = services[svc.service] || {};
    const ready = svc.instances.filter((i) => i.state === "ready").length;
    const breakers = Object.entries(m.breakers || {}).map(([up, s]) =>
      el("span", { class: `breaker-${BREAKER[s] || s}` }, `${up}: ${BREAKER[s] || s} `));
    body.append(el("tr", { "data-service": svc.service },
      el("td", {}, svc.service),
      el("td", { class: "num ready" }, `${ready}/${svc.desired}`),
      el("td", { class: "num rps" }, fmt.num(m.rps, 2)),
      el("td", { class: "num errors" }, fmt.pct(m.error_ratio)),
      el("td", { class: "num p50" }, fmt.ms(m.p50)),
      el("td", { class: "num p95" }, fmt.ms(m.p95)),
      el("td", { class: "num p99" }, fmt.ms(m.p99)),
      el("td", { class: "num inflight" }, fmt.num(m.in_flight, 0)),
      el("td", { class: "num cpu" }, m.cpu_percent === undefined ? "–" : `${fmt.num(m.cpu_percent)}%`),
      el("td", { class: "num restarts" }, svc.instances.reduce((a, i) => a + i.restarts, 0)),
      el("td", { class: "breakers" }, ...breakers)));
    for (const inst of svc.instances) {
      instances.append(el("tr", { "data-instance": inst.id },
        el("td", {}, inst.id),
        el("td", { class: `state-${inst.state}` }, inst.state),
        el("td", { class: "num" }, inst.port),
        el("td", { class: "num" }, inst.pid ?? "–"),
        el("td", { class: "num" }, inst.pid ? fmt.dur(inst.uptime_s) : "–"),
        el("td", { class: "num" }, inst.restarts),
        el("td", {}, inst.ready ? "yes" : "no"),
        el("td", { class: "num" }, inst.version)));
    }
  }
  const names = status.services.map((s) => s.service);
  if (names.join() !== state.services.join()) {
    state.services = names;
    const select = $("#log-service");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "all"),
      ...names.map((n) => el("option", { value: n }, n)));
    select.value = chosen;
  }
  renderCharts(status.services.map((s) => s.service), services);
}

function chartCard(service, key, label, cls) {
  const id = `chart-${service}-${key}`;
  let card = document.getElementById(id);
  if (!card) {
    card = el("div", { class: "chart", id },
      el("h3", {}, el("span", { class: cls }, label), ` · ${service}`), el("canvas"));
    $("#charts").append(card);
  }
  return card.querySelector("canvas");
}

function drawLine(canvas, points, color, format) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const values = points.map((p) => (p.v === null ? null : p.v));
  const finite = values.filter((v) => v !== null);
  const max = Math.max(1e-9, ...finite) * 1.15;
  ctx.strokeStyle = "#24303c";
  ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  if (points.length > 1) {
    const t0 = points[0].t;
    const span = Math.max(1, points[points.length - 1].t - t0);
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    for (const p of points) {
      if (p.v === null) { pen = false; continue; }
      const x = ((p.t - t0) / span) * (w - 2) + 1;
      const y = h - 2 - (p.v / max) * (h - 14);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    }
    ctx.stroke();
  }
  ctx.fillStyle = "#7b8794";
  ctx.font = "11px system-ui, sans-serif";
  const last = finite.length ? finite[finite.length - 1] : null;
  ctx.fillText(`now ${format(last)} · max ${format(finite.length ? max / 1.15 : null)}`, 4, 11);
}

function renderCharts(names, services) {
  for (const name of names) {
    const history = (services[name] && services[name].history) || [];
    const series = (key) => history.map((h) => ({ t: h.at, v: h[key] }));
    drawLine(chartCard(name, "rps", "req/s", "legend-rps"), series("rps"), "#61afef",
      (v) => fmt.num(v, 2));
    drawLine(chartCard(name, "err", "error ratio", "legend-err"), series("error_ratio"),
      "#e06c75", fmt.pct);
    drawLine(chartCard(name, "p95", "p95 latency", "legend-lat"), series("p95"), "#e5c07b",
      fmt.ms);
  }
}

function renderEvents(events) {
  const list = $("#events");
  for (const ev of events) {
    state.eventSeq = Math.max(state.eventSeq, ev.seq);
    const detail = Object.entries(ev)
      .filter(([k, v]) => !["seq", "ts", "kind"].includes(k) && typeof v !== "object")
      .map(([k, v]) => `${k}=${v}`).join(" ");
    list.prepend(el("li", { "data-kind": ev.kind },
      el("time", {}, fmt.time(ev.ts)), ` ${ev.kind} `, detail));
  }
  while (list.children.length > 200) list.lastChild.remove();
}

function logQuery() {
  const params = new URLSearchParams({ limit: "200" });
  const fields = { service: "#log-service", level: "#log-level", trace: "#log-trace",
    grep: "#log-grep" };
  for (const [key, sel] of Object.entries(fields)) {
    const value = $(sel).value.trim();
    if (value) params.set(key, value);
  }
  return params;
}

function logRow(entry) {
  const trace = entry.trace_id
    ? el("a", { class: "trace", title: "show this trace", "data-trace": entry.trace_id },
      entry.trace_id.slice(0, 12))
    : "";
  return el("tr", { "data-service": entry.service, "data-id": entry.id },
    el("td", {}, el("time", {}, fmt.time(entry.ts))),
    el("td", {}, entry.instance),
    el("td", { class: `lvl-${entry.level}` }, entry.level),
    el("td", {}, trace),
    el("td", { class: "msg" }, entry.message));
}

async function refreshLogs() {
  const params = logQuery();
  const key = params.toString();
  const body = $("#logs tbody");
  if (key !== state.logKey) {
    state.logKey = key;
    state.logCursor = null;
    body.replaceChildren();
  }
  if (state.logCursor !== null) params.set("after", state.logCursor);
  const page = await api(`/v1/logs?${params}`);
  if (key !== state.logKey) return; // the filter changed while we waited
  state.logCursor = page.cursor;
  for (const entry of page.entries) body.prepend(logRow(entry));
  while (body.children.length > 500) body.lastChild.remove();
  $("#log-count").textContent = `${body.children.length} lines`;
}

async function poll() {
  try {
    const [status, metrics, events] = await Promise.all([
      api("/v1/status"), api("/v1/metrics?history=1"), api(`/v1/events?after=${state.eventSeq}`),
    ]);
    renderStatus(status, metrics);
    renderEvents(events.events);
    await refreshLogs();
  } catch (err) {
    if (err.message !== "unauthorised") $("#meta").textContent = `unreachable: ${err.message}`;
  }
}

let timer = null;
let running = false;
let again = false;
async function tick() {
  if (running) { again = true; return; }
  running = true;
  try { await poll(); } finally { running = false; }
  const soon = again;
  again = false;
  schedule(soon);
}
function schedule(now = false) {
  clearTimeout(timer);
  timer = setTimeout(tick, now ? 0 : POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const sel of ["#log-service", "#log-level"]) {
    $(sel).addEventListener("change", () => schedule(true));
  }
  for (const sel of ["#log-trace", "#log-grep"]) {
    $(sel).addEventListener("input", () => schedule(true));
  }
  $("#log-clear").addEventListener("click", () => {
    for (const sel of ["#log-service", "#log-level", "#log-trace", "#log-grep"]) $(sel).value = "";
    schedule(true);
  });
  $("#logs").addEventListener("click", (event) => {
    const link = event.target.closest("a.trace");
    if (link) { $("#log-trace").value = link.dataset.trace; schedule(true); }
  });
  schedule(true);
});
