"""Quotes, positions and reservations per contract through the adapter (issue 8, item 5).

The daemon's own wiring (core/app.py `_attach_governor`: resolve the contract, stream its quote,
decide, what-if, place) against the paper TWS on a loopback socket: a stock and its option, and
two expiries of one future, quoted at very different prices. Keyed by symbol, one quote
overwrote the other and a market entry on one was risk-priced at the other's price.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bracketgate.adapters.ib import IBBroker
from bracketgate.agents.execution import ExecutionAgent
from bracketgate.agents.portfolio import PortfolioMonitor
from bracketgate.agents.risk import RiskGovernor
from bracketgate.bus.bus import Bus
from bracketgate.bus.messages import DenialCode, RiskDecision, TradeProposal, Verdict
from bracketgate.core.app import _attach_governor
from bracketgate.core.clock import SYSTEM_CLOCK
from bracketgate.config.limits import DEFAULT_LIMITS_PATH, parse_limits

pytestmark = pytest.mark.ib


class Rig:
    def __init__(self, broker: IBBroker, governor: RiskGovernor) -> None:
        self.broker, self.governor = broker, governor

    async def decide(self, pid: str, **kw: Any) -> RiskDecision:
        base: dict[str, Any] = dict(proposal_id=pid, agent_id="alpha", symbol="AAPL", side="BUY",
                                    quantity=1, order_type="MKT")
        return await self.governor.handle_proposal(TradeProposal.model_validate(base | kw))


@pytest.fixture
async def rig(paper_tws) -> AsyncIterator[Rig]:
    bus = Bus()
    await bus.start()
    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=9, publish=bus.publish,
                      heartbeat_s=0.2)
    monitor = PortfolioMonitor(bus, broker, heartbeat_s=0.2)
    monitor.attach()
    execution = ExecutionAgent(bus, broker, guard_grace_s=0.2)
    execution.attach()
    broker.add_reconcile_hook(execution.reconcile)
    limits = tomllib.loads(DEFAULT_LIMITS_PATH.read_text())
    # room for one E-mini (~300k notional); 10 units of any one contract
    limits |= {"max_position_units": 10.0, "max_order_notional": 1e7, "max_position_notional": 1e7}
    limits["agent"] = limits.get("agent", {}) | {"exposure_limit": 1e7}
    governor = RiskGovernor(parse_limits(limits), SYSTEM_CLOCK,
                            contract_info=broker.cached_contract)
    _attach_governor(governor, bus, broker, monitor)
    await broker.start()
    await monitor.start()
    try:
        yield Rig(broker, governor)
    finally:
        await governor.aclose()
        await monitor.stop()
        await broker.close()
        await bus.close()


def option_kw(paper_tws) -> dict[str, Any]:
    expiry = sorted({c.expiry for c in paper_tws.universe.find(symbol="AAPL", sec_type="OPT")})[0]
    return dict(sec_type="OPT", expiry=expiry, strike=230.0, right="C")


def futures_expiries(paper_tws) -> list[str]:
    return sorted({c.expiry[:6] for c in paper_tws.universe.find(symbol="ES", sec_type="FUT")})[:2]


async def test_stock_and_its_option_market_entries_are_priced_at_their_own_quotes(paper_tws, rig):
    opt = option_kw(paper_tws)
    call = await rig.broker.resolve_contract(TradeProposal.model_validate(dict(
        proposal_id="probe", agent_id="alpha", symbol="AAPL", side="BUY", quantity=1,
        limit_price=1.0, take_profit=2.0, stop_loss=0.5, **opt)))
    assert call is not None
    await paper_tws.set_price("AAPL", 228.50)
    await paper_tws.set_price(con_id=call.con_id, price=5.20)

    stock = await rig.decide("stk-1", quantity=10, take_profit=235.0, stop_loss=226.0)
    option = await rig.decide("opt-1", take_profit=6.50, stop_loss=4.80, **opt)
    assert stock.verdict is Verdict.APPROVED, stock.reasons
    assert option.verdict is Verdict.APPROVED, option.reasons   # not priced at ~228.5

    quotes = rig.broker.quotes()
    stock_con_id = rig.broker.cached_contract(TradeProposal.model_validate(dict(
        proposal_id="x", agent_id="alpha", symbol="AAPL", side="BUY", quantity=1, order_type="MKT",
        take_profit=235.0, stop_loss=226.0))).con_id           # type: ignore[union-attr]
    assert {stock_con_id, call.con_id} <= set(quotes)
    assert quotes[call.con_id].con_id == call.con_id and quotes[stock_con_id].con_id == stock_con_id
    assert quotes[stock_con_id].ask == pytest.approx(228.5, abs=0.05)
    assert quotes[call.con_id].ask == pytest.approx(5.2, abs=0.05)
    # the reservations are at each contract's own ask, with its own multiplier
    rs, ro = rig.governor.ledger.get("stk-1"), rig.governor.ledger.get("opt-1")
    assert rs is not None and ro is not None
    assert (rs.con_id, rs.entry_price, rs.multiplier) == (stock_con_id, quotes[stock_con_id].ask, 1.0)
    assert (ro.con_id, ro.entry_price, ro.multiplier) == (call.con_id, quotes[call.con_id].ask, 100.0)
    # the snapshot the governor decides on carries both, keyed by conId
    snap = rig.governor.snapshot
    assert snap is not None and {stock_con_id, call.con_id} <= set(snap.quotes)


async def test_two_futures_expiries_are_priced_at_their_own_quotes(paper_tws, rig):
    near, far = futures_expiries(paper_tws)
    fut = dict(symbol="ES", sec_type="FUT", exchange="CME")
    ids = {}
    for expiry, price in ((near, 6000.0), (far, 6100.0)):
        c = await rig.broker.resolve_contract(TradeProposal.model_validate(dict(
            proposal_id="probe", agent_id="alpha", side="BUY", quantity=1, limit_price=1.0,
            take_profit=2.0, stop_loss=0.5, expiry=expiry, **fut)))
        assert c is not None and c.multiplier == 50
        ids[expiry] = c.con_id
        await paper_tws.set_price(con_id=c.con_id, price=price)
    assert ids[near] != ids[far]

    d_near = await rig.decide("es-near", expiry=near, take_profit=6050.0, stop_loss=5980.0, **fut)
    d_far = await rig.decide("es-far", expiry=far, take_profit=6150.0, stop_loss=6080.0, **fut)
    assert d_near.verdict is Verdict.APPROVED, d_near.reasons
    assert d_far.verdict is Verdict.APPROVED, d_far.reasons     # not priced at ~6000
    r_near, r_far = rig.governor.ledger.get("es-near"), rig.governor.ledger.get("es-far")
    assert r_near is not None and r_far is not None
    assert r_near.entry_price == pytest.approx(6000.0, abs=0.5)
    assert r_far.entry_price == pytest.approx(6100.0, abs=0.5)
    assert (r_near.con_id, r_far.con_id) == (ids[near], ids[far])


async def test_position_limits_count_each_contract_alone(paper_tws, rig):
    # resting limit orders (below the market, inside the price bands): reservations only
    opt = option_kw(paper_tws)
    call = await rig.broker.resolve_contract(TradeProposal.model_validate(dict(
        proposal_id="probe", agent_id="alpha", symbol="AAPL", side="BUY", quantity=1,
        limit_price=1.0, take_profit=2.0, stop_loss=0.5, **opt)))
    assert call is not None
    await paper_tws.set_price("AAPL", 228.50)
    await paper_tws.set_price(con_id=call.con_id, price=0.55)
    stock = dict(order_type="LMT", limit_price=200.0, take_profit=210.0, stop_loss=196.0)
    option = dict(order_type="LMT", limit_price=0.50, take_profit=0.80, stop_loss=0.46, **opt)
    assert (await rig.decide("stk-10", quantity=10, **stock)).verdict is Verdict.APPROVED
    d = await rig.decide("opt-10", quantity=10, **option)
    assert d.verdict is Verdict.APPROVED, d.reasons             # the stock's 10 are not its
    over_stock = await rig.decide("stk-1", quantity=1, **stock)
    over_option = await rig.decide("opt-1", quantity=1, **option)
    assert [r.code for r in over_stock.reasons] == [DenialCode.POSITION_LIMIT]
    assert [r.code for r in over_option.reasons] == [DenialCode.POSITION_LIMIT]
    assert over_stock.reasons[0].value == 11 and over_option.reasons[0].value == 11


async def test_a_second_proposal_during_the_first_quote_subscription_waits_for_the_same_tick(
        paper_tws, rig):
    # two market entries on a contract never quoted before arrive together: the first subscribes,
    # the second found the subscription in flight and was answered QUOTE_UNAVAILABLE (seen with
    # two daemons on one broker); both must get the first tick
    await paper_tws.set_price("MSFT", 410.25)
    msft = await rig.broker.resolve_contract(TradeProposal.model_validate(dict(
        proposal_id="probe", agent_id="alpha", symbol="MSFT", side="BUY", quantity=1,
        order_type="MKT", take_profit=420.0, stop_loss=400.0)))
    assert msft is not None and msft.con_id not in rig.broker.quotes()
    first_task = asyncio.create_task(rig.broker.ensure_quote(msft))
    while msft.con_id not in rig.broker._tickers:    # the first one's reqMktData is out
        await asyncio.sleep(0)
    second = await rig.broker.ensure_quote(msft)
    first = await first_task
    assert first is not None and second is not None
    assert second.ask == pytest.approx(410.25, abs=0.05)
