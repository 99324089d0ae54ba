"""The IB adapter, ExecutionAgent and PortfolioMonitor against the paper TWS over a real socket.

No governor here: brackets are handed to the ExecutionAgent as the governor would after
approving them. Prices move through the paper TWS's control port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from bracketgate.adapters.ib import IBBroker
from bracketgate.agents.execution import ExecutionAgent
from bracketgate.agents.portfolio import PortfolioMonitor
from bracketgate.bus.bus import Bus
from bracketgate.bus.errors import BrokerConnectError
from bracketgate.bus.messages import (
    Alert,
    ApprovedBracket,
    BracketOrderIds,
    ConnectionState,
    Fill,
    Leg,
    OrderEvent,
    PortfolioSnapshot,
    TradeProposal,
)

pytestmark = pytest.mark.ib


class Collector:
    """Everything of some types that crosses the bus, with a wait-for-condition helper."""

    def __init__(self, bus: Bus, *types: type) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()
        for t in types:
            bus.subscribe(t, self._add, name=f"test.collect.{t.__name__}")

    async def _add(self, msg: Any) -> None:
        self.items.append(msg)
        self._changed.set()

    async def wait_for(self, pred: Callable[[list[Any]], Any], timeout: float = 5.0) -> Any:
        async def loop() -> Any:
            while True:
                got = pred(self.items)
                if got:
                    return got
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(loop(), timeout)


def proposal(pid: str, **kw: Any) -> TradeProposal:
    base = dict(proposal_id=pid, agent_id="alpha", symbol="AAPL", side="BUY", quantity=10,
                order_type="LMT", limit_price=229.0, take_profit=235.0, stop_loss=226.0)
    base.update(kw)
    return TradeProposal.model_validate(base)


class Runtime:
    def __init__(self, bus: Bus, broker: IBBroker, execution: ExecutionAgent,
                 monitor: PortfolioMonitor, seen: Collector) -> None:
        self.bus, self.broker, self.execution, self.monitor, self.seen = bus, broker, execution, monitor, seen

    async def place(self, p: TradeProposal):
        contract = await self.broker.resolve_contract(p)
        return await self.execution.place(ApprovedBracket(
            proposal=p, contract=contract, approved_at=datetime.now(timezone.utc)))


@pytest.fixture
async def runtime(paper_tws) -> AsyncIterator[Runtime]:
    bus = Bus()
    await bus.start()
    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=7, publish=bus.publish,
                      heartbeat_s=0.2)
    monitor = PortfolioMonitor(bus, broker, heartbeat_s=0.2)
    monitor.attach()
    execution = ExecutionAgent(bus, broker, guard_grace_s=0.2)
    execution.attach()
    broker.add_reconcile_hook(execution.reconcile)
    seen = Collector(bus, OrderEvent, Fill, PortfolioSnapshot, Alert)
    await broker.start()
    await monitor.start()
    try:
        yield Runtime(bus, broker, execution, monitor, seen)
    finally:
        await monitor.stop()
        await broker.close()
        await bus.close()


async def test_connect_refused_is_a_clear_error(unused_port):
    async def publish(_: Any) -> None:
        return None

    broker = IBBroker(host="127.0.0.1", port=unused_port, client_id=1, publish=publish,
                      connect_timeout=2.0)
    with pytest.raises(BrokerConnectError) as e:
        await broker.start()
    assert e.value.code == 502
    assert "nothing is listening" in e.value.message
    await broker.close()


async def test_client_id_in_use_is_326(paper_tws, runtime):
    async def publish(_: Any) -> None:
        return None

    second = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=7, publish=publish,
                      connect_timeout=3.0, reconnect=False)
    with pytest.raises(BrokerConnectError) as e:
        await second.start()
    assert e.value.code == 326
    assert "already in use" in e.value.message
    await second.close()


async def test_snapshot_ready_with_account_and_pnl(runtime):
    snap = await runtime.seen.wait_for(lambda xs: next(
        (x for x in reversed(xs) if isinstance(x, PortfolioSnapshot) and x.reconciled and x.pnl.known), None))
    assert snap.connection is ConnectionState.READY
    assert snap.account and snap.account.startswith("D")
    for tag in ("NetLiquidation", "AvailableFunds", "BuyingPower", "ExcessLiquidity", "InitMarginReq"):
        assert tag in snap.account_values, tag
    assert snap.account_values["NetLiquidation"] > 0
    assert snap.data_age(datetime.now(timezone.utc)) < 5


async def test_bracket_take_profit_path(paper_tws, runtime):
    res = await runtime.place(proposal("tp-1"))
    assert res.ok, res
    ids = res.order_ids
    st = await paper_tws.state()
    legs = [o for o in st["orders"] if o.get("orderRef") == "tp-1"]
    assert len(legs) == 3
    assert {o["orderId"] for o in legs} == {ids.entry, ids.take_profit, ids.stop_loss}

    await paper_tws.set_price("AAPL", 228.5)          # entry fills
    await runtime.seen.wait_for(lambda xs: any(
        isinstance(x, Fill) and x.leg is Leg.ENTRY and x.proposal_id == "tp-1" for x in xs))
    snap = await runtime.seen.wait_for(lambda xs: next(
        (x for x in reversed(xs) if isinstance(x, PortfolioSnapshot) and x.position("AAPL") == 10), None))
    assert any(p.symbol == "AAPL" for p in snap.positions)

    await paper_tws.set_price("AAPL", 235.5)          # take-profit fills, stop cancelled
    await runtime.seen.wait_for(lambda xs: any(
        isinstance(x, OrderEvent) and x.leg is Leg.STOP_LOSS and x.status == "Cancelled" for x in xs))
    fills = [x for x in runtime.seen.items if isinstance(x, Fill) and x.proposal_id == "tp-1"]
    assert {f.leg for f in fills} == {Leg.ENTRY, Leg.TAKE_PROFIT}
    assert all(f.agent_id == "alpha" for f in fills)
    tp = next(f for f in fills if f.leg is Leg.TAKE_PROFIT)
    assert tp.price == pytest.approx(235.0)
    assert tp.commission is not None and tp.commission > 0
    assert tp.realized_pnl is not None and tp.realized_pnl > 0


async def test_bracket_stop_path_and_expiry_cancel(paper_tws, runtime):
    res = await runtime.place(proposal("sl-1", quantity=5))
    assert res.ok
    await paper_tws.set_price("AAPL", 228.0)
    await paper_tws.set_price("AAPL", 225.0)          # stop triggers, take-profit cancelled
    await runtime.seen.wait_for(lambda xs: any(
        isinstance(x, OrderEvent) and x.proposal_id == "sl-1" and x.leg is Leg.TAKE_PROFIT
        and x.status == "Cancelled" for x in xs))
    stop_fill = await runtime.seen.wait_for(lambda xs: next(
        (x for x in xs if isinstance(x, Fill) and x.proposal_id == "sl-1" and x.leg is Leg.STOP_LOSS), None))
    assert stop_fill.quantity == 5

    # an unfilled entry is cancelled when the proposal's expiry passes (children with it)
    res = await runtime.place(proposal("exp-1", limit_price=200.0, take_profit=210.0, stop_loss=195.0,
                                       cancel_entry_after_s=0.3))
    assert res.ok
    await runtime.seen.wait_for(lambda xs: {
        x.leg for x in xs if isinstance(x, OrderEvent) and x.proposal_id == "exp-1" and x.status == "Cancelled"
    } == set(Leg), timeout=5)


async def test_rejected_bracket_reports_ib_code(runtime):
    res = await runtime.place(proposal("tick-1", limit_price=229.003))   # off tick: 110
    assert not res.ok
    assert res.code == 110


async def test_same_proposal_twice_places_once(paper_tws, runtime):
    a = await runtime.place(proposal("dup-1", limit_price=200.0, take_profit=210.0, stop_loss=195.0))
    b = await runtime.place(proposal("dup-1", limit_price=200.0, take_profit=210.0, stop_loss=195.0))
    assert a.ok and b.ok and a.order_ids == b.order_ids
    st = await paper_tws.state()
    assert len([o for o in st["orders"] if o.get("orderRef") == "dup-1"]) == 3


async def test_reconnect_after_gateway_restart(paper_tws, runtime):
    await paper_tws.restart(downtime=0.3)
    await runtime.seen.wait_for(lambda xs: any(
        isinstance(x, PortfolioSnapshot) and x.connection is ConnectionState.DISCONNECTED for x in xs))
    assert await runtime.broker.wait_ready(10.0)
    snap = await runtime.monitor.publish_now()
    assert snap.reconciled and snap.pnl.known


async def test_1100_goes_fail_closed_until_1102(paper_tws, runtime):
    await paper_tws.inject(1100)
    await runtime.seen.wait_for(lambda xs: any(
        isinstance(x, PortfolioSnapshot) and x.connection is ConnectionState.CONNECTIVITY_LOST
        and not x.reconciled for x in xs))
    await paper_tws.inject(1102)
    assert await runtime.broker.wait_ready(5.0)


async def test_unprotected_fill_gets_a_protective_stop(paper_tws, runtime):
    res = await runtime.place(proposal("guard-1", quantity=4))
    ids = res.order_ids
    await paper_tws.set_price("AAPL", 228.5)                    # entry fills, stop working
    await runtime.seen.wait_for(lambda xs: any(
        isinstance(x, Fill) and x.proposal_id == "guard-1" and x.leg is Leg.ENTRY for x in xs))
    assert await runtime.broker.cancel_order(ids.stop_loss)     # the stop is lost at IB
    alert = await runtime.seen.wait_for(lambda xs: next(
        (x for x in xs if isinstance(x, Alert) and x.code == "UNPROTECTED_FILL"), None))
    assert alert.proposal_id == "guard-1" and alert.agent_id == "alpha"
    st = await paper_tws.state()

    def guards(state):
        return [o for o in state["orders"] if o.get("orderRef") == "guard-1" and o["orderType"] == "STP"
                and o["orderId"] != ids.stop_loss]
    async def guard_working():
        while True:
            g = guards(await paper_tws.state())
            if g and g[0]["status"] in ("Submitted", "PreSubmitted"):
                return g[0]
            await asyncio.sleep(0.05)  # polling the paper TWS over HTTP
    g = await asyncio.wait_for(guard_working(), 5)
    assert g["action"] == "SELL" and g["totalQuantity"] == 4 and g["auxPrice"] == 226.0
    # the take-profit still works; when it fills the guard is cancelled (software OCA)
    await paper_tws.set_price("AAPL", 235.5)
    async def guard_cancelled():
        while True:
            g = guards(await paper_tws.state())
            if g[0]["status"] == "Cancelled":
                return
            await asyncio.sleep(0.05)
    await asyncio.wait_for(guard_cancelled(), 5)
    st = await paper_tws.state()
    assert not [p for p in st["positions"] if p["symbol"] == "AAPL" and p["position"] != 0]


async def start_runtime(paper_tws: Any, journal: Any) -> tuple[Bus, IBBroker, ExecutionAgent, Collector]:
    """A run of the daemon's IB side on `journal`, as run.py wires it (a restart: call again)."""
    bus = Bus()
    await bus.start()
    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=9, publish=bus.publish)
    ex = ExecutionAgent(bus, broker, journal=journal)
    ex.attach()
    await ex.load_journal()
    broker.note_order_ids(ex.max_order_id_in_journal())
    broker.add_reconcile_hook(ex.reconcile)
    seen = Collector(bus, OrderEvent, Fill, Alert)
    await broker.start()
    return bus, broker, ex, seen


async def test_restart_adopts_brackets_and_recovers_missed_fills(paper_tws, tmp_path):
    from bracketgate.adapters.journal import Journal

    journal = await Journal.open(tmp_path / "j.sqlite")
    bus, broker, ex, seen = await start_runtime(paper_tws, journal)
    p = proposal("adopt-1", quantity=3)
    res = await ex.place(ApprovedBracket(proposal=p, contract=await broker.resolve_contract(p),
                                         approved_at=datetime.now(timezone.utc)))
    assert res.ok
    ids = res.order_ids
    await broker.close()                                        # the daemon goes away
    await bus.close()
    await paper_tws.set_price("AAPL", 228.0)                    # the entry fills meanwhile

    bus, broker, ex, seen = await start_runtime(paper_tws, journal)   # a new run, same journal
    try:
        fill = await seen.wait_for(lambda xs: next(
            (x for x in xs if isinstance(x, Fill) and x.proposal_id == "adopt-1"), None))
        assert fill.leg is Leg.ENTRY and fill.agent_id == "alpha" and fill.quantity == 3
        ev = await seen.wait_for(lambda xs: next(
            (x for x in xs if isinstance(x, OrderEvent) and x.leg is Leg.ENTRY and x.status == "Filled"), None))
        assert ev.order_id == ids.entry
        # the same proposal again: adopted ids back, no second bracket at IB
        again = await ex.place(ApprovedBracket(proposal=p, contract=None, approved_at=datetime.now(timezone.utc)))
        assert again.ok and again.order_ids == ids
        st = await paper_tws.state()
        assert len([o for o in st["orders"] if o.get("orderRef") == "adopt-1"]) == 3
        # new ids never reuse old ones
        fresh = broker.allocate_bracket_ids()
        assert fresh.entry > ids.stop_loss
    finally:
        await broker.close()
        await bus.close()
        await journal.close()


async def test_an_adopted_entry_is_still_cancelled_when_its_expiry_comes(paper_tws, tmp_path):
    """cancel_entry_after_s outlives a restart: the entry (resting far below the market) of a
    bracket adopted on the journal is cancelled when its time comes, not left working at IB
    (before: only the run that placed it kept the timer). A second bracket whose time passed
    while the daemon was away is cancelled at once."""
    from bracketgate.adapters.journal import Journal

    journal = await Journal.open(tmp_path / "j.sqlite")
    bus, broker, ex, seen = await start_runtime(paper_tws, journal)
    ids = {}
    for pid, after in (("exp-late", 4.0), ("exp-gone", 0.6)):
        p = proposal(pid, limit_price=150.0, stop_loss=140.0, cancel_entry_after_s=after)
        res = await ex.place(ApprovedBracket(proposal=p, contract=await broker.resolve_contract(p),
                                             approved_at=datetime.now(timezone.utc)))
        assert res.ok
        ids[pid] = res.order_ids
    await broker.close()                  # the daemon goes away before either expiry
    await bus.close()
    await asyncio.sleep(1.0)              # exp-gone's time passes while it is away

    def entry(st: dict[str, Any], pid: str) -> dict[str, Any]:
        return next(o for o in st["orders"] if o["orderId"] == ids[pid].entry)

    bus, broker, ex, seen = await start_runtime(paper_tws, journal)
    t0 = asyncio.get_running_loop().time()
    try:
        async def cancelled(pid: str) -> float:
            while entry(await paper_tws.state(), pid)["status"] not in ("Cancelled", "ApiCancelled"):
                await asyncio.sleep(0.05)   # polling the paper TWS over HTTP
            return asyncio.get_running_loop().time() - t0
        assert await asyncio.wait_for(cancelled("exp-gone"), 5) < 2.0
        assert entry(await paper_tws.state(), "exp-late")["status"] in ("Submitted", "PreSubmitted")
        waited = await asyncio.wait_for(cancelled("exp-late"), 8)
        assert 0.5 < waited < 5.0, waited     # from its approval, not from the restart
        kids = [o for o in (await paper_tws.state())["orders"] if o.get("orderRef") == "exp-late"]
        assert all(o["status"] in ("Cancelled", "ApiCancelled") for o in kids), kids
    finally:
        await broker.close()
        await bus.close()
        await journal.close()


async def test_intent_that_never_reached_ib_is_reported(paper_tws, tmp_path):
    from bracketgate.adapters.journal import Journal

    journal = await Journal.open(tmp_path / "j.sqlite")
    p = proposal("lost-1")
    await journal.record_intent(ApprovedBracket(proposal=p, approved_at=datetime.now(timezone.utc)),
                                BracketOrderIds(entry=900, take_profit=901, stop_loss=902))
    bus = Bus()
    await bus.start()
    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=11, publish=bus.publish)
    ex = ExecutionAgent(bus, broker, journal=journal)
    ex.attach()
    seen = Collector(bus, OrderEvent, Alert)
    await ex.load_journal()
    broker.note_order_ids(ex.max_order_id_in_journal())
    broker.add_reconcile_hook(ex.reconcile)
    try:
        await broker.start()
        alert = await seen.wait_for(lambda xs: next(
            (x for x in xs if isinstance(x, Alert) and x.code == "INTENT_NOT_AT_IB"), None))
        assert alert.proposal_id == "lost-1"
        evs = await seen.wait_for(lambda xs: [x for x in xs if isinstance(x, OrderEvent)
                                              and x.proposal_id == "lost-1"] if len(
            [x for x in xs if isinstance(x, OrderEvent)]) >= 3 else None)
        assert {e.status for e in evs} == {"Inactive"}
        [rec] = await journal.intents()
        assert rec.state == "failed"
        # ids recorded by the lost intent are never handed out again
        assert broker.allocate_bracket_ids().entry > 902
        # and the proposal is never placed by this run either
        again = await ex.place(ApprovedBracket(proposal=p, approved_at=datetime.now(timezone.utc)))
        assert not again.ok
        st = await paper_tws.state()
        assert not [o for o in st["orders"] if o.get("orderRef") == "lost-1"]
    finally:
        await broker.close()
        await bus.close()
        await journal.close()


async def test_next_valid_id_regression_is_alerted(paper_tws):
    bus = Bus()
    await bus.start()
    seen = Collector(bus, Alert)
    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=12, publish=bus.publish)
    broker.note_order_ids(50_000)          # an earlier run used ids up to 50000
    try:
        await broker.start()
        alert = await seen.wait_for(lambda xs: next((x for x in xs if x.code == "NEXT_VALID_ID_REGRESSED"), None))
        assert "50000" in alert.message
        assert broker.allocate_bracket_ids().entry > 50_000   # request ids share the sequence
    finally:
        await broker.close()
        await bus.close()


async def test_partly_refused_bracket_keeps_no_live_order(paper_tws, runtime):
    """IB refuses only the take-profit (off tick): entry and stop must not stay working."""
    res = await runtime.place(proposal("part-1", take_profit=235.003))
    assert not res.ok and res.code == 110

    async def none_live():
        while True:
            st = await paper_tws.state()
            legs = [o for o in st["orders"] if o.get("orderRef") == "part-1"]
            if legs and all(o["status"] in ("Cancelled", "ApiCancelled", "Inactive") for o in legs):
                return legs
            await asyncio.sleep(0.05)  # polling the paper TWS over HTTP
    legs = await asyncio.wait_for(none_live(), 5)
    assert {o["orderId"] for o in legs} >= {res.order_ids.entry}


def _on_tick(x: float, tick: float) -> float:
    return round(round(x / tick) * tick, 10)


@pytest.mark.parametrize("kind", ["FUT", "OPT"])
async def test_futures_front_month_and_option_brackets(paper_tws, runtime, kind):
    if kind == "FUT":
        probe = proposal(f"{kind}-probe", symbol="ES", sec_type="FUT", exchange="CME", expiry="front",
                         quantity=1, limit_price=100.0, take_profit=101.0, stop_loss=99.0)
    else:
        expiry = sorted({c.expiry for c in paper_tws.universe.find(symbol="AAPL", sec_type="OPT")})[0]
        probe = proposal(f"{kind}-probe", symbol="AAPL", sec_type="OPT", expiry=expiry, strike=230.0,
                         right="C", quantity=1, limit_price=1.0, take_profit=2.0, stop_loss=0.5)
    contract = await runtime.broker.resolve_contract(probe)
    assert contract is not None and contract.sec_type.value == kind
    if kind == "FUT":
        assert contract.multiplier == 50 and contract.min_tick == 0.25
        fronts = sorted(c.expiry for c in paper_tws.universe.find(symbol="ES", sec_type="FUT"))
        assert contract.expiry == fronts[0]                       # the front month
    else:
        assert contract.multiplier == 100
    quote = await runtime.broker.ensure_quote(contract)
    assert quote is not None and quote.last
    t = contract.min_tick
    entry = _on_tick(quote.last * 0.99, t)
    p = probe.model_copy(update={"proposal_id": f"{kind}-1", "limit_price": entry,
                                 "take_profit": _on_tick(entry * 1.05, t),
                                 "stop_loss": _on_tick(entry * 0.95, t)})
    res = await runtime.place(p)
    assert res.ok, res
    await paper_tws.set_price(con_id=contract.con_id, price=entry - t)     # the entry fills
    f = await runtime.seen.wait_for(lambda xs: next(
        (x for x in xs if isinstance(x, Fill) and x.proposal_id == f"{kind}-1"), None))
    assert f.leg is Leg.ENTRY and f.quantity == 1
    snap = await runtime.seen.wait_for(lambda xs: next(
        (x for x in reversed(xs) if isinstance(x, PortfolioSnapshot)
         and any(q.con_id == contract.con_id and q.quantity == 1 for q in x.positions)), None))
    pos = next(q for q in snap.positions if q.con_id == contract.con_id)
    assert pos.multiplier == contract.multiplier
