"""Property: whatever the sequence of proposals, fills, cancels, price moves and snapshots, the
set of brackets the governor has approved and that are still open never breaches a limit.

The test keeps its own model of the world (the truth): which brackets are open, what has
filled, what the last published snapshot shows. Every approval is checked against limits
computed from that model, independently of the governor's own bookkeeping, and after every
step the governor's open reservations must be exactly the model's open brackets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bracketgate.agents.risk import RiskGovernor
from bracketgate.agents.rules import offline_con_id
from bracketgate.bus.messages import (
    ControlCommand,
    Fill,
    Leg,
    OrderEvent,
    PnL,
    PortfolioSnapshot,
    Position,
    Quote,
    Side,
    TradeProposal,
    TradingState,
    Verdict,
)
from bracketgate.config.limits import RiskLimits
from bracketgate.core.clock import ManualClock

TICK = 0.01
EPS = 1e-6
LIMITS = RiskLimits.model_validate(dict(
    max_snapshot_age_s=10.0, max_quote_age_s=15.0,
    daily_loss_limit=1_000.0, per_trade_loss_limit=600.0, per_trade_loss_pct=0.05,
    max_drawdown_pct=0.05, slippage_ticks=1.0, slippage_pct=0.0,
    min_reward_risk=1.0, min_stop_distance_pct=0.2, max_stop_distance_pct=8.0,
    max_order_quantity=250, max_order_notional=20_000.0,
    max_position_units=300.0, max_position_notional=25_000.0,
    max_gross_exposure_pct=5.0, max_net_exposure_pct=3.0, max_open_brackets=10,
    max_proposals_per_s=30.0, proposal_burst=40, max_order_msgs_per_s=24.0,
    agent=dict(loss_limit=800.0, exposure_limit=30_000.0, max_open_brackets=4,
               max_proposals_per_s=10.0, proposal_burst=10),
))
SYMBOLS = ("AAPL", "MSFT")
AGENTS = ("a", "b", "c")


@dataclass
class Bracket:
    """The model's truth about one approved bracket."""

    p: TradeProposal
    sign: int
    entry: float
    worst: float
    filled: float = 0.0
    filled_in_snapshot: float = 0.0
    entry_done: bool = False

    @property
    def pending(self) -> float:
        unfilled = 0.0 if self.entry_done else self.p.quantity - self.filled
        return unfilled + (self.filled - self.filled_in_snapshot)


class RiskWorld(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.clock = ManualClock()
        self.gov = RiskGovernor(LIMITS, self.clock)
        self.prices = {"AAPL": 100.0, "MSFT": 50.0}
        self.held: dict[str, float] = {s: 0.0 for s in SYMBOLS}       # live position
        self.avg: dict[str, float] = {s: 0.0 for s in SYMBOLS}
        self.realized = 0.0
        self.agent_realized: dict[str, float] = {}
        self.open: dict[str, Bracket] = {}
        self.n = 0
        self.exec_n = 0
        self.publish()

    # ------------------------------------------------------------------ the world

    def publish(self) -> None:
        now = self.clock.now()
        unrealized = sum(self.held[s] * (self.prices[s] - self.avg[s]) for s in SYMBOLS)
        daily = self.realized + unrealized
        positions = [Position(con_id=offline_con_id(s), symbol=s, sec_type="STK", quantity=self.held[s],
                              avg_cost=self.avg[s], market_price=self.prices[s],
                              market_value=self.held[s] * self.prices[s])
                     for s in SYMBOLS if self.held[s]]
        quotes = {offline_con_id(s): Quote(con_id=offline_con_id(s), symbol=s, bid=round(px - TICK, 2),
                                           ask=round(px + TICK, 2), last=px, ts=now)
                  for s, px in self.prices.items()}
        snap = PortfolioSnapshot(
            ts=now, connection="ready", reconciled=True,
            account_values={"NetLiquidation": 1_000_000.0 + daily, "AvailableFunds": 900_000.0},
            account_values_ts=now, positions=positions, positions_ts=now, pnl=PnL(daily=daily),
            pnl_ts=now, quotes=quotes)
        self.gov.on_snapshot(snap)
        self.snap = snap
        for b in self.open.values():
            b.filled_in_snapshot = b.filled

    def trade(self, symbol: str, signed_qty: float, price: float) -> float:
        """Move the live position; return the realized P&L of the part that closed."""
        pos, avg = self.held[symbol], self.avg[symbol]
        realized = 0.0
        if pos and (pos > 0) != (signed_qty > 0):
            closing = min(abs(signed_qty), abs(pos))
            realized = closing * (price - avg) * (1 if pos > 0 else -1)
        new = pos + signed_qty
        if abs(new) < 1e-9:
            self.held[symbol], self.avg[symbol] = 0.0, 0.0
        elif pos == 0 or (pos > 0) != (new > 0):
            self.held[symbol], self.avg[symbol] = new, price
        elif (pos > 0) == (signed_qty > 0):
            self.held[symbol] = new
            self.avg[symbol] = (pos * avg + signed_qty * price) / new
        else:
            self.held[symbol] = new
        self.realized += realized
        return realized

    def fill(self, b: Bracket, leg: Leg, qty: float, price: float) -> None:
        side = b.p.side if leg is Leg.ENTRY else b.p.side.opposite
        realized = self.trade(b.p.symbol, side.sign * qty, price)
        self.exec_n += 1
        self.agent_realized[b.p.agent_id] = self.agent_realized.get(b.p.agent_id, 0.0) + realized
        self.gov.on_fill(Fill(
            proposal_id=b.p.proposal_id, agent_id=b.p.agent_id, order_id=1, leg=leg,
            exec_id=f"e{self.exec_n}", symbol=b.p.symbol, side=side, quantity=qty, price=price,
            realized_pnl=realized, ts=self.clock.now()))

    # ------------------------------------------------------------------ rules

    @rule(data=st.data(), n=st.integers(1, 6))
    def proposals_arrive(self, data: Any, n: int) -> None:
        for _ in range(n):
            self.propose(data)

    def propose(self, data: Any) -> None:
        sym = data.draw(st.sampled_from(SYMBOLS))
        side = data.draw(st.sampled_from([Side.BUY, Side.SELL]))
        s = side.sign
        px = self.prices[sym]
        market = data.draw(st.booleans())
        entry = px if market else round(px + data.draw(st.integers(-20, 20)) * TICK, 2)
        stop_ticks = data.draw(st.integers(5, 300))
        tp_ticks = round(stop_ticks * data.draw(st.sampled_from([0.9, 1.0, 1.5, 3.0])))
        qty = data.draw(st.one_of(st.integers(1, 60), st.integers(1, 260)))
        stop = round(entry - s * stop_ticks * TICK, 2)
        tp = round(entry + s * tp_ticks * TICK, 2)
        if stop <= 0:
            return
        self.n += 1
        p = TradeProposal(
            proposal_id=f"p{self.n}", agent_id=data.draw(st.sampled_from(AGENTS)), symbol=sym,
            side=side, quantity=qty, order_type="MKT" if market else "LMT",
            limit_price=None if market else entry, take_profit=tp, stop_loss=stop)
        before = self.measures(self.gov.snapshot)
        d = self.gov.evaluate(p, self.gov.snapshot)
        if d.verdict is not Verdict.APPROVED:
            return
        q = self.gov.snapshot.quotes[offline_con_id(sym)] if self.gov.snapshot else None
        e = (q.ask if s > 0 else q.bid) if market and q else entry
        per_unit = abs(e - stop) + LIMITS.slippage_ticks * TICK * (2 if market else 1)
        self.open[p.proposal_id] = Bracket(p, s, e, qty * per_unit)
        self.check_after_approval(p, before)

    @rule(data=st.data())
    def fill_entry(self, data: Any) -> None:
        live = [b for b in self.open.values() if not b.entry_done]
        if not live:
            return
        b = data.draw(st.sampled_from(live))
        qty = data.draw(st.integers(1, int(b.p.quantity - b.filled)))
        self.fill(b, Leg.ENTRY, qty, b.entry)
        b.filled += qty
        if b.filled >= b.p.quantity:
            b.entry_done = True
            if data.draw(st.booleans()):   # the status event may come too, never double counts
                self.gov.on_order_event(self.event(b, Leg.ENTRY, "Filled"))

    @rule(data=st.data())
    def cancel_entry(self, data: Any) -> None:
        live = [b for b in self.open.values() if not b.entry_done]
        if not live:
            return
        b = data.draw(st.sampled_from(live))
        b.entry_done = True
        self.gov.on_order_event(self.event(b, Leg.ENTRY, data.draw(st.sampled_from(
            ["Cancelled", "ApiCancelled", "Inactive"]))))
        if b.filled == 0:
            del self.open[b.p.proposal_id]

    @rule(data=st.data())
    def exit_leg_fills(self, data: Any) -> None:
        done = [b for b in self.open.values() if b.entry_done and b.filled > 0]
        if not done:
            return
        b = data.draw(st.sampled_from(done))
        leg = data.draw(st.sampled_from([Leg.TAKE_PROFIT, Leg.STOP_LOSS]))
        price = b.p.take_profit if leg is Leg.TAKE_PROFIT else b.p.stop_loss
        self.fill(b, leg, b.filled, price)
        del self.open[b.p.proposal_id]

    @rule(data=st.data())
    def placement_fails(self, data: Any) -> None:
        fresh = [b for b in self.open.values() if b.filled == 0 and not b.entry_done]
        if not fresh:
            return
        b = data.draw(st.sampled_from(fresh))
        self.gov.release(b.p.proposal_id, "placement failed")
        del self.open[b.p.proposal_id]

    @rule(sym=st.sampled_from(SYMBOLS), ticks=st.integers(-600, 600), publish=st.booleans())
    def price_moves(self, sym: str, ticks: int, publish: bool) -> None:
        self.prices[sym] = max(1.0, round(self.prices[sym] + ticks * TICK, 2))
        if publish:
            self.publish()

    @rule(seconds=st.floats(0.0, 4.0))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def snapshot_arrives(self) -> None:
        self.publish()

    @rule()
    def operator_resumes(self) -> None:
        self.gov.on_control(ControlCommand(action="resume"))

    def event(self, b: Bracket, leg: Leg, status: str) -> OrderEvent:
        return OrderEvent(proposal_id=b.p.proposal_id, agent_id=b.p.agent_id, order_id=1, leg=leg,
                          symbol=b.p.symbol, status=status, filled=b.filled,
                          remaining=b.p.quantity - b.filled, ts=self.clock.now())

    # ------------------------------------------------------------------ the limits, from the model

    def measures(self, snap: PortfolioSnapshot | None) -> dict[str, Any]:
        """Worst-case exposures if any subset of the pending entries fills."""
        if snap is None:
            return {}
        pos = {s: snap.position(s) for s in SYMBOLS}
        pos_n = {p.symbol: p.market_value or 0.0 for p in snap.positions}
        units = {(s, d): 0.0 for s in SYMBOLS for d in (1, -1)}
        notional = dict(units)
        for b in self.open.values():
            units[(b.p.symbol, b.sign)] += b.pending
            notional[(b.p.symbol, b.sign)] += b.pending * b.entry
        out: dict[str, Any] = {}
        for s in SYMBOLS:
            for d in (1, -1):
                out[("units", s, d)] = abs(pos[s] + d * units[(s, d)])
                out[("notional", s, d)] = abs(pos_n.get(s, 0.0) + d * notional[(s, d)])
        out["gross"] = sum(max(abs(pos_n.get(s, 0.0) + notional[(s, 1)]),
                               abs(pos_n.get(s, 0.0) - notional[(s, -1)])) for s in SYMBOLS)
        net = sum(pos_n.values())
        out[("net", 1)] = abs(net + sum(notional[(s, 1)] for s in SYMBOLS))
        out[("net", -1)] = abs(net - sum(notional[(s, -1)] for s in SYMBOLS))
        return out

    def check_after_approval(self, p: TradeProposal, before: dict[str, Any]) -> None:
        snap = self.gov.snapshot
        assert snap is not None and self.gov.state is not TradingState.HALTED
        nlv = snap.account_values["NetLiquidation"]
        daily = snap.pnl.daily
        assert daily is not None
        b = self.open[p.proposal_id]
        # per trade
        assert b.worst <= LIMITS.per_trade_loss_limit + EPS
        assert b.worst <= nlv * LIMITS.per_trade_loss_pct / 100 + EPS
        # daily: every open bracket's worst case fits what is left of today's budget
        total = sum(x.worst for x in self.open.values())
        assert total <= LIMITS.daily_loss_limit + min(0.0, daily) + EPS, (total, daily)
        # per agent
        mine = [x for x in self.open.values() if x.p.agent_id == p.agent_id]
        assert len(mine) <= LIMITS.agent.max_open_brackets
        agent_worst = sum(x.worst for x in mine)
        assert agent_worst - min(0.0, self.agent_realized.get(p.agent_id, 0.0)) \
            <= LIMITS.agent.loss_limit + EPS
        # counts
        assert len(self.open) <= LIMITS.max_open_brackets
        # size and exposure: never pushed past a limit (a limit already exceeded by a price
        # move may only be moved back towards)
        after = self.measures(snap)
        caps = {"units": LIMITS.max_position_units, "notional": LIMITS.max_position_notional}
        checks = [(k, caps[k[0]]) for k in after if isinstance(k, tuple) and k[0] in caps]
        checks += [("gross", nlv * LIMITS.max_gross_exposure_pct / 100)]
        checks += [(("net", d), nlv * LIMITS.max_net_exposure_pct / 100) for d in (1, -1)]
        for key, cap in checks:
            if after[key] > cap + EPS:
                assert after[key] <= before[key] + EPS, (key, before[key], after[key], cap)
        assert b.p.quantity <= LIMITS.max_order_quantity
        assert b.p.quantity * b.entry <= LIMITS.max_order_notional + EPS

    @invariant()
    def ledger_matches_the_world(self) -> None:
        if not hasattr(self, "gov"):
            return
        assert {r.proposal_id for r in self.gov.ledger} == set(self.open)
        for pid, b in self.open.items():
            res = self.gov.ledger.get(pid)
            assert res is not None and math.isclose(res.pending_units, b.pending, abs_tol=1e-9)
            assert math.isclose(res.worst_case_loss, b.worst, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(self.gov.ledger.total_worst_case,
                            sum(b.worst for b in self.open.values()), abs_tol=1e-6)


RiskWorld.TestCase.settings = settings(
    max_examples=200, stateful_step_count=80, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestRiskWorld = RiskWorld.TestCase
