"""The market-data line budget (adapters/md_lines.py) against the paper TWS's line cap.

The daemon's own wiring (core/app.py `_attach_governor`) with a small budget: proposals on more
contracts than lines are each decided on their own fresh quote (the least recently used line
given up for the next), a working bracket's line is never given up, every line pinned is a
QUOTE_UNAVAILABLE naming the budget (never a hang), and IB's own 101 (a TWS cap below the
budget: other tools hold lines) is survived.
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
from bracketgate.config.limits import DEFAULT_LIMITS_PATH, parse_limits
from bracketgate.core.app import _attach_governor
from bracketgate.core.clock import SYSTEM_CLOCK

pytestmark = pytest.mark.ib

STOCKS = ("AAPL", "MSFT", "TSLA", "SPY", "NVDA", "AMZN")
D = DenialCode


class Rig:
    def __init__(self, paper_tws: Any, broker: IBBroker, governor: RiskGovernor) -> None:
        self.paper_tws, self.broker, self.governor = paper_tws, broker, governor
        self.n = 0

    async def decide(self, contract: dict[str, Any], **kw: Any) -> RiskDecision:
        self.n += 1
        base: dict[str, Any] = dict(proposal_id=f"p{self.n}", agent_id="alpha", side="BUY",
                                    quantity=1, order_type="MKT")
        p = TradeProposal.model_validate(base | contract | kw)
        return await asyncio.wait_for(self.governor.handle_proposal(p), 10.0)

    async def con_id(self, contract: dict[str, Any]) -> int:
        c = await self.broker.resolve_contract(TradeProposal.model_validate(dict(
            proposal_id="probe", agent_id="alpha", side="BUY", quantity=1, limit_price=1.0,
            take_profit=2.0, stop_loss=0.5) | contract))
        assert c is not None
        return c.con_id

    async def sim_lines(self) -> dict[str, int]:
        return (await self.paper_tws.state())["mdLines"]

    def held(self) -> set[int]:
        assert set(self.broker._tickers) <= set(self.broker.lines.held())
        return set(self.broker._tickers)


def contracts(paper_tws, n: int) -> list[dict[str, Any]]:
    """`n` distinct contracts: the six stocks, then AAPL calls of the nearest expiry."""
    out: list[dict[str, Any]] = [dict(symbol=s) for s in STOCKS]
    calls = paper_tws.universe.find(symbol="AAPL", sec_type="OPT")
    expiry = sorted({c.expiry for c in calls})[0]
    strikes = sorted({c.strike for c in calls if c.expiry == expiry and c.right == "C"},
                     key=lambda k: abs(k - 230.0))
    out += [dict(symbol="AAPL", sec_type="OPT", expiry=expiry, strike=k, right="C")
            for k in strikes[:max(0, n - len(out))]]
    return out[:n]


def bracket_around(price: float) -> dict[str, Any]:
    return dict(take_profit=round(price * 1.04, 2), stop_loss=round(price * 0.98, 2))


def limits_with(**kw: Any) -> Any:
    limits = tomllib.loads(DEFAULT_LIMITS_PATH.read_text())
    return parse_limits(limits | kw)


@pytest.fixture
async def make_rig(paper_tws) -> AsyncIterator[Any]:
    made: list[tuple[Any, ...]] = []

    async def make(budget: int, sim_limit: int, **limits: Any) -> Rig:
        await paper_tws.post("/md_lines", {"limit": sim_limit})
        bus = Bus()
        await bus.start()
        broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=11,
                          publish=bus.publish, heartbeat_s=0.2, max_market_data_lines=budget)
        monitor = PortfolioMonitor(bus, broker, heartbeat_s=0.2)
        monitor.attach()
        execution = ExecutionAgent(bus, broker, guard_grace_s=0.2)
        execution.attach()
        broker.add_reconcile_hook(execution.reconcile)
        governor = RiskGovernor(limits_with(**limits), SYSTEM_CLOCK,
                                contract_info=broker.cached_contract)
        _attach_governor(governor, bus, broker, monitor)
        await broker.start()
        await monitor.start()
        made.append((governor, monitor, broker, bus))
        return Rig(paper_tws, broker, governor)

    try:
        yield make
    finally:
        for governor, monitor, broker, bus in made:
            await governor.aclose()
            await monitor.stop()
            await broker.close()
            await bus.close()


async def test_ten_contracts_through_four_lines_are_each_priced_on_a_fresh_quote(
        paper_tws, make_rig):
    # every proposal is refused on its notional (the limit is 1): its value is the MKT entry's
    # price as the gate saw it, so a stale quote (a given-up line's last price) would show
    rig = await make_rig(4, 5, max_order_notional=1.0)
    universe = contracts(paper_tws, 10)
    ids = [await rig.con_id(c) for c in universe]
    assert len(set(ids)) == 10
    for rnd in range(2):
        for i, (c, con_id) in enumerate(zip(universe, ids)):
            price = (100.0 + 10 * i + 3 * rnd) if "sec_type" not in c else (5.0 + i + rnd)
            await paper_tws.set_price(con_id=con_id, price=price)
            d = await rig.decide(c, **bracket_around(price))
            codes = [r.code for r in d.reasons]
            assert D.QUOTE_UNAVAILABLE not in codes, (c, d.reasons)
            notional = next(r for r in d.reasons if r.code is D.MAX_ORDER_NOTIONAL)
            mult = 100.0 if "sec_type" in c else 1.0
            assert notional.value == pytest.approx(price * mult, rel=0.01), (rnd, c)
            assert con_id in rig.held() and len(rig.held()) <= 4
            snap = rig.governor.snapshot
            assert snap is not None and set(snap.quotes) <= rig.held()   # no given-up line's quote
            lines = await rig.sim_lines()
            assert lines["in_use"] <= 4 and lines["refusals"] == 0
    assert rig.broker.lines.evictions >= 16
    assert rig.broker.lines.ib_refusals == 0 and rig.broker.lines.full_refusals == 0


async def test_a_working_brackets_line_is_never_given_up(paper_tws, make_rig):
    rig = await make_rig(3, 5)
    universe = contracts(paper_tws, 9)
    await paper_tws.set_price("AAPL", 228.50)
    # a resting limit bracket (below the market, inside the bands): it works at IB
    resting = await rig.decide(dict(symbol="AAPL"), order_type="LMT", limit_price=200.0,
                               take_profit=210.0, stop_loss=196.0)
    assert resting.verdict is Verdict.APPROVED and resting.order_ids is not None, resting.reasons
    aapl = await rig.con_id(dict(symbol="AAPL"))
    for c in universe[1:]:   # each refused on its size, after its quote was streamed
        d = await rig.decide(c, quantity=100_000, **bracket_around(100.0))
        assert D.MAX_ORDER_QUANTITY in [r.code for r in d.reasons]
        assert D.QUOTE_UNAVAILABLE not in [r.code for r in d.reasons], d.reasons
        assert aapl in rig.held() and len(rig.held()) <= 3
    assert rig.broker.lines.evictions >= 5
    assert aapl in rig.broker.quotes()
    assert (await rig.sim_lines())["in_use"] <= 3


async def test_every_line_pinned_is_quote_unavailable_naming_the_budget(paper_tws, make_rig):
    rig = await make_rig(2, 5)
    await paper_tws.set_price("AAPL", 228.50)
    await paper_tws.set_price("MSFT", 410.00)
    for sym, lmt in (("AAPL", 200.0), ("MSFT", 380.0)):
        d = await rig.decide(dict(symbol=sym), order_type="LMT", limit_price=lmt,
                             take_profit=round(lmt * 1.05, 2), stop_loss=round(lmt * 0.98, 2))
        assert d.verdict is Verdict.APPROVED, d.reasons
    d = await rig.decide(dict(symbol="TSLA"), **bracket_around(250.0))
    assert d.verdict is Verdict.REJECTED
    [r] = [r for r in d.reasons if r.code is D.QUOTE_UNAVAILABLE]
    assert r.field == "market_data_lines" and r.limit == 2 and r.value == 2
    assert "line budget is full" in r.message and "IB_MAX_MARKET_DATA_LINES" in r.message
    assert rig.broker.lines.full_refusals == 1
    tsla = await rig.con_id(dict(symbol="TSLA"))
    assert tsla not in rig.held() and len(rig.held()) == 2
    assert await rig.sim_lines() == {"limit": 5, "in_use": 2, "refusals": 0}

    # a bracket ends (its entry cancelled): its line is no longer pinned, TSLA gets one
    entry = next(o.order_id for o in rig.broker.working_orders()
                 if o.symbol == "MSFT" and o.parent_id is None)
    assert await rig.broker.cancel_order(entry)
    for _ in range(200):
        if not any(res.symbol == "MSFT" for res in rig.governor.ledger) and not any(
                o.symbol == "MSFT" for o in rig.broker.working_orders()):
            break
        await asyncio.sleep(0.05)
    d = await rig.decide(dict(symbol="TSLA"), **bracket_around(250.0))
    assert D.QUOTE_UNAVAILABLE not in [r.code for r in d.reasons], d.reasons
    assert tsla in rig.held() and len(rig.held()) == 2


async def test_ibs_101_below_the_budget_is_survived(paper_tws, make_rig):
    # the TWS caps at 3 (other tools hold lines), the daemon believes it has 4
    rig = await make_rig(4, 3)
    universe = contracts(paper_tws, 5)
    ids = [await rig.con_id(c) for c in universe]

    async def decide(i: int) -> RiskDecision:
        return await rig.decide(universe[i], quantity=100_000, **bracket_around(100.0))

    for i in range(3):
        d = await decide(i)
        assert D.QUOTE_UNAVAILABLE not in [r.code for r in d.reasons], d.reasons
    d = await decide(3)   # IB: 101
    [r] = [r for r in d.reasons if r.code is D.QUOTE_UNAVAILABLE]
    assert r.field == "market_data_lines" and "101" in r.message and r.limit == 3
    assert (await rig.sim_lines())["refusals"] == 1
    assert rig.broker.lines.ib_refusals == 1 and rig.broker.lines.ceiling == 3
    assert ids[3] not in rig.held() and len(rig.held()) == 3
    # the next contracts take the least recently used line: no second 101
    for i in (4, 3, 0):
        d = await decide(i)
        assert D.QUOTE_UNAVAILABLE not in [r.code for r in d.reasons], (i, d.reasons)
        assert ids[i] in rig.held() and len(rig.held()) <= 3
    lines = await rig.sim_lines()
    assert lines["refusals"] == 1 and lines["in_use"] <= 3
    # the same figures on /metrics
    from prometheus_client import generate_latest

    from bracketgate.core.metrics import Observer

    obs = Observer(mode="paper", prefix="t")
    obs.watch(broker=rig.broker)
    text = generate_latest(obs.registry).decode()
    assert "bracketgate_market_data_lines 3.0" in text
    assert "bracketgate_market_data_lines_limit 3.0" in text
    assert f"bracketgate_market_data_line_evictions_total {float(rig.broker.lines.evictions)}" \
        in text and rig.broker.lines.evictions >= 3
    assert 'bracketgate_market_data_line_refusals_total{reason="ib_101"} 1.0' in text
    assert 'bracketgate_market_data_line_refusals_total{reason="budget_full"} 0.0' in text


async def _wait(predicate: Any, timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.02)


async def test_a_reconnect_and_a_data_lost_1101_renew_only_the_lines_held(paper_tws, make_rig):
    rig = await make_rig(3, 5)
    universe = contracts(paper_tws, 5)
    ids = [await rig.con_id(c) for c in universe]
    for c in universe:
        await rig.decide(c, quantity=100_000, **bracket_around(100.0))
    held = rig.held()
    assert held == set(ids[2:]) and (await rig.sim_lines())["in_use"] == 3

    reconnects = rig.broker.reconnects
    await paper_tws.restart(downtime=0.3)
    await _wait(lambda: rig.broker.reconnects > reconnects and rig.broker.is_ready, what="ready")
    await _wait(lambda: set(rig.broker.quotes()) == held, what="the held lines' first ticks")
    assert rig.held() == held and (await rig.sim_lines())["in_use"] == 3

    # 1101 (data lost): every held line is cancelled and requested again, none added
    before = dict(rig.broker._tickers)
    await paper_tws.inject(1101)
    await _wait(lambda: rig.broker.is_ready and all(
        rig.broker._tickers.get(c) not in (None, before[c]) for c in held), what="renewed lines")
    await _wait(lambda: set(rig.broker.quotes()) == held, what="the renewed lines' ticks")
    for _ in range(100):
        if (await rig.sim_lines())["in_use"] == 3 and rig.held() == held:
            break
        await asyncio.sleep(0.05)
    assert rig.held() == held and await rig.sim_lines() == {"limit": 5, "in_use": 3,
                                                           "refusals": 0}
    d = await rig.decide(universe[0], quantity=100_000, **bracket_around(100.0))
    assert D.QUOTE_UNAVAILABLE not in [r.code for r in d.reasons], d.reasons
    assert ids[0] in rig.held() and len(rig.held()) == 3


def straddle(paper_tws) -> tuple[list[dict[str, Any]], list[int]]:
    opts = paper_tws.universe.find(symbol="AAPL", sec_type="OPT")
    expiry = sorted({c.expiry for c in opts})[1]
    by_key = {(c.strike, c.right): c.con_id for c in opts if c.expiry == expiry}
    legs = [dict(sec_type="OPT", expiry=expiry, strike=230.0, right=r, action="BUY", ratio=1)
            for r in ("C", "P")]
    return legs, [by_key[(230.0, "C")], by_key[(230.0, "P")]]


async def test_a_resting_combos_legs_are_all_pinned(paper_tws, make_rig):
    rig = await make_rig(3, 5)
    legs, leg_ids = straddle(paper_tws)
    await paper_tws.set_price(con_id=leg_ids[0], price=10.0)
    await paper_tws.set_price(con_id=leg_ids[1], price=8.0)
    d = await rig.decide(dict(symbol="AAPL", sec_type="BAG", legs=legs), order_type="LMT",
                         limit_price=16.0, take_profit=20.0, stop_loss=15.0)   # rests below 18
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert set(leg_ids) <= rig.held()
    for sym in STOCKS[1:]:     # one line left for all of them: the legs' are never given up
        r = await rig.decide(dict(symbol=sym), quantity=100_000, **bracket_around(100.0))
        assert D.QUOTE_UNAVAILABLE not in [x.code for x in r.reasons], r.reasons
        assert set(leg_ids) <= rig.held() and len(rig.held()) == 3
    assert rig.broker.lines.evictions >= 4


async def test_a_combos_legs_are_never_given_up_for_each_other(paper_tws, make_rig):
    # two lines, one pinned by a resting bracket: the straddle's first leg takes the free line;
    # the second leg must not take it from the first (both would then be short of a quote)
    rig = await make_rig(2, 5)
    await paper_tws.set_price("MSFT", 410.00)
    d = await rig.decide(dict(symbol="MSFT"), order_type="LMT", limit_price=380.0,
                         take_profit=399.0, stop_loss=372.4)
    assert d.verdict is Verdict.APPROVED, d.reasons
    legs, leg_ids = straddle(paper_tws)
    d = await rig.decide(dict(symbol="AAPL", sec_type="BAG", legs=legs), order_type="LMT",
                         limit_price=16.0, take_profit=20.0, stop_loss=15.0)
    [r] = [r for r in d.reasons if r.code is D.QUOTE_UNAVAILABLE]
    assert r.field == "market_data_lines" and "line budget is full" in r.message
    assert leg_ids[0] in rig.held() and leg_ids[1] not in rig.held()
    assert len(rig.held()) == 2


async def test_a_snapshot_quote_of_a_line_given_up_is_never_priced_on(paper_tws, make_rig):
    # the governor's snapshot still shows TSLA's quote, but its line is gone (given up by a path
    # other than this proposal's) and none is to be had: QUOTE_UNAVAILABLE, not the old price
    rig = await make_rig(2, 5)
    d = await rig.decide(dict(symbol="TSLA"), quantity=100_000, **bracket_around(250.0))
    assert D.MAX_ORDER_QUANTITY in [r.code for r in d.reasons]
    tsla = await rig.con_id(dict(symbol="TSLA"))
    snap = rig.governor.snapshot
    assert snap is not None and tsla in snap.quotes
    rig.broker.lines.release(tsla)
    rig.broker._drop_lines([tsla])            # no await: the bus has not moved a new snapshot
    rig.broker.pin_quotes(lambda: {1, 2})
    rig.broker.lines.claim(1)
    rig.broker.lines.claim(2)                 # two lines pinned elsewhere (stand-ins)
    assert tsla in rig.governor.snapshot.quotes   # type: ignore[union-attr]
    d = await rig.decide(dict(symbol="TSLA"), quantity=100_000, **bracket_around(250.0))
    [r] = [r for r in d.reasons if r.code is D.QUOTE_UNAVAILABLE]
    assert r.field == "market_data_lines"
    assert tsla not in rig.governor.snapshot.quotes   # type: ignore[union-attr]
