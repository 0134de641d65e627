// The Eventflow console: reads the JSON API of the listener that served it, every two
// seconds, and draws what it finds. No library, no network access beyond this origin.
"use strict";

const API = "/v3/clusters/eventflow";
const REFRESH_MS = 2000;
const HISTORY = 60;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

// topic -> {t: ms, end: sum of log end offsets} of the previous sample, and rate history.
const previous = new Map();
const rates = new Map();
let settingsShown = false;
// topic -> {t: ms, produced, fetched} byte counters of the previous sample, and the
// history of fetched bytes/s.
const trafficBefore = new Map();
const fetchRates = new Map();
// "group/topic/partition" -> {t: ms, offset: committed} of the previous sample.
const committedBefore = new Map();

async function get(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.message || response.status);
  }
  return body;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

async function refreshBroker() {
  const b = await get(`${API}/brokers/0`);
  const el = document.getElementById("broker");
  el.replaceChildren();
  for (const [label, value, id] of [
    ["version", b.version, "version"],
    ["shards", b.shards, "shards"],
    ["connections", b.connections, "connections"],
    ["native", b.listeners.native, "native"],
    ["kafka", b.listeners.kafka || "off", "kafka"],
    ["up", `${Math.round(b.uptime_ms / 1000)} s`, "uptime"],
  ]) {
    const span = document.createElement("span");
    span.id = `broker-${id}`;
    span.textContent = `${label} ${value}`;
    el.appendChild(span);
  }
  if (!settingsShown) {
    const s = await get(`${API}/brokers/0/configs`);
    fill("settings", s.data.map((c) => {
      const tr = document.createElement("tr");
      cell(tr, c.name);
      cell(tr, c.value, "data");
      return tr;
    }));
    settingsShown = true;
  }
}

async function refreshTopics() {
  const topics = (await get(`${API}/topics`)).data;
  const now = Date.now();
  const rows = [];
  const select = document.getElementById("browse-topic");
  const chosen = select.value;
  select.replaceChildren(...topics.map((t) => new Option(t.topic_name, t.topic_name)));
  if (chosen) select.value = chosen;
  for (const t of topics) {
    const parts = (await get(`${API}/topics/${encodeURIComponent(t.topic_name)}/partitions`)).data;
    const end = parts.reduce((sum, p) => sum + p.log_end_offset, 0);
    const before = previous.get(t.topic_name);
    let rate = null;
    if (before && now > before.t) {
      rate = Math.max(0, ((end - before.end) * 1000) / (now - before.t));
    }
    previous.set(t.topic_name, { t: now, end, parts: new Map(parts.map((p) => [p.partition_id, p.log_end_offset])) });
    const history = rates.get(t.topic_name) || [];
    if (rate !== null) history.push(rate);
    while (history.length > HISTORY) history.shift();
    rates.set(t.topic_name, history);
    for (const p of parts) {
      const tr = document.createElement("tr");
      tr.dataset.topic = t.topic_name;
      tr.dataset.partition = p.partition_id;
      cell(tr, t.topic_name);
      cell(tr, p.partition_id, "num");
      cell(tr, p.shard, "num");
      cell(tr, p.log_start_offset, "num log-start");
      cell(tr, p.log_end_offset, "num log-end");
      cell(tr, bytes(p.size_bytes), "num");
      const partRate = before && before.parts && before.parts.has(p.partition_id) && now > before.t
        ? ((p.log_end_offset - before.parts.get(p.partition_id)) * 1000) / (now - before.t)
        : null;
      cell(tr, partRate === null ? null : partRate.toFixed(1), "num");
      rows.push(tr);
    }
  }
  for (const name of [...rates.keys()]) {
    if (!topics.some((t) => t.topic_name === name)) { rates.delete(name); previous.delete(name); }
  }
  fill("topics", rows);
  drawRates();
}

async function refreshTraffic() {
  const topics = (await get(`${API}/traffic`)).data;
  const now = Date.now();
  const rows = [];
  for (const t of topics) {
    const before = trafficBefore.get(t.topic_name);
    const per = (now2, then) => (before && now > before.t ? Math.max(0, ((now2 - then) * 1000) / (now - before.t)) : null);
    const produced = per(t.produced_bytes_total, before && before.produced);
    const fetched = per(t.fetched_bytes_total, before && before.fetched);
    trafficBefore.set(t.topic_name, { t: now, produced: t.produced_bytes_total, fetched: t.fetched_bytes_total });
    const history = fetchRates.get(t.topic_name) || [];
    if (fetched !== null) history.push(fetched);
    while (history.length > HISTORY) history.shift();
    fetchRates.set(t.topic_name, history);
    const tr = document.createElement("tr");
    tr.dataset.traffic = t.topic_name;
    cell(tr, t.topic_name);
    cell(tr, produced === null ? null : `${bytes(Math.round(produced))}`, "num produced-rate");
    cell(tr, fetched === null ? null : `${bytes(Math.round(fetched))}`, "num fetched-rate");
    cell(tr, bytes(t.produced_bytes_total), "num produced-total");
    cell(tr, bytes(t.fetched_bytes_total), "num fetched-total");
    rows.push(tr);
  }
  for (const name of [...fetchRates.keys()]) {
    if (!topics.some((t) => t.topic_name === name)) { fetchRates.delete(name); trafficBefore.delete(name); }
  }
  fill("traffic", rows);
  drawChart("fetch-rates", "fetch-legend", fetchRates, (r) => `${bytes(Math.round(r))}/s`);
}

// A tick label that fits the chart's margin: 0.5, 12, 3.4k, 1.2M.
function compact(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${Math.round(n / 1e3)}k`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return n < 10 ? n.toFixed(1) : String(Math.round(n));
}

function drawRates() {
  drawChart("rates", "legend", rates, (r) => `${r.toFixed(1)}/s`);
}

function drawChart(canvasId, legendId, series, label) {
  const canvas = document.getElementById(canvasId);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  let max = 1;
  for (const history of series.values()) for (const r of history) max = Math.max(max, r);
  ctx.strokeStyle = "#d0d4da";
  ctx.fillStyle = "#667";
  ctx.font = "12px sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + ((h - pad) * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - 4, y); ctx.stroke();
    const tick = max * (1 - i / 4);
    ctx.fillText(compact(tick), 2, y + 4);
  }
  const legend = document.getElementById(legendId);
  legend.replaceChildren();
  let i = 0;
  for (const [topic, history] of series) {
    const color = COLORS[i++ % COLORS.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((r, j) => {
      const x = pad + ((w - pad - 4) * (HISTORY - history.length + j)) / (HISTORY - 1);
      const y = pad / 2 + (h - pad) * (1 - r / max);
      if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    item.append(swatch, `${topic} ${history.length ? label(history[history.length - 1]) : "–"}`);
    legend.appendChild(item);
  }
}

async function refreshGroups() {
  const groups = (await get(`${API}/consumer-groups`)).data;
  const rows = [];
  for (const g of groups) {
    const id = encodeURIComponent(g.consumer_group_id);
    const [described, lags] = await Promise.all([get(`${API}/consumer-groups/${id}`), get(`${API}/consumer-groups/${id}/lags`)]);
    for (const l of lags.data) {
      const tr = document.createElement("tr");
      tr.dataset.group = g.consumer_group_id;
      cell(tr, g.consumer_group_id);
      cell(tr, described.state);
      cell(tr, l.topic_name);
      cell(tr, l.partition_id, "num");
      cell(tr, l.current_offset, "num");
      cell(tr, l.log_end_offset, "num");
      cell(tr, l.lag, l.lag > 0 ? "num lag lag-high" : "num lag");
      cell(tr, l.client_id || l.consumer_id);
      const key = `${g.consumer_group_id}/${l.topic_name}/${l.partition_id}`;
      const now = Date.now();
      const before = committedBefore.get(key);
      const consumed = before && l.current_offset !== null && now > before.t
        ? (Math.max(0, l.current_offset - before.offset) * 1000) / (now - before.t)
        : null;
      if (l.current_offset !== null) committedBefore.set(key, { t: now, offset: l.current_offset });
      cell(tr, consumed === null ? null : consumed.toFixed(1), "num");
      rows.push(tr);
    }
  }
  fill("groups", rows);
}

async function refreshShares() {
  const groups = (await get(`${API}/share-groups`)).data;
  const rows = [];
  for (const g of groups) {
    const s = await get(`${API}/share-groups/${encodeURIComponent(g.share_group_id)}`);
    for (const p of s.partitions) {
      const tr = document.createElement("tr");
      tr.dataset.group = g.share_group_id;
      cell(tr, g.share_group_id);
      cell(tr, p.topic_name);
      cell(tr, p.partition_id, "num");
      cell(tr, p.next_offset, "num");
      cell(tr, p.log_end_offset, "num");
      cell(tr, p.backlog, "num backlog");
      cell(tr, p.acquired, "num");
      cell(tr, p.dead_lettered, "num dead");
      rows.push(tr);
    }
  }
  fill("shares", rows);
}

function show(data) {
  if (!data) return "null";
  return data.type === "JSON" ? JSON.stringify(data.data) : `${data.data}${data.type === "BINARY" ? " (base64)" : ""}`;
}

async function browse(event) {
  if (event) event.preventDefault();
  const topic = document.getElementById("browse-topic").value;
  if (!topic) return;
  const partition = document.getElementById("browse-partition").value || 0;
  const offset = document.getElementById("browse-offset").value || 0;
  const status = document.getElementById("status");
  try {
    const r = await get(`${API}/topics/${encodeURIComponent(topic)}/partitions/${partition}/records?offset=${offset}&max_count=50`);
    fill("records", r.data.map((rec) => {
      const tr = document.createElement("tr");
      cell(tr, rec.offset, "num");
      cell(tr, new Date(rec.timestamp).toISOString());
      cell(tr, show(rec.key), "data");
      cell(tr, show(rec.value), "data");
      return tr;
    }));
    status.textContent = "";
  } catch (e) {
    status.textContent = `read: ${e.message}`;
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    await refreshBroker();
    await refreshTopics();
    await refreshTraffic();
    await refreshGroups();
    await refreshShares();
    status.textContent = "";
    if (!document.body.dataset.loaded) {
      document.body.dataset.loaded = "true";
      await browse();
    }
  } catch (e) {
    status.textContent = `not reachable: ${e.message}`;
  }
}

document.getElementById("browse").addEventListener("submit", browse);
refresh();
setInterval(refresh, REFRESH_MS);
