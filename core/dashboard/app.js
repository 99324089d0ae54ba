// bracketgate dashboard: read-only, live over Server-Sent Events (/events), no dependencies.
// Everything shown is set with textContent or SVG attributes: agent-supplied text (agent ids,
// proposal ids, reasons) is never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let lastSeries = [];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, String(v));
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  }
  return node;
}

function money(v) {
  return v == null ? "–" : v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function signed(node, v) {
  node.textContent = money(v);
  node.classList.toggle("pos", v != null && v > 0);
  node.classList.toggle("neg", v != null && v < 0);
}

function duration(s) {
  if (s == null) return "–";
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

function badge(node, text, state) {
  node.textContent = text;
  node.dataset.state = state;
}

function rows(tbody, items, make) {
  tbody.replaceChildren(...items.map(make));
}

function drawChart(svg, series) {
  const W = 800, H = 180, pad = 24;
  svg.replaceChildren();
  if (!series.length) {
    svg.append(textAt(W / 2 - 60, H / 2, "no P&L yet today"));
    svg.dataset.points = "0";
    return;
  }
  const xs = series.map((p) => p[0]), ys = series.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(0, ...ys), y1 = Math.max(0, ...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += 1; y0 -= 1; }
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (W - 2 * pad);
  const Y = (y) => H - pad - ((y - y0) / (y1 - y0)) * (H - 2 * pad);
  const zero = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1: pad, x2: W - pad, y1: Y(0), y2: Y(0), class: "zero" })) zero.setAttribute(k, v);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("class", "line");
  line.setAttribute("points", series.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" "));
  svg.append(zero, line, textAt(4, 12, money(y1)), textAt(4, H - 6, money(y0)),
             textAt(W - 150, 12, "last " + money(ys[ys.length - 1])));
  svg.dataset.points = String(series.length);
  svg.dataset.last = String(ys[ys.length - 1]);
}

function textAt(x, y, s) {
  const t = document.createElementNS(SVG, "text");
  t.setAttribute("x", x); t.setAttribute("y", y);
  t.textContent = s;
  return t;
}

function render(st) {
  $("mode").textContent = st.mode;
  $("prefix").textContent = st.prefix;
  badge($("ready"), st.ready ? "ready" : `not ready: ${st.reason}`, st.ready ? "ok" : "bad");
  const ts = st.trading_state || "?";
  badge($("trading-state"), ts, ts === "ACTIVE" ? "ok" : ts === "HALTED" ? "bad" : "warn");
  badge($("connection"), `IB ${st.connection}`, st.connection === "ready" ? "ok" : "bad");
  badge($("mqtt"), `MQTT ${st.mqtt_connected ? "connected" : "down"}`, st.mqtt_connected ? "ok" : "bad");
  const pnl = st.pnl || {};
  signed($("pnl-daily"), pnl.daily);
  signed($("pnl-unrealized"), pnl.unrealized);
  signed($("pnl-realized"), pnl.realized);
  $("netliq").textContent = money(st.net_liquidation);
  $("rtt").textContent = st.heartbeat_rtt_ms == null ? "–" : `${st.heartbeat_rtt_ms.toFixed(1)} ms`;
  $("uptime").textContent = duration(st.uptime_s);
  $("reconnects").textContent = `${st.ib_reconnects} / ${st.mqtt_reconnects}`;
  $("counts").textContent = `${st.counts.proposals} / ${st.counts.fills}`;
  $("version").textContent = String(st.version);
  if (st.pnl_series) lastSeries = st.pnl_series;   // null on a push: unchanged
  drawChart($("pnl-chart"), lastSeries);

  rows($("positions").tBodies[0], st.positions, (p) => el("tr", { "data-symbol": p.symbol },
    el("td", {}, p.symbol), el("td", {}, p.sec_type), el("td", { class: "qty" }, p.quantity),
    el("td", {}, money(p.avg_cost)), el("td", { class: "price" }, money(p.market_price)),
    el("td", { class: "upnl" }, money(p.unrealized_pnl))));

  const agents = Object.keys(st.brackets);
  const box = $("brackets");
  if (!agents.length) box.replaceChildren(el("p", { class: "muted" }, "none"));
  else box.replaceChildren(...agents.map((agent) => {
    const list = st.brackets[agent];
    return el("div", { class: "agent", "data-agent": agent },
      el("h3", {}, `${agent} · ${list.length} bracket${list.length === 1 ? "" : "s"}`),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Proposal", "Symbol", "Side", "Open", "Leg", "Order", "Status", "Filled", "Price"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...list.flatMap((b) => b.legs.map((leg, i) => el("tr",
          { "data-proposal": b.proposal_id, "data-leg": leg.leg, "data-status": leg.status },
          el("td", {}, i ? "" : b.proposal_id), el("td", {}, i ? "" : b.symbol),
          el("td", {}, i ? "" : b.side), el("td", {}, i ? "" : b.open_quantity),
          el("td", {}, leg.leg), el("td", {}, leg.order_id), el("td", { class: "status" }, leg.status),
          el("td", {}, leg.filled), el("td", {}, money(leg.price))))))));
  }));

  rows($("decisions").tBodies[0], st.decisions, (d) => el("tr",
    { "data-proposal": d.proposal_id, "data-verdict": d.verdict },
    el("td", {}, (d.ts || "").slice(11, 19)), el("td", { class: "agent-id" }, d.agent_id),
    el("td", { class: "proposal-id" }, d.proposal_id),
    el("td", { class: `verdict-${d.verdict}` }, d.verdict),
    el("td", { class: "reasons" }, d.reasons.map((r) => `${r.code}: ${r.message}`).join("; "))));

  rows($("alerts"), st.alerts, (a) => el("li", { "data-level": a.level, "data-code": a.code },
    el("span", { class: "muted" }, (a.ts || "").slice(11, 19) + " "), el("span", { class: "code" }, a.code),
    " ", a.message));
}

function connect() {
  const live = $("live");
  const source = new EventSource("/events");
  source.addEventListener("state", (ev) => {
    render(JSON.parse(ev.data));
    live.textContent = "live";
    live.dataset.live = "yes";
  });
  source.onerror = () => { live.textContent = "reconnecting…"; live.dataset.live = "no"; };
}

fetch("/api/state").then((r) => r.json()).then(render).catch(() => {});
connect();
