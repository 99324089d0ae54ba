"""The RiskGovernor: fail-closed gates, trading state, idempotency, reservations, margin,
limits reload, logging, and the thin bus wiring (over the real in-process Bus)."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bracketgate.agents.risk import PLACE_SERVICE, RiskGovernor
from bracketgate.bus.bus import Bus
from bracketgate.bus.errors import ConfigError
from bracketgate.bus.messages import (
    DENIAL_MESSAGES,
    ApprovedBracket,
    BracketOrderIds,
    ConnectionState,
    ControlCommand,
    DenialCode,
    Leg,
    PlacementResult,
    PnL,
    RiskDecision,
    Side,
    TradingState,
    TradingStateChanged,
    Verdict,
    WorkingOrder,
)
from bracketgate.core.clock import ManualClock
from tests.unit.riskkit import (
    contract_id,
    fill,
    governor,
    open_limits,
    order_event,
    position,
    proposal,
    quote,
    snapshot,
)

D = DenialCode
AAPL = contract_id("AAPL")


def codes(d: RiskDecision) -> list[DenialCode]:
    return [r.code for r in d.reasons]


# ====================================================================== contracts


def test_every_denial_code_has_a_message_and_no_message_is_orphaned() -> None:
    assert set(DENIAL_MESSAGES) == set(DenialCode)
    assert all(isinstance(m, str) and m.strip() for m in DENIAL_MESSAGES.values())


def test_decision_shape() -> None:
    gov, clock = governor()
    d = gov.evaluate(proposal(), snapshot(clock))
    assert d.verdict is Verdict.APPROVED and d.reasons == [] and d.ts == clock.now()
    assert d.trading_state is TradingState.ACTIVE
    # built without validation on the hot path, so prove it round-trips through validation
    assert RiskDecision.model_validate_json(d.model_dump_json()) == d
    # an approval carries the worst case it was admitted with (a single leg: the stop's bound)
    res = gov.ledger.get(d.proposal_id)
    assert res is not None and d.worst_case is not None and d.worst_case.bound == "stop"
    assert d.worst_case.loss == pytest.approx(res.worst_case_loss, abs=0.005)
    # a rejection carries none
    r = gov.evaluate(proposal("p-bad", sl=500.0), snapshot(clock))
    assert r.verdict is Verdict.REJECTED and r.worst_case is None


# ====================================================================== fail closed


def _stale(clock: ManualClock) -> Any:
    s = snapshot(clock)
    clock.advance(10.001)
    return s


@pytest.mark.parametrize("make,code", [
    (lambda c: None, D.BROKER_DISCONNECTED),
    (lambda c: snapshot(c, connection=ConnectionState.DISCONNECTED), D.BROKER_DISCONNECTED),
    (lambda c: snapshot(c, connection=ConnectionState.CONNECTING), D.BROKER_DISCONNECTED),
    (lambda c: snapshot(c, connection=ConnectionState.CONNECTIVITY_LOST), D.BROKER_CONNECTIVITY_LOST),
    (lambda c: snapshot(c, connection=ConnectionState.CONNECTED), D.NOT_RECONCILED),
    (lambda c: snapshot(c, reconciled=False), D.NOT_RECONCILED),
    (_stale, D.SNAPSHOT_STALE),
    (lambda c: snapshot(c).model_copy(update={"pnl_ts": None}), D.SNAPSHOT_STALE),
    (lambda c: snapshot(c, daily=None), D.PNL_UNKNOWN),
    (lambda c: snapshot(c).model_copy(update={"pnl": PnL(daily=math.nan)}), D.PNL_UNKNOWN),
    (lambda c: snapshot(c, nlv=None), D.ACCOUNT_VALUES_UNKNOWN),
    (lambda c: snapshot(c, nlv=math.nan), D.ACCOUNT_VALUES_UNKNOWN),
    (lambda c: snapshot(c, nlv=0.0), D.ACCOUNT_VALUES_UNKNOWN),
    (lambda c: snapshot(c, funds=None), D.ACCOUNT_VALUES_UNKNOWN),
    (lambda c: snapshot(c, funds=math.inf), D.ACCOUNT_VALUES_UNKNOWN),
])
def test_fail_closed_short_circuits_with_one_typed_reason(make: Any, code: DenialCode) -> None:
    # limits that would also deny on size: fail-closed reasons must stand alone
    gov, clock = governor(open_limits(max_order_quantity=1))
    d = gov.evaluate(proposal(qty=5), make(clock))
    assert codes(d) == [code]
    assert len(gov.ledger) == 0
    assert d.reasons[0].message.startswith(DENIAL_MESSAGES[code])
    RiskDecision.model_validate_json(d.model_dump_json())   # inf/nan values serialise


def test_snapshot_exactly_at_max_age_is_fresh() -> None:
    gov, clock = governor()
    snap = snapshot(clock)
    clock.advance(10.0)
    assert gov.evaluate(proposal(), snap).verdict is Verdict.APPROVED


@pytest.mark.parametrize("quotes,code", [
    ({}, D.QUOTE_UNAVAILABLE),
    ({"AAPL": dict(bid=None, ask=None, last=None)}, D.QUOTE_UNAVAILABLE),
    ({"AAPL": dict(ts_back=15.001)}, D.QUOTE_UNAVAILABLE),
    ({"AAPL": dict(ts_back=15.0)}, None),
    ({"AAPL": dict(bid=None, ask=None, last=100.0)}, None),
])
def test_market_entry_needs_a_usable_quote(quotes: dict[str, dict[str, Any]],
                                           code: DenialCode | None) -> None:
    gov, clock = governor()
    clock.advance(20)
    qs = []
    for sym, q in quotes.items():
        back = q.pop("ts_back", 0.0)
        qs.append(quote(clock, sym, ts=clock.now() - timedelta(seconds=back), **q))
    d = gov.evaluate(proposal(limit=None, tp=102.0, sl=99.0), snapshot(clock, quotes=qs))
    assert codes(d) == ([code] if code else [])


@pytest.mark.parametrize("side,expect_entry", [("BUY", 100.05), ("SELL", 99.95)])
def test_market_entry_prices_buy_at_ask_sell_at_bid(side: str, expect_entry: float) -> None:
    gov, clock = governor(open_limits(slippage_ticks=0.0))
    snap = snapshot(clock, quotes=[quote(clock, bid=99.95, ask=100.05, last=100.0)])
    s = 1 if side == "BUY" else -1
    p = proposal(side=side, limit=None, tp=100.0 + 3 * s, sl=100.0 - 1 * s)
    with capture_logs() as logs:
        assert gov.evaluate(p, snap).verdict is Verdict.APPROVED
    res = gov.ledger.get("p1")
    assert res is not None and res.entry_price == expect_entry
    assert [e for e in logs if e["event"] == "risk_decision"][0]["worst_case_loss"] == \
        pytest.approx(10 * abs(expect_entry - (100.0 - s)), abs=0.01)


# ====================================================================== trading state


def test_halted_rejects_everything_and_resume_lifts_it() -> None:
    gov, clock = governor()
    snap = snapshot(clock, positions=[position("AAPL", 10)])
    ev = gov.on_control(ControlCommand(action="halt", reason="test", by="alice"))
    assert isinstance(ev, TradingStateChanged)
    assert (ev.old, ev.new, ev.by) == (TradingState.ACTIVE, TradingState.HALTED, "operator")
    assert "alice" in ev.reason
    assert codes(gov.evaluate(proposal("a", side="SELL"), snap)) == [D.TRADING_HALTED]
    assert gov.on_control(ControlCommand(action="halt")) is None   # no change, no event
    ev = gov.on_control(ControlCommand(action="resume"))
    assert ev is not None and ev.new is TradingState.ACTIVE
    assert gov.evaluate(proposal("b"), snap).verdict is Verdict.APPROVED


def test_reducing_via_control() -> None:
    gov, clock = governor()
    snap = snapshot(clock, positions=[position("AAPL", 10)])
    gov.on_control(ControlCommand(action="reduce"))
    assert codes(gov.evaluate(proposal("grow"), snap)) == [D.REDUCING_ONLY]
    assert gov.evaluate(proposal("shrink", side="SELL"), snap).verdict is Verdict.APPROVED
    d = gov.evaluate(proposal("shrink-more", side="SELL", qty=1), snap)   # 10 already pending
    assert codes(d) == [D.REDUCING_ONLY]


def test_auto_halt_at_the_daily_loss_limit_exactly() -> None:
    gov, clock = governor(open_limits(daily_loss_limit=1000.0))
    assert gov.on_snapshot(snapshot(clock, daily=-999.99)) == []
    assert gov.state is TradingState.ACTIVE
    events = gov.on_snapshot(snapshot(clock, daily=-1000.0))
    assert [(e.new, e.by) for e in events] == [(TradingState.HALTED, "auto")]
    # recovery does not lift it; nothing is re-announced
    assert gov.on_snapshot(snapshot(clock, daily=+500.0)) == []
    assert gov.state is TradingState.HALTED
    assert codes(gov.evaluate(proposal(), gov.snapshot)) == [D.TRADING_HALTED]


def test_daily_loss_rule_denies_even_before_the_auto_halt() -> None:
    """The budget check does not depend on on_snapshot having run."""
    gov, clock = governor(open_limits(daily_loss_limit=1000.0))
    d = gov.evaluate(proposal(), snapshot(clock, daily=-1000.0))
    assert codes(d) == [D.DAILY_LOSS_LIMIT]


def test_auto_reducing_on_drawdown_from_the_intraday_peak() -> None:
    gov, clock = governor(open_limits(max_drawdown_pct=3.0, daily_loss_limit=20_000.0))
    assert gov.on_snapshot(snapshot(clock, nlv=1_000_000.0)) == []
    assert gov.on_snapshot(snapshot(clock, nlv=1_100_000.0)) == []      # new peak
    assert gov.on_snapshot(snapshot(clock, nlv=1_067_001.0)) == []      # 2.9999 %
    events = gov.on_snapshot(snapshot(clock, nlv=1_067_000.0))          # 3 %
    assert [(e.old, e.new, e.by) for e in events] == [
        (TradingState.ACTIVE, TradingState.REDUCING, "auto")]
    # the loss limit tightens REDUCING to HALTED by itself
    events = gov.on_snapshot(snapshot(clock, nlv=1_067_000.0, daily=-20_000.0))
    assert [(e.old, e.new) for e in events] == [(TradingState.REDUCING, TradingState.HALTED)]


def test_auto_transitions_never_lift_an_operator_state() -> None:
    gov, clock = governor(open_limits(max_drawdown_pct=1.0))
    gov.on_snapshot(snapshot(clock, nlv=1_000_000.0))
    gov.on_control(ControlCommand(action="halt"))
    assert gov.on_snapshot(snapshot(clock, nlv=900_000.0)) == []   # drawdown: HALTED stays
    assert gov.state is TradingState.HALTED


def test_resume_rebases_the_drawdown_peak() -> None:
    gov, clock = governor(open_limits(max_drawdown_pct=3.0))
    gov.on_snapshot(snapshot(clock, nlv=1_000_000.0))
    gov.on_snapshot(snapshot(clock, nlv=960_000.0))
    assert gov.state is TradingState.REDUCING
    gov.on_control(ControlCommand(action="resume"))
    assert gov.on_snapshot(snapshot(clock, nlv=950_000.0)) == []    # 1 % from 960k
    assert gov.state is TradingState.ACTIVE


def test_day_roll_resets_agent_pnl_and_peak() -> None:
    gov, clock = governor(open_limits(agent={"loss_limit": 100.0}))
    gov.on_fill(fill(proposal("old"), clock, leg=Leg.STOP_LOSS, realized=-95.0))
    assert codes(gov.evaluate(proposal("p1"), snapshot(clock))) == [D.AGENT_LOSS_LIMIT]
    # 15:00 UTC = 10:00 New York; midnight New York is 05:00 UTC next day
    clock.set(datetime(2026, 11, 21, 5, 0, 1, tzinfo=timezone.utc))
    assert gov.evaluate(proposal("p2"), snapshot(clock)).verdict is Verdict.APPROVED


# ====================================================================== idempotency


def test_repeat_gets_the_same_decision_object_and_no_second_reservation() -> None:
    gov, clock = governor()
    snap = snapshot(clock)
    p = proposal()
    first = gov.evaluate(p, snap)
    clock.advance(1)
    assert gov.evaluate(p, snap) is first
    assert gov.evaluate(p.model_copy(), snap) is first
    assert len(gov.ledger) == 1


def test_same_id_other_content_is_a_duplicate_and_never_a_second_order() -> None:
    gov, clock = governor()
    snap = snapshot(clock)
    first = gov.evaluate(proposal(qty=10), snap)
    d = gov.evaluate(proposal(qty=11), snap)
    assert codes(d) == [D.DUPLICATE_PROPOSAL]
    assert len(gov.ledger) == 1
    assert gov.decision_for("p1") is first
    assert gov.evaluate(proposal(qty=10), snap) is first


def test_a_rejected_id_stays_rejected() -> None:
    gov, clock = governor()
    p = proposal()
    first = gov.evaluate(p, None)
    assert codes(first) == [D.BROKER_DISCONNECTED]
    assert gov.evaluate(p, snapshot(clock)) is first
    assert len(gov.ledger) == 0


def test_decision_memory_is_bounded_but_keeps_open_brackets() -> None:
    gov, clock = governor(open_limits(max_remembered_decisions=3))
    snap = snapshot(clock)
    open_one = gov.evaluate(proposal("open"), snap)
    for i in range(5):
        assert gov.evaluate(proposal(f"r{i}", sl=100.0), snap).verdict is Verdict.REJECTED
    gov.on_snapshot(snap)                                # memory is compacted off the hot path
    assert gov.decision_for("r0") is None                # oldest closed ones forgotten
    assert gov.decision_for("r4") is not None
    assert gov.decision_for("open") == open_one          # still open: never forgotten
    assert gov.evaluate(proposal("open"), snap) == open_one
    assert codes(gov.evaluate(proposal("open", qty=1), snap)) == [D.DUPLICATE_PROPOSAL]
    assert len(gov.ledger) == 1


def test_archived_decisions_answer_repeats_and_placement_updates() -> None:
    """Past the newest few thousand, decisions live as JSON text (no GC cost); same answers."""
    from bracketgate.agents.risk import DecisionMemory

    gov, clock = governor()
    snap = snapshot(clock)
    first = gov.evaluate(proposal("old"), snap)
    for i in range(DecisionMemory.RECENT):
        gov.evaluate(proposal(f"n{i}", sl=100.0), snap)
    gov.on_snapshot(snap)
    again = gov.evaluate(proposal("old"), snap)
    assert again == first and again is not first
    assert codes(gov.evaluate(proposal("old", qty=3), snap)) == [D.DUPLICATE_PROPOSAL]
    assert len(gov.ledger) == 1


# ====================================================================== reservations


def test_reservation_lifecycle_entry_fill_then_take_profit_closes() -> None:
    gov, clock = governor(open_limits(daily_loss_limit=15.0))
    snap = snapshot(clock)
    p = proposal(qty=10)                                   # worst case 10
    assert gov.evaluate(p, snap).verdict is Verdict.APPROVED
    assert codes(gov.evaluate(proposal("p2", qty=6), snap)) == [D.DAILY_LOSS_LIMIT]
    gov.on_fill(fill(p, clock, qty=4))
    res = gov.ledger.get("p1")
    assert res is not None and res.entry_filled == 4 and res.pending_units == 10
    clock.advance(1)
    gov.on_snapshot(snapshot(clock, positions=[position("AAPL", 4)]))   # shows the 4
    assert res.pending_units == 6
    gov.on_fill(fill(p, clock, qty=6))
    assert res.entry_done
    released = gov.on_fill(fill(p, clock, leg=Leg.TAKE_PROFIT, qty=10, price=102.0, realized=20.0))
    assert released is res and "p1" not in gov.ledger
    assert gov.evaluate(proposal("p3", qty=15), gov.snapshot).verdict is Verdict.APPROVED


def test_order_status_and_fills_do_not_double_count() -> None:
    gov, clock = governor()
    snap = snapshot(clock)
    p = proposal(qty=10)
    gov.evaluate(p, snap)
    gov.on_order_event(order_event(p, clock, "Filled", filled=10))
    gov.on_fill(fill(p, clock, qty=10))
    res = gov.ledger.get("p1")
    assert res is not None and res.entry_filled == 10 and res.entry_done


@pytest.mark.parametrize("events,closed", [
    ([("Cancelled", Leg.ENTRY, 0.0)], True),
    ([("Inactive", Leg.ENTRY, 0.0)], True),
    ([("Submitted", Leg.ENTRY, 0.0)], False),
    ([("Filled", Leg.ENTRY, 10.0), ("Filled", Leg.STOP_LOSS, 10.0)], True),
    ([("Filled", Leg.ENTRY, 10.0), ("Cancelled", Leg.TAKE_PROFIT, 0.0)], False),
    ([("Filled", Leg.ENTRY, 10.0), ("Cancelled", Leg.TAKE_PROFIT, 0.0),
      ("Cancelled", Leg.STOP_LOSS, 0.0)], True),
    ([("Submitted", Leg.ENTRY, 4.0), ("Cancelled", Leg.ENTRY, 4.0)], False),   # 4 held
])
def test_order_events_close_brackets(events: list[tuple[str, Leg, float]], closed: bool) -> None:
    gov, clock = governor()
    p = proposal(qty=10)
    gov.evaluate(p, snapshot(clock))
    for status, leg, filled in events:
        gov.on_order_event(order_event(p, clock, status, leg=leg, filled=filled))
    assert ("p1" not in gov.ledger) is closed


def test_release_frees_the_budget() -> None:
    gov, clock = governor(open_limits(max_open_brackets=1))
    snap = snapshot(clock)
    gov.evaluate(proposal("a"), snap)
    assert codes(gov.evaluate(proposal("b"), snap)) == [D.MAX_OPEN_BRACKETS]
    assert gov.release("a", "placement failed") is not None
    assert gov.release("a", "again") is None
    assert gov.evaluate(proposal("c"), snap).verdict is Verdict.APPROVED


def test_working_brackets_unknown_to_the_ledger_count() -> None:
    """After a restart IB still holds brackets we approved before: they count."""
    gov, clock = governor(open_limits(daily_loss_limit=100.0, max_open_brackets=2,
                                      max_position_units=25.0))
    working = [
        WorkingOrder(order_id=1, order_ref="old-1", symbol="AAPL", con_id=AAPL, side=Side.BUY, order_type="LMT",
                     quantity=20, remaining=20, limit_price=100.0, status="Submitted"),
        WorkingOrder(order_id=2, parent_id=1, order_ref="old-1", symbol="AAPL", con_id=AAPL, side=Side.SELL,
                     order_type="LMT", quantity=20, remaining=20, limit_price=104.0,
                     status="PreSubmitted"),
        WorkingOrder(order_id=3, parent_id=1, order_ref="old-1", symbol="AAPL", con_id=AAPL, side=Side.SELL,
                     order_type="STP", quantity=20, remaining=20, stop_price=96.0,
                     status="PreSubmitted"),
    ]
    snap = snapshot(clock, working=working)
    gov.on_snapshot(snap)
    summary = gov.summary()
    assert summary["open_brackets"] == 1 and summary["open_worst_case"] == 80.0
    d = gov.evaluate(proposal("new", qty=6), snap)        # loss fits: 6 <= 100 - 80
    assert codes(d) == [D.POSITION_LIMIT]             # 20 working + 6 > 25
    assert codes(gov.evaluate(proposal("n2", qty=5), snap)) == []
    assert codes(gov.evaluate(proposal("n3", symbol="MSFT", qty=1), snap)) == [D.MAX_OPEN_BRACKETS]


def test_fills_attribute_realized_pnl_once_per_execution() -> None:
    gov, clock = governor(open_limits(agent={"loss_limit": 100.0}))
    old = proposal("old")
    f = fill(old, clock, leg=Leg.STOP_LOSS, exec_id="e1")
    gov.on_fill(f)                                                       # commission not yet
    gov.on_fill(f.model_copy(update={"realized_pnl": -60.0}))            # it came later
    gov.on_fill(f.model_copy(update={"realized_pnl": -60.0}))            # re-delivered
    d = gov.evaluate(proposal(qty=41), snapshot(clock))
    assert codes(d) == [D.AGENT_LOSS_LIMIT] and d.reasons[0].limit == pytest.approx(40.0)
    assert gov.summary()["agent_realized"] == {"a1": -60.0}


# ====================================================================== margin


async def test_confirm_margin_ok_books_the_margin() -> None:
    gov, clock = governor()
    gov.on_snapshot(snapshot(clock, funds=10_000.0))
    d = gov.evaluate(proposal(), gov.snapshot)
    seen: list[ApprovedBracket] = []

    async def whatif(b: ApprovedBracket) -> dict[str, Any]:
        seen.append(b)
        return {"init_margin_change": 9_000.0}      # == 10k x (1 - 10 %)

    assert await gov.confirm_margin(d, whatif) is d
    assert seen[0].proposal.proposal_id == "p1" and seen[0].approved_at == d.ts
    res = gov.ledger.get("p1")
    assert res is not None and res.margin == 9_000.0


async def test_confirm_margin_insufficient_releases_and_replaces() -> None:
    gov, clock = governor()
    gov.on_snapshot(snapshot(clock, funds=10_000.0))
    p = proposal()
    d = gov.evaluate(p, gov.snapshot)

    async def whatif(b: ApprovedBracket) -> dict[str, Any]:
        return {"initMarginChange": "9000.01"}      # IB's OrderState spelling, as text

    new = await gov.confirm_margin(d, whatif)
    assert codes(new) == [D.INSUFFICIENT_MARGIN] and new.reasons[0].value == 9000.01
    assert "p1" not in gov.ledger
    assert gov.evaluate(p, gov.snapshot) is new      # the repeat gets the replacement


async def test_concurrent_whatifs_cannot_jointly_exceed_available_funds() -> None:
    gov, clock = governor()
    gov.on_snapshot(snapshot(clock, funds=10_000.0))
    a = gov.evaluate(proposal("a"), gov.snapshot)
    b = gov.evaluate(proposal("b"), gov.snapshot)

    async def whatif(br: ApprovedBracket) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"init_margin_change": 5_000.0}

    ra, rb = await asyncio.gather(gov.confirm_margin(a, whatif), gov.confirm_margin(b, whatif))
    assert ra is a and codes(rb) == [D.INSUFFICIENT_MARGIN]


@pytest.mark.parametrize("behaviour", ["raise", "timeout", "garbage"])
async def test_whatif_failure_is_typed(behaviour: str) -> None:
    gov, clock = governor(open_limits(whatif_timeout_s=0.01))
    gov.on_snapshot(snapshot(clock))
    d = gov.evaluate(proposal(), gov.snapshot)
    never = asyncio.Event()

    async def whatif(b: ApprovedBracket) -> dict[str, Any]:
        if behaviour == "raise":
            raise ConnectionError("socket closed")
        if behaviour == "timeout":
            await never.wait()
        return {"something": "else"}

    new = await gov.confirm_margin(d, whatif)
    assert codes(new) == [D.WHATIF_FAILED]
    assert "p1" not in gov.ledger


async def test_halt_during_whatif_wins() -> None:
    gov, clock = governor()
    gov.on_snapshot(snapshot(clock))
    d = gov.evaluate(proposal(), gov.snapshot)

    async def whatif(b: ApprovedBracket) -> dict[str, Any]:
        gov.on_control(ControlCommand(action="halt"))
        return {"init_margin_change": 1.0}

    assert codes(await gov.confirm_margin(d, whatif)) == [D.TRADING_HALTED]
    assert len(gov.ledger) == 0


# ====================================================================== reload, logs


def test_reload_limits_reports_changes_and_keeps_old_on_error(tmp_path: Path) -> None:
    gov, clock = governor()
    path = tmp_path / "limits.toml"
    path.write_text("max_order_quantity = 5\n[agent]\nmax_open_brackets = 2\n")
    changes = gov.reload_limits(path)
    assert "max_order_quantity: 10000000 -> 5" in changes
    assert codes(gov.evaluate(proposal(qty=6), snapshot(clock))) == [D.MAX_ORDER_QUANTITY]
    path.write_text("max_order_quantity = 5\nmax_order_qty = 7\n")
    with capture_logs() as logs, pytest.raises(ConfigError, match="max_order_qty"):
        gov.reload_limits(path)
    assert logs[-1]["event"] == "risk_limits_reload_failed"
    assert gov.limits.max_order_quantity == 5


def test_every_decision_is_logged_with_its_ids_verdict_and_codes() -> None:
    gov, clock = governor(open_limits(max_order_quantity=10))
    with capture_logs() as logs:
        gov.evaluate(proposal("ok", agent="bot"), snapshot(clock))
        gov.evaluate(proposal("no", agent="bot", qty=11), snapshot(clock))
    lines = [e for e in logs if e["event"] == "risk_decision"]
    assert [(e["proposal_id"], e["agent_id"], e["verdict"], e["codes"]) for e in lines] == [
        ("ok", "bot", "approved", []), ("no", "bot", "rejected", ["MAX_ORDER_QUANTITY"])]


# ====================================================================== wiring over the real Bus


class Harness:
    """A started Bus with the governor attached, a fake execution service and collectors."""

    def __init__(self, gov: RiskGovernor, clock: ManualClock) -> None:
        self.gov, self.clock = gov, clock
        self.bus = Bus(clock=clock)
        self.decisions: list[RiskDecision] = []
        self.states: list[TradingStateChanged] = []
        self.brackets: list[ApprovedBracket] = []
        self.place_ok = True
        self.next_id = 100

    async def start(self) -> Harness:
        async def on_decision(d: RiskDecision) -> None:
            self.decisions.append(d)

        async def on_state(e: TradingStateChanged) -> None:
            self.states.append(e)

        async def on_bracket(b: ApprovedBracket) -> None:
            self.brackets.append(b)

        async def place(b: ApprovedBracket) -> PlacementResult:
            await asyncio.sleep(0)
            if not self.place_ok:
                return PlacementResult(proposal_id=b.order_ref, ok=False, error="IB 201", code=201)
            self.next_id += 3
            i = self.next_id
            return PlacementResult(proposal_id=b.order_ref, ok=True,
                                   order_ids=BracketOrderIds(entry=i, take_profit=i + 1, stop_loss=i + 2))

        self.bus.subscribe(RiskDecision, on_decision, name="test")
        self.bus.subscribe(TradingStateChanged, on_state, name="test")
        self.bus.subscribe(ApprovedBracket, on_bracket, name="test")
        self.bus.serve(PLACE_SERVICE, place)
        self.gov.attach(self.bus)
        await self.bus.start()
        return self

    async def settle(self) -> None:
        await self.bus.drain(timeout=2)
        await self.gov.aclose()
        await self.bus.drain(timeout=2)

    async def close(self) -> None:
        await self.gov.aclose()
        await self.bus.close()


async def test_wiring_over_the_real_bus() -> None:
    gov, clock = governor(open_limits(max_order_quantity=10))
    h = await Harness(gov, clock).start()
    try:
        await h.bus.publish(snapshot(clock))
        await h.settle()           # topics have their own queues: no order across topics
        await h.bus.publish(proposal("good"))
        await h.bus.publish(proposal("big", qty=11))
        await h.bus.publish(proposal("good"))                  # re-delivery
        await h.settle()
        by_id: dict[str, list[RiskDecision]] = {}
        for d in h.decisions:
            by_id.setdefault(d.proposal_id, []).append(d)
        assert codes(by_id["big"][0]) == [D.MAX_ORDER_QUANTITY]
        assert [d.verdict for d in by_id["good"]] == [Verdict.APPROVED, Verdict.APPROVED]
        assert all(d.order_ids == BracketOrderIds(entry=103, take_profit=104, stop_loss=105)
                   for d in by_id["good"])                     # the repeat waited for the ids
        assert [b.order_ref for b in h.brackets] == ["good"]   # placed once
        assert gov.decision_for("good") == by_id["good"][0]

        h.place_ok = False
        await h.bus.publish(proposal("refused"))
        await h.bus.publish(ControlCommand(action="halt", reason="end of test"))
        await h.settle()
        refused = [d for d in h.decisions if d.proposal_id == "refused"]
        assert codes(refused[0]) == [D.PLACEMENT_FAILED] and refused[0].reasons[0].limit == 201
        assert "refused" not in gov.ledger and "good" in gov.ledger
        assert [(e.new, e.by) for e in h.states] == [(TradingState.HALTED, "operator")]
    finally:
        await h.close()


async def test_placement_without_a_service_is_a_typed_failure() -> None:
    gov, clock = governor()
    bus = Bus(clock=clock)
    gov.attach(bus)
    await bus.start()
    try:
        gov.on_snapshot(snapshot(clock))
        d = await gov.handle_proposal(proposal())
        assert codes(d) == [D.PLACEMENT_FAILED] and "execution.place" in str(d.reasons[0].value)
        assert len(gov.ledger) == 0
    finally:
        await bus.close()


async def test_200_concurrent_proposals_against_a_limit_that_admits_10() -> None:
    gov, clock = governor(open_limits(max_open_brackets=10))
    h = await Harness(gov, clock).start()
    try:
        gov.on_snapshot(snapshot(clock))
        results = await asyncio.gather(*(
            gov.handle_proposal(proposal(f"c{i}", agent=f"a{i % 7}")) for i in range(200)))
        approved = [d for d in results if d.verdict is Verdict.APPROVED]
        assert len(approved) == 10
        assert all(d.order_ids is not None for d in approved)
        assert all(codes(d) == [D.MAX_OPEN_BRACKETS] for d in results if d not in approved)
        assert len(gov.ledger) == 10
        await h.settle()
        assert len(h.brackets) == 10
    finally:
        await h.close()


async def test_200_proposals_through_the_bus_intake_queue() -> None:
    gov, clock = governor(open_limits(daily_loss_limit=100.0))    # worst case 10 each: 10 fit
    h = await Harness(gov, clock).start()
    try:
        await h.bus.publish(snapshot(clock))
        await h.settle()
        for i in range(200):
            assert h.bus.offer(proposal(f"q{i}", agent=f"a{i % 5}"))
        await h.settle()
        assert len(h.decisions) == 200
        assert sum(d.verdict is Verdict.APPROVED for d in h.decisions) == 10
        assert len(h.brackets) == 10
    finally:
        await h.close()


def test_order_message_budget_counts_the_whatif():
    """With IB what-if configured a bracket costs 4 order messages (what-if + 3 legs): at 8/s
    exactly two brackets fit in one second, not two and two thirds."""
    async def whatif(_b):
        return {"init_margin_change": 1.0}

    for configured, admitted in ((None, 2), (whatif, 2)):
        gov, clock = governor(open_limits(max_order_msgs_per_s=8.0))
        gov.attach(Bus(), whatif=configured)
        snap = snapshot(clock)
        verdicts = [gov.evaluate(proposal(f"p{i}", agent=f"a{i}"), snap).verdict for i in range(3)]
        assert verdicts.count(Verdict.APPROVED) == admitted
    # at 7/s: 3-message brackets admit two, 4-message brackets only one
    for configured, admitted in ((None, 2), (whatif, 1)):
        gov, clock = governor(open_limits(max_order_msgs_per_s=7.0))
        gov.attach(Bus(), whatif=configured)
        snap = snapshot(clock)
        verdicts = [gov.evaluate(proposal(f"q{i}", agent=f"b{i}"), snap).verdict for i in range(3)]
        assert verdicts.count(Verdict.APPROVED) == admitted, configured
