// fedmq dashboard: polls /api/state and redraws. Every value from the state is untrusted text
// (worker ids, reasons come from events anyone on the vhost may publish): it is only ever set
// with textContent or as a number in an SVG attribute, never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";

function byId(id) { return document.getElementById(id); }

function isNumber(x) { return typeof x === "number" && isFinite(x); }

function percent(x) { return isNumber(x) ? (100 * x).toFixed(2) + "%" : "–"; }

function fixed(x, digits) { return isNumber(x) ? x.toFixed(digits) : "–"; }

function clock(t) {
  return isNumber(t) ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "–";
}

function text(x) { return x === null || x === undefined ? "" : String(x); }

function setText(id, value) { byId(id).textContent = value; }

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = text(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillTable(id, items, makeRow) {
  const body = byId(id).querySelector("tbody");
  const rows = items.map(item => {
    const tr = document.createElement("tr");
    makeRow(tr, item);
    return tr;
  });
  body.replaceChildren(...rows);
}

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

// A line chart of `series` ([{values: [[x, y], ...], className}]) in `svg` (420 x 200).
function drawChart(svg, series, yLabel, fixedRange) {
  const W = 420, H = 200, left = 44, right = 10, top = 10, bottom = 24;
  const points = series.flatMap(s => s.values);
  const children = [];
  if (points.length === 0) {
    const t = svgElement("text", {x: W / 2, y: H / 2, "text-anchor": "middle"});
    t.textContent = "no data yet";
    svg.replaceChildren(t);
    return;
  }
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  let y0 = fixedRange ? fixedRange[0] : Math.min(...ys), y1 = fixedRange ? fixedRange[1] : Math.max(...ys);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  if (!fixedRange) { const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad; }
  const sx = x => left + (x - x0) / (x1 - x0) * (W - left - right);
  const sy = y => top + (1 - (y - y0) / (y1 - y0)) * (H - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    children.push(svgElement("line", {x1: left, x2: W - right, y1: sy(y), y2: sy(y), class: "grid"}));
    const label = svgElement("text", {x: left - 4, y: sy(y) + 3, "text-anchor": "end"});
    label.textContent = Math.abs(y1 - y0) >= 10 ? y.toFixed(0) : y.toFixed(2);
    children.push(label);
  }
  children.push(svgElement("line", {x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis"}));
  children.push(svgElement("line", {x1: left, x2: left, y1: top, y2: H - bottom, class: "axis"}));
  for (const x of [x0, x1]) {
    const label = svgElement("text", {x: sx(x), y: H - 8, "text-anchor": "middle"});
    label.textContent = Number.isInteger(x) ? String(x) : "";
    children.push(label);
  }
  const caption = svgElement("text", {x: (left + W - right) / 2, y: H - 8, "text-anchor": "middle"});
  caption.textContent = yLabel;
  children.push(caption);
  for (const s of series) {
    if (s.values.length === 0) continue;
    const path = s.values.map(p => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    children.push(svgElement("polyline", {points: path, class: s.className}));
    for (const p of s.values) {
      children.push(svgElement("circle", {cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.5, class: s.className}));
    }
  }
  svg.replaceChildren(...children);
}

function series(points, key, scale) {
  return points.filter(p => isNumber(p.step) && isNumber(p[key])).map(p => [p.step, p[key] * scale]);
}

function render(state) {
  const unit = state.unit === "version" ? "Version" : "Round";
  setText("unit-label", unit);
  setText("run", text(state.run));
  const current = isNumber(state.current) ? String(state.current) : "–";
  setText("round", isNumber(state.total) ? current + " / " + state.total : current);
  setText("status", text(state.status));
  setText("accuracy", percent(state.accuracy));
  const losses = state.points.filter(p => isNumber(p.loss));
  setText("loss", losses.length ? fixed(losses[losses.length - 1].loss, 4) : "–");
  setText("dead-letters", isNumber(state.dead_letters) ? String(state.dead_letters) : "–");
  setText("events", String(state.events) + (state.ignored ? " (" + state.ignored + " ignored)" : ""));
  setText("connection", text(state.amqp_status));

  drawChart(byId("accuracy-chart"), [{values: series(state.points, "accuracy", 100), className: "line-accuracy"}],
            unit.toLowerCase(), [0, 100]);
  drawChart(byId("loss-chart"), [
    {values: series(state.points, "loss", 1), className: "line-train"},
    {values: series(state.points, "test_loss", 1), className: "line-test"}], unit.toLowerCase(), null);

  fillTable("workers", state.workers, (tr, w) => {
    tr.dataset.worker = text(w.id);
    cell(tr, w.id, "text");
    cell(tr, w.last_fit || "–", w.last_fit || "");
    cell(tr, isNumber(w.step) ? w.step : "–");
    cell(tr, clock(w.time));
    cell(tr, isNumber(w.samples) ? w.samples : "–");
    cell(tr, fixed(w.loss, 4));
    cell(tr, percent(w.accuracy));
    cell(tr, fixed(w.fit_seconds, 2));
    cell(tr, w.fits_ok + " / " + w.fits_failed);
    cell(tr, isNumber(w.consumers) ? w.consumers : "–", w.consumers === 0 ? "failed" : "");
    cell(tr, isNumber(w.queue_depth) ? w.queue_depth : "–");
    cell(tr, w.reason, "reason");
  });
  fillTable("queues", state.queues, (tr, q) => {
    tr.dataset.queue = text(q.name);
    cell(tr, q.name, "text");
    cell(tr, q.messages_ready);
    cell(tr, q.messages_unacknowledged);
    cell(tr, q.consumers);
    cell(tr, fixed(q.publish_rate, 1));
    cell(tr, fixed(q.deliver_rate, 1));
  });
  const note = state.queue_error ? "(stale: " + state.queue_error + ")"
    : (isNumber(state.queues_time) ? "(sampled " + clock(state.queues_time) + ")" : "");
  setText("queues-note", note);
  byId("queues-note").className = state.queue_error ? "stale" : "muted";
  fillTable("recent", state.recent, (tr, e) => {
    cell(tr, clock(e.time));
    cell(tr, e.kind, "text");
    cell(tr, e.step);
    cell(tr, e.worker, "text");
    cell(tr, fixed(e.loss, 4));
    cell(tr, isNumber(e.accuracy) ? percent(e.accuracy) : "");
    cell(tr, e.reason, "reason");
  });
  setText("updated", "updated " + clock(Date.now() / 1000));
}

async function poll() {
  try {
    const response = await fetch("/api/state", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    setText("connection", "dashboard server not answering (" + error.message + ")");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
