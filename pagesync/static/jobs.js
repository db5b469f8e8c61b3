// pagesync /jobs dashboard: polls /jobs/api/snapshot and fills the page.
// Every piece of data goes into the DOM as text (textContent), never as HTML.
"use strict";

const POLL_MS = 1500;
const SVG_NS = "http://www.w3.org/2000/svg";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
let failedSignature = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function setText(id, value) {
  document.getElementById(id).textContent = value;
}

function fillRows(tableId, rows, emptyText, columns) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", {class: "empty"}, el("td", {colspan: String(columns)}, emptyText)));
    return;
  }
  for (const cells of rows) {
    body.append(el("tr", {}, ...cells.map((c) => el("td", {}, c))));
  }
}

function ago(seconds) {
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "-";
}

function renderTotals(snap) {
  for (const key of ["processed", "failed", "enqueued", "retrying", "dead"]) {
    setText(`t-${key}`, snap.summary[key].toLocaleString("en-US"));
  }
  setText("t-depth", snap.queue_depth >= 0 ? snap.queue_depth.toLocaleString("en-US") : "unreachable");
  setText("t-pending", (snap.pending || 0).toLocaleString("en-US"));
  const alert = document.getElementById("queue-alert");
  const pending = snap.pending || 0, unsent = snap.unsent || 0;
  const waits = pending === 1 ? "1 job waits" : `${pending.toLocaleString("en-US")} jobs wait`;
  const lost = unsent === 1 ? "1 queued job has" : `${unsent.toLocaleString("en-US")} queued jobs have`;
  // the same words as display.outage_message and display.unsent_message
  alert.textContent = snap.queue_depth < 0 ? `The queue is unreachable. Syncs are still stored; ` +
    `${waits} in SQLite (awaiting delivery). When it is back they are delivered, and queued ` +
    `jobs whose messages it lost are sent again.`
    : unsent ? `${lost} no message in the queue (it lost them: a Redis restarted without its ` +
    `data?). A worker sends them again when it starts; nothing is lost.` : "";
  alert.hidden = !alert.textContent;
  alert.classList.toggle("warn", snap.queue_depth >= 0);
  const t = snap.throughput;
  setText("rate", `${t.done_per_second.toFixed(2)} jobs/s done, ${t.failed_per_second.toFixed(2)}/s failing (last ${t.window_seconds} s)`);
}

function renderTasks(snap) {
  const states = ["queued", "running", "retrying", "done", "failed"];
  const rows = Object.entries(snap.tasks).map(([task, c]) => [task, ...states.map((s) => c[s])]);
  rows.push(["total", ...states.map((s) => snap.totals[s])]);
  fillRows("tasks", rows, "", 6);
}

function renderWorkers(snap) {
  fillRows("workers", snap.workers.map((w) => [w.name, w.pid, `${w.concurrency} ${w.kind}`, w.state,
    `${ago(w.last_seen_seconds_ago)} ago`]), "No worker seen in the last 5 minutes", 5);
}

function renderInFlight(snap) {
  fillRows("inflight", snap.in_flight.map((j) => [j.task, j.record_id, j.attempts, ago(j.age_seconds),
    j.worker || ""]), "Nothing running", 5);
}

function renderChart(series) {
  const svg = document.getElementById("chart");
  const w = 600, h = 120, pad = 14;
  const max = Math.max(1, ...series);
  const step = (w - 2 * pad) / Math.max(1, series.length - 1);
  const pts = series.map((v, i) => [pad + i * step, h - pad - (v / max) * (h - 2 * pad)]);
  const line = pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const area = `${pad},${h - pad} ${line} ${(pad + (series.length - 1) * step).toFixed(1)},${h - pad}`;
  const shape = (tag, attrs) => {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  setText("chart-scale", `top of chart: ${max.toFixed(2)} jobs/s · 5 s buckets over the last 60 s`);
  svg.replaceChildren(
    shape("line", {x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, class: "baseline"}),
    shape("polygon", {points: area, class: "area"}),
    shape("polyline", {points: line, class: "line"}));
}

// Requests go to the page's origin without the user:password@ a page opened with such a
// url carries (fetch refuses a url with credentials; the browser sends them anyway).
function api(path) {
  return new URL(path, window.location.origin);
}

async function post(path, params) {
  const resp = await fetch(api(path), {
    method: "POST", credentials: "same-origin",
    headers: {"X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"},
    body: new URLSearchParams(params),
  });
  const body = await resp.json().catch(() => ({message: resp.statusText}));
  if (!resp.ok) throw new Error(body.message || resp.statusText);
  return body;
}

async function act(kind, id) {
  const out = document.getElementById("action-result");
  try {
    const params = id ? {id} : {all: "1"};
    const body = await post(`/jobs/api/${kind}`, params);
    out.textContent = kind === "retry" ? `Retrying ${body.retried} job(s)` : `Discarded ${body.discarded} job(s)`;
  } catch (err) {
    out.textContent = `${kind} failed: ${err.message}`;
  }
  failedSignature = null;
  refresh();
}

function failedCard(job) {
  const head = el("div", {class: "job-head"},
    el("span", {class: "job-id"}, job.id),
    el("span", {class: "job-meta"}, `${job.task} · user ${job.user} · ${job.attempts} attempt(s) · ${when(job.finished_at)}`),
    el("button", {type: "button", class: "retry", "data-job": job.id, onclick: () => act("retry", job.id)}, "Retry"),
    el("button", {type: "button", class: "discard danger", "data-job": job.id, onclick: () => act("discard", job.id)}, "Discard"));
  return el("article", {class: "job", "data-job": job.id}, head,
    el("div", {class: "job-title"}, job.title || ""),
    el("div", {class: "job-url"}, job.url || ""),
    el("div", {class: "job-error"}, job.error || ""),
    el("details", {}, el("summary", {}, "traceback"), el("pre", {}, job.traceback || "")));
}

function renderFailed(snap) {
  const jobs = snap.failed_jobs;
  const signature = JSON.stringify(jobs.map((j) => [j.id, j.finished_at]));
  if (signature === failedSignature) return;  // keep open tracebacks and buttons stable
  failedSignature = signature;
  const box = document.getElementById("failed");
  box.replaceChildren(...(jobs.length ? jobs.map(failedCard) : [el("p", {class: "hint"}, "No failed jobs.")]));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch(api("/jobs/api/snapshot"), {credentials: "same-origin", cache: "no-store"});
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const snap = await resp.json();
    renderTotals(snap);
    renderTasks(snap);
    renderWorkers(snap);
    renderInFlight(snap);
    renderFailed(snap);
    renderChart(snap.throughput.series);
    status.textContent = `live · ${new Date(snap.generated_at * 1000).toLocaleTimeString()}`;
    status.className = "status ok";
  } catch (err) {
    status.textContent = `not updating: ${err.message}`;
    status.className = "status bad";
  }
}

async function lookup(event) {
  event.preventDefault();
  const id = document.getElementById("lookup-id").value.trim();
  const box = document.getElementById("lookup-result");
  const resp = await fetch(api(`/jobs/api/record?id=${encodeURIComponent(id)}`), {credentials: "same-origin"});
  const body = await resp.json().catch(() => ({message: resp.statusText}));
  if (!resp.ok) {
    box.replaceChildren(el("p", {class: "bad"}, body.message));
    return;
  }
  if (!body.found) {
    box.replaceChildren(el("p", {class: "hint"}, `No jobs for record ${body.record_id}`));
    return;
  }
  const head = el("tr", {}, ...["job", "user", "state", "attempts", "revision", "done revision", "title", "url", "error", "finished"].map((h) => el("th", {}, h)));
  const rows = body.jobs.map((j) => el("tr", {class: `state-${j.state}`},
    ...[j.id, j.user, j.state, j.attempts, j.revision, j.done_revision ?? "-", j.title || "", j.url || "",
        j.error || "", when(j.finished_at)].map((c) => el("td", {}, c))));
  box.replaceChildren(el("table", {class: "lookup"}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

document.getElementById("retry-all").addEventListener("click", () => act("retry", null));
document.getElementById("discard-all").addEventListener("click", () => {
  if (window.confirm("Discard every failed job?")) act("discard", null);
});
document.getElementById("lookup").addEventListener("submit", lookup);
async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);  // the next poll starts after this one ends: no pile-up
}
poll();
