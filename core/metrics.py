"""What the daemon shows of itself: Prometheus metrics, readiness, status fields, dashboard state.

The Observer counts where events already pass (the MQTT bridge's intake and decision hooks, the
journal writer's commit; a few cheap bus handlers for fills, order events, connection and state
changes: a counter, a histogram, a deque append) and reads everything else from the rooms when
asked (a scrape, a /healthz, a dashboard push): the broker's state, reconnects and heartbeat,
the pacer's last second, the bridge's counters, the execution agent's open brackets, the
portfolio monitor's latest snapshot. core/http.py serves it.

State (one line each):
  _started:    proposal_id -> loop time the bridge took it in          (decision latency; bounded)
  _approved:   proposal_id -> loop time its ApprovedBracket went out  (placement latency; bounded)
  decisions:   the latest decisions, newest last (dashboard)
  alerts:      the latest alerts, newest last (disconnects, halts, rejects by code in bursts)
  pnl_series:  (epoch ms, daily, unrealized, realized), today's, sampled once a second at most
               (every 5 s when flat; when full the older half is thinned)
  _seen_agents: agent ids seen with an open bracket (with the agents file's: the label set)
  _fill_price: (proposal_id, leg) -> the last fill's price (a filled leg is no working order)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bracketgate.bus.messages import (
    Alert,
    ApprovedBracket,
    BrokerConnection,
    ConnectionState,
    Fill,
    Leg,
    OrderEvent,
    RiskDecision,
    TradeProposal,
    TradingState,
    TradingStateChanged,
    Verdict,
)
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.metrics")
disable_created_metrics()     # no *_created series: they double the scrape for nothing here

PENDING_MAX = 20_000          # latency start times kept (a decision never seen drops out)
FILL_PRICES_MAX = 4_096       # last fill prices kept: the dashboard reads open brackets' only
DECISIONS_KEPT = 100
ALERTS_KEPT = 100
PNL_POINTS_MAX = 20_000       # kept: 5.5 h at a point a second, then the older half is thinned
PNL_POINTS_SENT = 2_000       # the day's series as the page gets it: evenly thinned to this
PNL_FLAT_EVERY_MS = 5_000     # a flat P&L still gets a point this often: the line reaches now
SEEN_AGENTS_MAX = 1_000
BURST_WINDOW_S, BURST_COUNT = 10.0, 5   # this many rejections with one code within the window
TEXT_MAX = 300                # reason texts on the dashboard are cut here
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
JOURNAL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 5.0)
_IB_NOT_READY = {   # the connection state -> the denial code the gate answers with
    ConnectionState.DISCONNECTED: "BROKER_DISCONNECTED",
    ConnectionState.CONNECTING: "BROKER_DISCONNECTED",
    ConnectionState.CONNECTIVITY_LOST: "BROKER_CONNECTIVITY_LOST",
    ConnectionState.CONNECTED: "NOT_RECONCILED",
}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _chart_points(series: Any, n: int) -> list[Any]:
    """The whole series if it has at most `n` points, else `n` of them evenly spread from the
    first to the last (both kept): the chart spans the day, not its last minutes."""
    points = list(series)
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def _cut(text: Any) -> str:
    s = str(text)
    return s if len(s) <= TEXT_MAX else s[:TEXT_MAX - 1] + "…"


class Observer:
    """Everything core/http.py answers with. The rooms are handed over as the daemon builds
    them (`watch`); until then readiness says STARTING and their metrics read zero."""

    def __init__(self, *, mode: str, prefix: str, clock: Clock = SYSTEM_CLOCK,
                 known_agents: Callable[[], list[str]] | None = None) -> None:
        self.mode, self.prefix, self.clock = mode, prefix, clock
        self.started_mono = time.monotonic()
        self.started_at = clock.now()
        self.http_url: str | None = None
        self._known_agents = known_agents or (lambda: [])
        self.broker: Any = None
        self.governor: Any = None
        self.execution: Any = None
        self.bridge: Any = None
        self.journal: Any = None
        self.monitor: Any = None
        self.stopping: Callable[[], bool] = lambda: False
        self.running = False                  # start-up finished (the daemon logged `ready`)
        self.journal_lag_s: float | None = None

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions_total = Counter("bracketgate_decisions", "Decisions published, by verdict "
                                       "and first reason code ('none' for approvals)",
                                       ["verdict", "code"], registry=r)
        self.fills_total = Counter("bracketgate_fills", "Executions reported to agents", registry=r)
        self.alerts_total = Counter("bracketgate_alerts", "Alerts raised, by code", ["code"],
                                    registry=r)
        self.decision_latency = Histogram(
            "bracketgate_decision_latency_seconds", "From a proposal on the bus to its decision "
            "published (approvals: after the placement)", buckets=LATENCY_BUCKETS, registry=r)
        self.placement_latency = Histogram(
            "bracketgate_placement_latency_seconds", "From an approved bracket sent to execution "
            "to IB's acknowledgement of its legs", buckets=LATENCY_BUCKETS, registry=r)
        self.journal_write = Histogram(
            "bracketgate_journal_write_seconds", "A journal commit: its oldest write's wait from "
            "record() until committed", buckets=JOURNAL_BUCKETS, registry=r)
        r.register(_Live(self))

        self._started: OrderedDict[str, float] = OrderedDict()
        self._approved: OrderedDict[str, float] = OrderedDict()
        self.decisions: deque[RiskDecision] = deque(maxlen=DECISIONS_KEPT)   # see _decision_view
        self._decision_counters: dict[tuple[str, str], Any] = {}   # (verdict, code) -> child
        self.alerts: deque[dict[str, Any]] = deque(maxlen=ALERTS_KEPT)
        self.pnl_series: deque[tuple[int, float, float | None, float | None]] = \
            deque(maxlen=PNL_POINTS_MAX)
        self._seen_agents: OrderedDict[str, None] = OrderedDict()
        self._fill_price: OrderedDict[Any, float] = OrderedDict()
        self._rejects: dict[str, deque[float]] = {}
        self._burst_alerted: dict[str, float] = {}
        self._mqtt_was: bool | None = None
        self.verdicts = {v.value: 0 for v in Verdict}   # decisions by verdict (dashboard)
        self.fills = 0
        self.version = 0                       # moves on every change the dashboard shows
        self._tick = asyncio.Event()
        self.listeners = 0

    # ------------------------------------------------------------------ wiring

    def attach(self, bus: Any) -> None:
        """Cheap handlers on the bus. Proposals and decisions are seen in the MQTT bridge's own
        hooks instead (`timing`, `counting`): no extra bus hop on the intake path."""
        bus.subscribe(ApprovedBracket, self._on_approved, name="metrics")
        bus.subscribe(Fill, self._on_fill, name="metrics")
        bus.subscribe(OrderEvent, self._on_order_event, name="metrics")
        bus.subscribe(BrokerConnection, self._on_connection, name="metrics")
        bus.subscribe(TradingStateChanged, self._on_trading_state, name="metrics")
        bus.subscribe(Alert, self._on_alert, name="metrics")

    def watch(self, **rooms: Any) -> None:
        """broker=, governor=, execution=, bridge=, journal=, monitor= as they are built."""
        for name, room in rooms.items():
            setattr(self, name, room)
        if "journal" in rooms and rooms["journal"] is not None:
            rooms["journal"].observe_commits(self._on_journal_commit)

    async def run(self, stop: asyncio.Event) -> None:
        """Once a second: sample the P&L, notice MQTT coming and going, move the dashboard."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            self.sample()

    def sample(self) -> None:
        snap = getattr(self.monitor, "latest", None)
        if snap is not None and snap.pnl.daily is not None and math.isfinite(snap.pnl.daily):
            # stamped with the sampling time, not the snapshot's: a change that came within a
            # second of the last point lands at the next sample instead of waiting for the
            # monitor's next snapshot (the chart's last point is never older than the P&L shown)
            self._add_pnl_point(self.clock.now(), snap.pnl.daily, _num(snap.pnl.unrealized),
                                _num(snap.pnl.realized))
        if self.bridge is not None:
            up = bool(self.bridge.connected)
            if self._mqtt_was is not None and up != self._mqtt_was:
                self._alert("MQTT_CONNECTED" if up else "MQTT_DISCONNECTED",
                            "MQTT broker connection " + ("back" if up else "lost"),
                            "info" if up else "warning")
            self._mqtt_was = up
        self._touch()

    def _add_pnl_point(self, ts: datetime, daily: float, unrealized: float | None,
                       realized: float | None) -> None:
        ms = int(ts.timestamp() * 1000)
        series = self.pnl_series
        if series:
            last = series[-1]
            if datetime.fromtimestamp(last[0] / 1000, ts.tzinfo).date() != ts.date():
                series.clear()                                   # a new day: intraday only
            elif ms - last[0] < 1000:
                return
            elif last[1:] == (daily, unrealized, realized) and ms - last[0] < PNL_FLAT_EVERY_MS:
                return                                           # flat: a point every 5 s
        if len(series) >= PNL_POINTS_MAX:       # full: the older half thinned to every other
            half = len(series) // 2              # point, so the chart still starts at the open
            kept = list(series)
            series.clear()
            series.extend(kept[0:half:2] + kept[half:])
        series.append((ms, daily, unrealized, realized))

    def _touch(self) -> None:
        self.version += 1
        if self.listeners:
            tick, self._tick = self._tick, asyncio.Event()
            tick.set()

    async def changed(self, since: int, timeout: float) -> bool:
        """Wait until `version` moves past `since` (False on timeout)."""
        tick = self._tick
        if self.version != since:
            return True
        try:
            await asyncio.wait_for(tick.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ bus handlers

    def timing(self, on_proposals: Callable[[list[TradeProposal]], Awaitable[None]]
               ) -> Callable[[list[TradeProposal]], Awaitable[None]]:
        """The bridge's on_proposals hook, noting when each proposal came in (the decision
        latency's start: intake, journal write and gate included) before running it."""

        async def timed(proposals: list[TradeProposal]) -> None:
            now = asyncio.get_running_loop().time()
            for p in proposals:
                _remember(self._started, p.proposal_id, now)
            await on_proposals(proposals)

        return timed

    def counting(self, on_decisions: Callable[[list[RiskDecision]], Awaitable[Any]]
                 ) -> Callable[[list[RiskDecision]], Awaitable[Any]]:
        """The bridge's on_decisions hook (every decision passes it once, before it goes out),
        counting and timing the decisions before running it."""

        async def counted(decisions: list[RiskDecision]) -> Any:
            self.note_decisions(decisions)
            return await on_decisions(decisions)

        return counted

    async def _on_approved(self, b: ApprovedBracket) -> None:
        _remember(self._approved, b.proposal.proposal_id, asyncio.get_running_loop().time())

    def note_decisions(self, decisions: list[RiskDecision]) -> None:
        now = asyncio.get_running_loop().time()
        counters = self._decision_counters
        for d in decisions:
            verdict = d.verdict.value
            code = d.reasons[0].code.value if d.reasons else "none"
            child = counters.get((verdict, code))
            if child is None:
                child = counters[(verdict, code)] = self.decisions_total.labels(verdict, code)
            child.inc()
            self.verdicts[verdict] += 1
            started = self._started.pop(d.proposal_id, None)
            if started is not None:
                self.decision_latency.observe(now - started)
            approved = self._approved.pop(d.proposal_id, None)
            if approved is not None:
                self.placement_latency.observe(now - approved)
            if verdict == "rejected" and d.reasons:
                self._count_reject(code, now)
        self.decisions.extend(decisions)
        self._touch()

    def _count_reject(self, code: str, now: float) -> None:
        window = self._rejects.setdefault(code, deque(maxlen=BURST_COUNT))
        window.append(now)
        if len(window) == BURST_COUNT and now - window[0] <= BURST_WINDOW_S \
                and now - self._burst_alerted.get(code, -math.inf) > BURST_WINDOW_S:
            self._burst_alerted[code] = now
            self._alert("REJECT_BURST", f"{BURST_COUNT} rejections {code} within "
                        f"{BURST_WINDOW_S:.0f} s", "warning")

    async def _on_fill(self, f: Fill) -> None:
        self.fills_total.inc()
        self.fills += 1
        _remember(self._fill_price, (f.proposal_id, f.leg.value), f.price, FILL_PRICES_MAX)
        self._touch()

    async def _on_order_event(self, e: OrderEvent) -> None:
        if e.code is not None and e.status in ("Cancelled", "Inactive", "Rejected") \
                and e.code not in (202,):   # 202: the cancel we asked for
            self._alert("ORDER_REJECTED", f"IB {e.code}: {e.message or e.status}", "warning",
                        agent_id=e.agent_id, proposal_id=e.proposal_id)
        self._touch()

    async def _on_connection(self, c: BrokerConnection) -> None:
        if c.state is ConnectionState.READY:
            self._alert("IB_READY", "IB connected and reconciled", "info")
        elif c.state in (ConnectionState.DISCONNECTED, ConnectionState.CONNECTIVITY_LOST):
            self._alert("IB_" + c.state.value.upper(),
                        f"IB {c.state.value}" + (f" ({c.code})" if c.code else "")
                        + (f": {c.message}" if c.message else ""), "warning")
        self._touch()

    async def _on_trading_state(self, t: TradingStateChanged) -> None:
        level = "error" if t.new is TradingState.HALTED else "info"
        self._alert("TRADING_" + t.new.value, f"{t.old.value} -> {t.new.value} by {t.by}: "
                    f"{t.reason}", level)

    async def _on_alert(self, a: Alert) -> None:
        self._alert(a.code, a.message, "error", agent_id=a.agent_id, proposal_id=a.proposal_id)

    def _alert(self, code: str, message: str, level: str, **ids: Any) -> None:
        self.alerts_total.labels(code).inc()
        self.alerts.append({"ts": self.clock.now().isoformat(), "code": _cut(code),
                            "level": level, "message": _cut(message),
                            **{k: _cut(v) for k, v in ids.items() if v is not None}})
        self._touch()

    def _on_journal_commit(self, seconds: float) -> None:   # in the journal's writer thread
        self.journal_write.observe(seconds)
        self.journal_lag_s = seconds

    # ------------------------------------------------------------------ readings

    def readiness(self) -> tuple[bool, str, str]:
        """(ready, reason, detail): ready = started, not stopping, IB connected and reconciled,
        the snapshot fresh and complete (the gate's own broker checks), MQTT connected."""
        from bracketgate.agents.rules import gate_broker_state

        if self.stopping():
            return False, "STOPPING", "the daemon is stopping"
        if not self.running or self.broker is None or self.governor is None:
            return False, "STARTING", "the daemon is starting"
        state = self.broker.state
        if state is not ConnectionState.READY:
            return False, _IB_NOT_READY.get(state, "NOT_RECONCILED"), f"IB {state.value}"
        snap = getattr(self.monitor, "latest", None) or self.governor.snapshot
        reason = gate_broker_state(snap, self.clock.now(), self.governor.limits)
        if reason is not None:
            return False, reason.code.value, _cut(reason.message)
        if self.bridge is not None and not self.bridge.connected:
            return False, "MQTT_DISCONNECTED", "the MQTT broker connection is down"
        return True, "", ""

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_mono

    def ib_reconnects(self) -> int:
        return int(getattr(self.broker, "reconnects", 0) or 0)

    def mqtt_reconnects(self) -> int:
        connects = (getattr(self.bridge, "counters", None) or {}).get("connects", 0)
        return max(0, int(connects) - 1)

    def status_fields(self) -> dict[str, Any]:
        """What the retained {prefix}/status carries besides its state (bus/messages.py Status)."""
        rtt = getattr(self.broker, "heartbeat_rtt_s", None)
        lag = self.journal_lag_s
        return {"started_at": self.started_at, "uptime_s": round(self.uptime_s(), 1),
                "heartbeat_rtt_ms": None if rtt is None else round(rtt * 1000, 3),
                "ib_reconnects": self.ib_reconnects(), "mqtt_reconnects": self.mqtt_reconnects(),
                "journal_lag_ms": None if lag is None else round(lag * 1000, 3),
                "http": self.http_url}

    def open_brackets_by_agent(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        if self.execution is not None:
            for book in self.execution.open_brackets():
                out.setdefault(book.agent_id, []).append(book)
                _remember(self._seen_agents, book.agent_id, None, SEEN_AGENTS_MAX)
        return out

    def agent_labels(self, open_by_agent: dict[str, list[Any]]) -> list[str]:
        names = dict.fromkeys(self._known_agents())
        names.update(self._seen_agents)
        names.update(dict.fromkeys(open_by_agent))
        return list(names)

    def state(self) -> dict[str, Any]:
        """The dashboard's picture (GET /api/state, and each push on /events)."""
        ready, reason, detail = self.readiness()
        snap = getattr(self.monitor, "latest", None)
        broker = self.broker
        working = {o.order_id: o for o in snap.working_orders} if snap is not None else {}
        brackets: dict[str, list[dict[str, Any]]] = {}
        for agent, books in sorted(self.open_brackets_by_agent().items()):
            brackets[_cut(agent)] = [_bracket_view(b, working, self._fill_price) for b in books]
        gov = self.governor
        rtt = getattr(broker, "heartbeat_rtt_s", None)
        return {
            "version": self.version, "ts": self.clock.now().isoformat(), "mode": self.mode,
            "prefix": self.prefix, "uptime_s": round(self.uptime_s(), 1),
            "ready": ready, "reason": reason, "detail": detail,
            "trading_state": gov.state.value if gov is not None else None,
            "connection": broker.state.value if broker is not None else "disconnected",
            "mqtt_connected": bool(self.bridge.connected) if self.bridge is not None else False,
            "heartbeat_rtt_ms": None if rtt is None else round(rtt * 1000, 3),
            "ib_reconnects": self.ib_reconnects(), "mqtt_reconnects": self.mqtt_reconnects(),
            "account": snap.account if snap is not None else None,
            "pnl": ({"daily": _num(snap.pnl.daily), "unrealized": _num(snap.pnl.unrealized),
                     "realized": _num(snap.pnl.realized)} if snap is not None else None),
            "net_liquidation": _num(snap.net_liquidation) if snap is not None else None,
            "positions": [{"symbol": p.symbol, "sec_type": p.sec_type, "quantity": p.quantity,
                           "avg_cost": _num(p.avg_cost), "market_price": _num(p.market_price),
                           "unrealized_pnl": _num(p.unrealized_pnl)}
                          for p in (snap.positions if snap is not None else []) if p.quantity],
            "pnl_series": _chart_points(self.pnl_series, PNL_POINTS_SENT),
            "brackets": brackets,
            "decisions": [_decision_view(d) for d in list(self.decisions)[-30:][::-1]],
            "alerts": list(self.alerts)[-30:][::-1],
            "counts": {"proposals": self.proposals(), "fills": self.fills,
                       "decisions": dict(self.verdicts)},
        }

    def proposals(self) -> int:
        return int((getattr(self.bridge, "counters", None) or {}).get("proposals", 0))


def _decision_view(d: RiskDecision) -> dict[str, Any]:
    return {"ts": d.ts.isoformat(), "agent_id": _cut(d.agent_id),
            "proposal_id": _cut(d.proposal_id), "verdict": d.verdict.value,
            "reasons": [{"code": r.code.value, "message": _cut(r.message)} for r in d.reasons[:4]],
            "order_ids": d.order_ids.model_dump() if d.order_ids is not None else None}


def _bracket_view(b: Any, working: dict[int, Any], fill_price: dict[Any, float]
                  ) -> dict[str, Any]:
    legs = []
    for leg, oid in ((Leg.ENTRY, b.ids.entry), (Leg.TAKE_PROFIT, b.ids.take_profit),
                     (Leg.STOP_LOSS, b.ids.stop_loss)):
        w = working.get(oid)
        price = None
        if w is not None:
            price = w.stop_price if leg is Leg.STOP_LOSS else w.limit_price
        if price is None:
            price = fill_price.get((b.proposal_id, leg.value))
        if price is None and leg is Leg.STOP_LOSS:
            price = b.stop_price
        legs.append({"leg": leg.value, "order_id": oid, "status": b.status.get(leg, "?"),
                     "filled": b.filled.get(leg, 0.0), "price": _num(price)})
    return {"proposal_id": _cut(b.proposal_id), "symbol": b.symbol, "side": b.side.value,
            "open_quantity": b.open_quantity, "legs": legs,
            "guards": [{"order_id": oid, "status": st} for oid, st in b.guards.items()]}


def _remember(d: OrderedDict[str, Any], key: str, value: Any, cap: int = PENDING_MAX) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > cap:
        d.popitem(last=False)


class _Live:
    """The metrics read at scrape time from the rooms (no work on the hot path)."""

    def __init__(self, obs: Observer) -> None:
        self.obs = obs

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        o = self.obs
        broker, gov = o.broker, o.governor

        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=math.nan if value is None else value)

        yield CounterMetricFamily("bracketgate_proposals", "Proposal payloads taken in from MQTT",
                                  value=o.proposals())
        connected = broker is not None and broker.state in (
            ConnectionState.READY, ConnectionState.CONNECTED)
        yield gauge("bracketgate_ib_connected", "1 while the IB connection is up", float(connected))
        yield gauge("bracketgate_ready", "1 while /healthz answers ready", float(o.readiness()[0]))
        yield CounterMetricFamily("bracketgate_ib_reconnects", "IB reconnects that succeeded",
                                  value=o.ib_reconnects())
        yield CounterMetricFamily("bracketgate_mqtt_reconnects", "MQTT reconnects that succeeded",
                                  value=o.mqtt_reconnects())
        pacer = getattr(broker, "pacer", None)
        yield gauge("bracketgate_ib_pacing_budget_used_ratio", "Messages sent to IB in the last "
                    "second / the pacer's rate", None if pacer is None
                    else pacer.sent_last_second() / pacer.rate)
        lines = getattr(broker, "lines", None)   # the line budget (adapters/md_lines.py)
        yield gauge("bracketgate_market_data_lines", "Market-data lines (streamed quotes) held",
                    None if lines is None else float(len(lines)))
        yield gauge("bracketgate_market_data_lines_limit", "Market-data lines the daemon may "
                    "hold (IB_MAX_MARKET_DATA_LINES, or fewer after IB's error 101)",
                    None if lines is None else float(lines.ceiling))
        yield CounterMetricFamily("bracketgate_market_data_line_evictions", "Quote lines given "
                                  "up (least recently used) for another contract's",
                                  value=0 if lines is None else lines.evictions)
        fam = CounterMetricFamily("bracketgate_market_data_line_refusals", "Contracts left "
                                  "without a quote line: every line pinned, or IB's 101",
                                  labels=["reason"])
        fam.add_metric(["budget_full"], 0 if lines is None else lines.full_refusals)
        fam.add_metric(["ib_101"], 0 if lines is None else lines.ib_refusals)
        yield fam
        by_agent = o.open_brackets_by_agent()
        fam = GaugeMetricFamily("bracketgate_open_brackets", "Brackets at IB still carrying risk",
                                labels=["agent_id"])
        for agent in o.agent_labels(by_agent):
            fam.add_metric([agent], float(len(by_agent.get(agent, ()))))
        yield fam
        snap = getattr(o.monitor, "latest", None)
        pnl = snap.pnl if snap is not None else None
        for part in ("daily", "unrealized", "realized"):
            yield gauge(f"bracketgate_pnl_{part}", f"Account {part} P&L (NaN: unknown)",
                        _num(getattr(pnl, part, None)))
        fam = GaugeMetricFamily("bracketgate_ib_connection_state", "1 for the IB connection's "
                                "current state", labels=["state"])
        for st in ConnectionState:
            fam.add_metric([st.value], float(broker is not None and broker.state is st))
        yield fam
        fam = GaugeMetricFamily("bracketgate_trading_state", "1 for the current trading state",
                                labels=["state"])
        for st in TradingState:
            fam.add_metric([st.value], float(gov is not None and gov.state is st))
        yield fam
        yield gauge("bracketgate_uptime_seconds", "Seconds since the daemon started", o.uptime_s())
        yield gauge("bracketgate_heartbeat_rtt_seconds", "The last IB heartbeat's round trip",
                    getattr(broker, "heartbeat_rtt_s", None))
        # more than the contract asks
        yield gauge("bracketgate_mqtt_connected", "1 while the MQTT bridge is connected",
                    float(bool(o.bridge is not None and o.bridge.connected)))
        yield gauge("bracketgate_journal_pending_ops", "Journal operations not yet taken up",
                    float(o.journal.pending) if o.journal is not None else None)
        yield gauge("bracketgate_snapshot_age_seconds", "Age of the oldest part of the portfolio "
                    "snapshot (inf: a part missing)",
                    None if snap is None else min(snap.data_age(o.clock.now()), 1e9))
