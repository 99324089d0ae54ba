"""Combos (BAG) through the adapter against the paper TWS on a loopback socket (issue 12).

The daemon's own wiring (core/app.py `_attach_governor`: resolve every leg, stream the legs'
quotes, decide, what-if, place): legs resolved to IB's conIds and cached, a leg IB does not
have named, and combo brackets (a straddle, a vertical) placed as BAG parent + BAG take-profit +
BAG stop, filled as one with a Fill per leg and one for the BAG, the other child cancelled.
Runs under ib_async and ib_insync 0.9.86 (scripts/test.sh).
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bracketgate.adapters.ib import IBBroker
from bracketgate.agents.execution import ExecutionAgent
from bracketgate.agents.portfolio import PortfolioMonitor
from bracketgate.agents.risk import RiskGovernor
from bracketgate.bus.bus import Bus
from bracketgate.bus.combos import leg_query
from bracketgate.bus.messages import DenialCode, Fill, OrderEvent, RiskDecision, TradeProposal, Verdict
from bracketgate.config.limits import DEFAULT_LIMITS_PATH, parse_limits
from bracketgate.core.app import _attach_governor
from bracketgate.core.clock import SYSTEM_CLOCK

pytestmark = pytest.mark.ib

BAG_CON_ID = 28812380           # the paper TWS reports every BAG with IB's generic conId


class Rig:
    def __init__(self, tws: Any, broker: IBBroker, governor: RiskGovernor) -> None:
        self.tws, self.broker, self.governor = tws, broker, governor
        self.fills: list[Fill] = []
        self.events: list[OrderEvent] = []
        opts = tws.universe.find(symbol="AAPL", sec_type="OPT")
        self.expiry = sorted({c.expiry for c in opts})[1]
        self.by_key = {(c.strike, c.right): c for c in opts if c.expiry == self.expiry}

    def leg(self, strike: float, right: str, action: str, ratio: int = 1) -> dict[str, Any]:
        return dict(sec_type="OPT", expiry=self.expiry, strike=strike, right=right,
                    action=action, ratio=ratio)

    def con_id(self, strike: float, right: str) -> int:
        return self.by_key[(strike, right)].con_id

    def proposal(self, pid: str, legs: list[dict[str, Any]], **kw: Any) -> TradeProposal:
        base: dict[str, Any] = dict(proposal_id=pid, agent_id="alpha", symbol="AAPL",
                                    sec_type="BAG", side="BUY", quantity=1, legs=legs)
        return TradeProposal.model_validate(base | kw)

    async def decide(self, p: TradeProposal) -> RiskDecision:
        return await self.governor.handle_proposal(p)

    async def price(self, strike: float, right: str, px: float) -> None:
        await self.tws.set_price(con_id=self.con_id(strike, right), price=px)

    async def until(self, pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)    # the bus handlers record as IB's events arrive

    def leg_status(self, order_id: int) -> str | None:
        st = [e.status for e in self.events if e.order_id == order_id]
        return st[-1] if st else None


@pytest.fixture
async def rig(paper_tws) -> AsyncIterator[Rig]:
    bus = Bus()
    await bus.start()
    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=9, publish=bus.publish,
                      heartbeat_s=0.2)
    monitor = PortfolioMonitor(bus, broker, heartbeat_s=0.2)
    monitor.attach()
    execution = ExecutionAgent(bus, broker, guard_grace_s=0.5)
    execution.attach()
    broker.add_reconcile_hook(execution.reconcile)
    limits = tomllib.loads(DEFAULT_LIMITS_PATH.read_text())
    governor = RiskGovernor(parse_limits(limits), SYSTEM_CLOCK,
                            contract_info=broker.cached_contract)
    _attach_governor(governor, bus, broker, monitor)
    r = Rig(paper_tws, broker, governor)

    async def on_fill(f: Fill) -> None:
        r.fills.append(f)

    async def on_event(e: OrderEvent) -> None:
        r.events.append(e)

    bus.subscribe(Fill, on_fill, name="test.fills")
    bus.subscribe(OrderEvent, on_event, name="test.events")
    await broker.start()
    await monitor.start()
    try:
        yield r
    finally:
        await governor.aclose()
        await monitor.stop()
        await broker.close()
        await bus.close()


async def test_legs_resolve_to_ib_con_ids_once_and_the_bag_is_cached(rig):
    p = rig.proposal("r-1", [rig.leg(230.0, "C", "BUY"), rig.leg(230.0, "P", "BUY")],
                     limit_price=18.0, take_profit=20.0, stop_loss=17.0)
    combo = await rig.broker.resolve_contract(p)
    assert combo is not None and combo.sec_type.value == "BAG" and combo.multiplier == 100.0
    assert [leg.con_id for leg in combo.legs] == [rig.con_id(230.0, "C"), rig.con_id(230.0, "P")]
    assert await rig.broker.resolve_contract(p) is combo            # cached
    # each leg is cached under its single-leg key: a single-leg proposal of it needs no request
    assert rig.broker.cached_contract(leg_query(p, p.legs[0])) is combo.legs[0]
    bag = rig.broker._ib_contracts[combo.con_id]
    assert bag.secType == "BAG" and bag.symbol == "AAPL" and bag.exchange == "SMART"
    assert [(c.conId, c.ratio, c.action, c.exchange) for c in bag.comboLegs] == [
        (rig.con_id(230.0, "C"), 1, "BUY", "SMART"), (rig.con_id(230.0, "P"), 1, "BUY", "SMART")]


async def test_a_leg_ib_does_not_have_is_named(rig):
    p = rig.proposal("r-2", [rig.leg(230.0, "C", "BUY"), rig.leg(231.5, "C", "SELL")],
                     limit_price=2.0, take_profit=3.0, stop_loss=1.5)
    d = await rig.decide(p)
    assert d.verdict is Verdict.REJECTED
    assert [(r.code, r.field) for r in d.reasons] == [(DenialCode.UNKNOWN_CONTRACT, "legs[1]")]
    assert "231.5C" in d.reasons[0].message
    assert not [o for o in (await rig.tws.state())["orders"] if o.get("orderRef") == "r-2"]


async def _placed(rig: Rig, pid: str, p: TradeProposal) -> Any:
    d = await rig.decide(p)
    assert d.verdict is Verdict.APPROVED, d.reasons
    ids = d.order_ids
    orders = {o["orderId"]: o for o in (await rig.tws.state())["orders"]
              if o.get("orderRef") == pid}
    assert set(orders) == {ids.entry, ids.take_profit, ids.stop_loss}
    assert {o["secType"] for o in orders.values()} == {"BAG"}
    return ids


async def test_straddle_bracket_to_its_take_profit(rig):
    await rig.price(230.0, "C", 10.0)
    await rig.price(230.0, "P", 8.0)
    pid = "straddle-tp"
    ids = await _placed(rig, pid, rig.proposal(
        pid, [rig.leg(230.0, "C", "BUY"), rig.leg(230.0, "P", "BUY")],
        limit_price=18.0, take_profit=20.0, stop_loss=17.0))
    call, put = rig.con_id(230.0, "C"), rig.con_id(230.0, "P")
    await rig.until(lambda: rig.leg_status(ids.entry) == "Filled", "entry filled")
    await rig.price(230.0, "C", 12.10)                    # the combo at 20.10 >= 20.00
    await rig.until(lambda: rig.leg_status(ids.take_profit) == "Filled"
                    and rig.leg_status(ids.stop_loss) == "Cancelled", "TP filled, SL cancelled")
    await rig.until(lambda: len([f for f in rig.fills if f.proposal_id == pid]) == 6, "6 fills")
    fills = [f for f in rig.fills if f.proposal_id == pid]
    bag = [f for f in fills if f.sec_type == "BAG"]
    assert [(f.leg.value, f.quantity, f.price) for f in bag] == [
        ("entry", 1.0, 18.0), ("take_profit", 1.0, pytest.approx(20.0, abs=0.2))]
    legs = [f for f in fills if f.sec_type == "OPT"]
    assert sorted({f.con_id for f in legs}) == sorted({call, put})
    assert all(f.commission for f in legs) and all(f.commission is None for f in bag)
    # P&L per leg (the closing legs') and per bracket (the running sum on every fill)
    closing = [f for f in legs if f.leg.value == "take_profit"]
    assert all(f.realized_pnl is not None for f in closing)
    last = fills[-1] if fills[-1].sec_type != "BAG" else fills[-2]
    assert last.bracket_realized_pnl == pytest.approx(sum(f.realized_pnl or 0.0 for f in legs))
    await rig.until(lambda: pid not in rig.governor.ledger, "reservation released")


async def test_vertical_bracket_to_its_stop(rig):
    await rig.price(230.0, "C", 10.0)
    await rig.price(240.0, "C", 4.0)
    pid = "vertical-sl"
    ids = await _placed(rig, pid, rig.proposal(
        pid, [rig.leg(230.0, "C", "BUY"), rig.leg(240.0, "C", "SELL")],
        limit_price=6.0, take_profit=8.0, stop_loss=5.0))
    await rig.until(lambda: rig.leg_status(ids.entry) == "Filled", "entry filled")
    state = await rig.tws.state()
    held = {p["conId"]: p["position"] for p in state["positions"]}
    assert held[rig.con_id(230.0, "C")] == 1 and held[rig.con_id(240.0, "C")] == -1
    await rig.price(230.0, "C", 8.90)                     # the combo at 4.90 <= 5.00
    await rig.until(lambda: rig.leg_status(ids.stop_loss) == "Filled"
                    and rig.leg_status(ids.take_profit) == "Cancelled", "SL filled, TP cancelled")
    await rig.until(lambda: pid not in rig.governor.ledger, "reservation released")
    state = await rig.tws.state()
    assert all(p["position"] == 0 for p in state["positions"]
               if p["conId"] in (rig.con_id(230.0, "C"), rig.con_id(240.0, "C")))


async def test_a_short_straddle_is_refused_before_anything_reaches_ib(rig):
    await rig.price(230.0, "C", 10.0)
    await rig.price(230.0, "P", 8.0)
    p = rig.proposal("short", [rig.leg(230.0, "C", "BUY"), rig.leg(230.0, "P", "BUY")],
                     side="SELL", limit_price=18.0, take_profit=16.0, stop_loss=19.0)
    d = await rig.decide(p)
    assert [r.code for r in d.reasons] == [DenialCode.UNDEFINED_RISK_COMBO]
    assert not [o for o in (await rig.tws.state())["orders"] if o.get("orderRef") == "short"]
