// The operators' dashboard: reads GET /api/v1/ops/queues with an ops:read key and redraws
// itself every few seconds (?every=SECONDS, at least 1). The key lives in this tab's session
// storage only. No framework, no build step; text only ever goes
// in through textContent, so nothing a job's error says can run as markup.
"use strict";

const KEY_STORE = "listmill.ops.key";
const REPORT_URL = "/api/v1/ops/queues";
const SVG = "http://www.w3.org/2000/svg";
const every = Math.max(1, Number(new URLSearchParams(location.search).get("every")) || 3);
let timer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function cell(value, cls = "") {
  return el("td", cls ? { class: cls } : {}, value === null || value === undefined ? "–" : value);
}

function fillBody(table, rows, columns, emptyText) {
  const body = document.querySelector(`#${table} tbody`);
  body.replaceChildren();
  if (rows.length === 0) {
    body.append(el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText)));
  }
  for (const row of rows) body.append(row);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function since(iso) {
  return iso ? `${age((Date.now() - Date.parse(iso)) / 1000)} ago` : "–";
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

function ageClass(lane, seconds) {
  const limit = lane === "small" ? 30 : 600;  // the alert thresholds of the README
  if (seconds === null || seconds === undefined) return "num";
  return seconds > limit ? "num bad" : seconds > limit / 3 ? "num warn" : "num";
}

function drawLanes(lanes) {
  fillBody("lanes", lanes.map((l) => el("tr", { "data-lane": l.lane },
    cell(l.lane), cell(l.depth, "num"), cell(l.scheduled, "num"), cell(l.in_progress, "num"),
    cell(age(l.oldest_queued_age_seconds), ageClass(l.lane, l.oldest_queued_age_seconds)),
    cell(l.finished_5m, "num"), cell(l.failed_5m, l.failed_5m ? "num bad" : "num"),
    cell(l.finished_60m, "num"), cell(l.failed_60m, l.failed_60m ? "num bad" : "num"),
    cell(l.rows_per_second_5m, "num"), cell(l.redis_messages ?? "Redis down", "num"))),
  11, "no lanes");
}

function rect(cls, x, y, height) {
  const node = document.createElementNS(SVG, "rect");
  for (const [name, value] of Object.entries({ class: cls, x, y, width: 8, height })) {
    node.setAttribute(name, String(value));
  }
  return node;
}

function drawChart(minutes, generatedAt) {
  const end = Math.floor(Date.parse(generatedAt) / 60000);
  const byMinute = new Map(minutes.map((m) => [Math.floor(Date.parse(m.minute) / 60000), m]));
  const slots = Array.from({ length: 60 }, (_, i) => byMinute.get(end - 59 + i) || null);
  const peak = Math.max(1, ...slots.map((m) => (m ? m.rows : 0)));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 600 120");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const total = slots.reduce((sum, m) => sum + (m ? m.rows : 0), 0);
  svg.setAttribute("aria-label", `${total} rows written in the last hour`);
  slots.forEach((m, i) => {
    if (!m) return;
    const height = Math.max(1, (m.rows / peak) * 100);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${clock(m.minute)}: ${m.rows} rows, ${m.finished} jobs done, ${m.failed} failed`;
    const bar = rect("rows", i * 10 + 1, 104 - height, height);
    bar.append(title);
    svg.append(bar);
    if (m.failed) svg.append(rect("failed", i * 10 + 1, 108, 12));  // a red foot: failures
  });
  const chart = document.getElementById("chart");
  const axis = el("div", { class: "axis" }, el("span", {}, "60 min ago"),
    el("span", {}, `${total} rows in the last hour, peak ${peak} a minute; red: jobs failed`), el("span", {}, "now"));
  chart.replaceChildren(svg, axis);
}

function drawRunning(jobs) {
  document.getElementById("running-count").textContent = `(${jobs.length})`;
  const list = document.getElementById("running");
  list.replaceChildren();
  if (jobs.length === 0) list.append(el("li", { class: "hint" }, "nothing running"));
  for (const job of jobs) {
    const p = job.progress;
    const known = p.percent !== null;
    const fill = el("div");
    fill.style.width = `${known ? p.percent : 100}%`;  // CSSOM, allowed by the page's CSP
    const bar = el("div", { class: known ? "bar" : "bar unknown" }, fill);
    const total = p.total === null ? "?" : p.total;
    const speed = p.rows_per_second ? `, ${Math.round(p.rows_per_second)} rows/s` : "";
    const eta = p.eta_seconds !== null ? `, ETA ${age(p.eta_seconds)}` : "";
    list.append(el("li", { class: "job", "data-job-id": job.id },
      el("div", {}, el("div", {}, `${job.kind} · ${job.lane} · project ${job.project_id}`), el("div", { class: "id" }, job.id)),
      bar,
      el("div", {}, el("span", { class: "percent" }, known ? `${p.percent}%` : "–"), ` ${p.processed} / ${total}${speed}${eta}`)));
  }
}

function drawFailures(failures) {
  fillBody("failures", failures.map((f) => el("tr", { "data-job-id": f.id },
    cell(since(f.finished_at)), cell(f.kind), cell(f.lane), cell(f.project_id), cell(f.id, "id"),
    cell(f.error, "error"))), 6, "no failures");
}

function drawWorkers(workers) {
  document.getElementById("workers-count").textContent = `(${workers.length} live)`;
  fillBody("workers", workers.map((w) => el("tr", { "data-worker-id": w.worker_id },
    cell(w.worker_id), cell(w.host), cell(w.pid, "num"), cell((w.lanes || []).join(", ")),
    cell((w.current_jobs || []).length, "num"), cell(since(w.last_seen)))),
  6, "no live worker: nothing runs");
}

function drawScheduled(runs) {
  fillBody("scheduled", runs.map((r) => el("tr", { "data-run": r.name },
    cell(r.name), cell(since(r.last_run_at)), cell(r.last_outcome, String(r.last_outcome).startsWith("ok") ? "ok" : "bad"),
    cell(clock(r.next_run_at)))), 4, "none yet");
}

function draw(report) {
  drawLanes(report.lanes);
  drawChart(report.throughput, report.generated_at);
  drawRunning(report.running_jobs);
  drawFailures(report.recent_failures);
  drawWorkers(report.workers);
  drawScheduled(report.scheduled_runs);
  document.getElementById("report").hidden = false;
  const status = document.getElementById("status");
  status.className = "";
  status.textContent = `updated ${clock(report.generated_at)} · every ${every} s`;
}

function askForKey(message) {
  clearTimeout(timer);
  document.getElementById("report").hidden = true;
  document.getElementById("key-form").hidden = false;
  document.getElementById("status").textContent = message;
}

async function refresh() {
  clearTimeout(timer);  // one loop, whoever called
  const key = sessionStorage.getItem(KEY_STORE);
  if (!key) return askForKey("an ops:read key is needed");
  const status = document.getElementById("status");
  try {
    const response = await fetch(REPORT_URL, { headers: { Authorization: `Bearer ${key}` } });
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY_STORE);
      const body = await response.json();
      return askForKey(body.error.message);
    }
    if (!response.ok) throw new Error(`the service answered ${response.status}`);
    draw((await response.json()).data);
  } catch (error) {
    status.className = "stale";
    status.textContent = `not updated: ${error.message}`;
  }
  timer = setTimeout(refresh, every * 1000);
}

function start() {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromLink) {
    sessionStorage.setItem(KEY_STORE, fromLink);
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of the address bar
  }
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, document.getElementById("key-input").value.trim());
    document.getElementById("key-form").hidden = true;
    refresh();
  });
  document.getElementById("forget-key").addEventListener("click", (event) => {
    event.preventDefault();
    sessionStorage.removeItem(KEY_STORE);
    askForKey("key forgotten");
  });
  refresh();
}

start();
