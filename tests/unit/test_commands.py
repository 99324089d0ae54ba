"""Bracket lifecycle commands (issue 13): the contract, and the gate (agents/commands.py assess)
over a real RiskGovernor: risk-lowering changes pass in every trading state, risk-raising ones
meet exactly the checks a new bracket meets (same codes, limits and values), and each command
code has a case. The desk's idempotency and its COMMAND_FAILED over the in-process Bus, with
one injected failure (the modify IB refuses)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from bracketgate.agents.command_gate import BracketNow, Plan, assess
from bracketgate.agents.commands import CommandDesk
from bracketgate.agents.execution import Bracket
from bracketgate.bus.bus import Bus
from bracketgate.bus.commands import (
    AmendCommand,
    CommandAnswer,
    CommandVerdict,
    LegState,
    command_schemas,
    parse_command,
)
from bracketgate.bus.errors import BrokerError
from bracketgate.bus.messages import (
    BracketOrderIds,
    ConnectionState,
    ControlCommand,
    DenialCode,
    Leg,
    Side,
    TradingState,
    Verdict,
)
from tests.unit.riskkit import fill, governor, open_limits, position, proposal, snapshot

D = DenialCode
ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED


def cmd(action: str, pid: str = "p1", agent: str = "a1", cid: str = "c1", **kw: Any) -> Any:
    return parse_command({"command_id": cid, "agent_id": agent, "proposal_id": pid,
                          "action": action, **kw})


def codes(out: Any) -> list[DenialCode]:
    assert isinstance(out, list), out
    return [r.code for r in out]


# ====================================================================== the contract


@pytest.mark.parametrize("body,field", [
    ({"action": "amend"}, None),                                   # nothing to amend
    ({"action": "trail"}, None),                                   # neither amount nor percent
    ({"action": "trail", "amount": 1.0, "percent": 1.0}, None),    # both
    ({"action": "trail", "percent": 80.0}, "percent"),             # past MAX_TRAIL_PERCENT
    ({"action": "close", "quantity": 0}, "quantity"),
    ({"action": "amend", "stop_loss": -1.0}, "stop_loss"),
    ({"action": "explode"}, None),
    ({"action": "cancel", "extra": 1}, "extra"),
])
def test_malformed_commands_are_refused(body: dict[str, Any], field: str | None) -> None:
    with pytest.raises(ValidationError) as e:
        parse_command({"command_id": "c1", "agent_id": "a1", "proposal_id": "p1", **body})
    if field is not None:
        assert any(field in ".".join(map(str, err["loc"])) for err in e.value.errors()), e.value


def test_schema_export_has_the_union_and_the_answer() -> None:
    schemas = command_schemas()
    union = schemas["BracketCommand"]
    assert union["discriminator"]["propertyName"] == "action"
    assert set(union["discriminator"]["mapping"]) == {"cancel", "amend", "trail", "close"}
    assert "command_id" in schemas["CommandAnswer"]["properties"]
    from bracketgate.bus.messages import json_schemas

    assert {"BracketCommand", "CommandAnswer"} <= set(json_schemas())


# ====================================================================== a bracket and its governor


def setup(state: TradingState = ACTIVE, *, filled: bool = False, qty: int = 10,
          limits: Any = None, others: int = 0, snap_kw: dict[str, Any] | None = None):
    """A governor that approved p1 (BUY qty AAPL @100, stop 99, tp 102; worst case 10 per 10
    units without slippage) and `others` more brackets; the bracket as the desk sees it."""
    gov, clock = governor(limits or open_limits())
    p = proposal("p1", qty=qty)
    positions = [position("AAPL", qty)] if filled else []
    gov.on_snapshot(snapshot(clock))
    assert gov.evaluate(p, gov.snapshot).verdict is Verdict.APPROVED
    for i in range(others):
        assert gov.evaluate(proposal(f"o{i}", agent="a2", qty=qty), gov.snapshot).verdict \
            is Verdict.APPROVED
    if filled:
        gov.on_fill(fill(p, clock))
    gov.on_snapshot(snapshot(clock, positions=positions, **(snap_kw or {})))
    if state is not ACTIVE:
        gov.on_control(ControlCommand(action="halt" if state is HALTED else "reduce"))
    assert gov.state is state
    legs = {
        "entry": LegState(order_id=1, status="Filled" if filled else "Submitted", order_type="LMT",
                          quantity=qty, filled=qty if filled else 0.0,
                          avg_fill_price=100.0 if filled else None, limit_price=100.0),
        "take_profit": LegState(order_id=2, status="Submitted", order_type="LMT", quantity=qty,
                                limit_price=102.0),
        "stop_loss": LegState(order_id=3, status="Submitted", order_type="STP", quantity=qty,
                              stop_price=99.0),
    }
    now = BracketNow(proposal_id="p1", agent_id="a1", symbol="AAPL", side=Side.BUY,
                     ids={"entry": 1, "take_profit": 2, "stop_loss": 3}, legs=legs,
                     entry_filled=qty if filled else 0.0, held=qty if filled else 0.0,
                     closed=False, proposal=p, market=100.0)
    return gov, now


# ====================================================================== risk-lowering vs risk-raising

# (name, command kwargs, filled?, raises risk?)
CHANGES = [
    ("tighter stop", dict(action="amend", stop_loss=99.5), False, False),
    ("looser stop", dict(action="amend", stop_loss=98.0), False, True),
    ("smaller size", dict(action="amend", quantity=5), False, False),
    ("larger size", dict(action="amend", quantity=20), False, True),
    ("take-profit moved", dict(action="amend", take_profit=104.0), False, False),
    ("cancel unfilled", dict(action="cancel"), False, False),
    ("trail", dict(action="trail", amount=0.5), True, False),
    ("break-even after the fill", dict(action="amend", stop_loss=100.0), True, False),
    ("looser stop after the fill", dict(action="amend", stop_loss=98.0), True, True),
    ("partial close", dict(action="close", quantity=4), True, False),
    ("full close", dict(action="close"), True, False),
]
# what a risk-raising change gets in each state: a new bracket's answer there
RAISING = {ACTIVE: None, REDUCING: D.REDUCING_ONLY, HALTED: D.TRADING_HALTED}


@pytest.mark.parametrize("state", [ACTIVE, REDUCING, HALTED], ids=lambda s: s.value)
@pytest.mark.parametrize("name,kw,filled,raises", CHANGES, ids=[c[0] for c in CHANGES])
def test_governor_table_lowering_always_passes_raising_meets_the_state(
        state: TradingState, name: str, kw: dict[str, Any], filled: bool, raises: bool) -> None:
    gov, now = setup(state, filled=filled)
    out = assess(cmd(**kw), now, gov)
    if not raises or RAISING[state] is None:
        assert isinstance(out, Plan), (name, out)
        assert out.raises_risk is raises
    else:
        assert codes(out) == [RAISING[state]], (name, out)


def test_trail_never_starts_looser_than_the_stop() -> None:
    gov, now = setup(filled=True)
    plan = assess(cmd("trail", amount=5.0), now, gov)      # 100 - 5 = 95 < the stop at 99
    assert isinstance(plan, Plan) and plan.trail_stop == pytest.approx(99.0)
    now.market = 103.0
    plan = assess(cmd("trail", percent=1.0), now, gov)     # 103 - 1.03 = 101.97: a profit locked
    assert isinstance(plan, Plan) and plan.trail_stop == pytest.approx(101.97)
    assert plan.worst_case == pytest.approx(0.0)


# ====================================================================== the same checks as a new bracket


def new_bracket_reasons(limits: Any, **kw: Any) -> list[Any]:
    gov, clock = governor(limits)
    gov.on_snapshot(snapshot(clock))
    return gov.evaluate(proposal("fresh", **kw), gov.snapshot).reasons


def test_looser_stop_past_the_per_trade_limit_is_refused_with_the_new_brackets_figures() -> None:
    lim = open_limits(per_trade_loss_limit=15.0)
    gov, now = setup(limits=lim)
    out = assess(cmd("amend", stop_loss=98.0), now, gov)   # worst case 10 -> 20
    assert codes(out) == [D.PER_TRADE_LOSS_LIMIT]
    fresh = new_bracket_reasons(lim, sl=98.0)
    assert [(r.code, r.limit, r.value) for r in out] == [(r.code, r.limit, r.value) for r in fresh]
    assert (out[0].limit, out[0].value) == (15.0, 20.0)


def test_the_brackets_own_reservation_is_left_out_of_the_remaining_budget() -> None:
    lim = open_limits(daily_loss_limit=35.0)
    gov, now = setup(limits=lim, others=1)                 # 10 + 10 reserved
    ok = assess(cmd("amend", stop_loss=97.5), now, gov)    # 25 + 10 (the other) = 35: fits
    assert isinstance(ok, Plan) and ok.raises_risk and ok.worst_case == pytest.approx(25.0)
    out = assess(cmd("amend", stop_loss=97.0), now, gov)   # 30 > 35 - 10 (the other) = 25
    assert codes(out) == [D.DAILY_LOSS_LIMIT]
    assert (out[0].limit, out[0].value) == (25.0, 30.0)
    assert gov.ledger.get("p1").worst_case_loss == pytest.approx(10.0), "nothing reserved yet"
    assert len(gov.ledger) == 2


def test_larger_size_meets_the_size_limits() -> None:
    lim = open_limits(max_order_quantity=15)
    gov, now = setup(limits=lim)
    out = assess(cmd("amend", quantity=20), now, gov)
    assert codes(out) == [D.MAX_ORDER_QUANTITY] and (out[0].limit, out[0].value) == (15, 20)


def test_filled_bracket_looser_stop_meets_the_loss_checks_only() -> None:
    lim = open_limits(per_trade_loss_limit=15.0, max_position_units=15)   # 10 held: 10 more
    # would breach it, were the position counted twice
    gov, now = setup(filled=True, limits=lim)
    out = assess(cmd("amend", stop_loss=98.5), now, gov)   # 15: fits; the position limit is not
    assert isinstance(out, Plan) and out.raises_risk       # counted twice
    out = assess(cmd("amend", stop_loss=98.0), now, gov)
    assert codes(out) == [D.PER_TRADE_LOSS_LIMIT]


@pytest.mark.parametrize("snap_kw,code", [
    ({"connection": ConnectionState.DISCONNECTED}, D.BROKER_DISCONNECTED),
    ({"daily": None}, D.PNL_UNKNOWN),
    ({"reconciled": False}, D.NOT_RECONCILED),
])
def test_fail_closed_for_risk_raising_only(snap_kw: dict[str, Any], code: DenialCode) -> None:
    gov, now = setup(snap_kw=snap_kw)
    assert codes(assess(cmd("amend", stop_loss=98.0), now, gov)) == [code]
    assert isinstance(assess(cmd("amend", stop_loss=99.5), now, gov), Plan)
    assert isinstance(assess(cmd("cancel"), now, gov), Plan)


# ====================================================================== one case per command code


def test_unknown_bracket_and_not_owner() -> None:
    gov, now = setup()
    assert codes(assess(cmd("cancel"), None, gov)) == [D.UNKNOWN_BRACKET]
    out = assess(cmd("amend", agent="intruder", stop_loss=99.5), now, gov)
    assert codes(out) == [D.NOT_BRACKET_OWNER]


def test_cancel_of_a_filled_bracket_points_at_close() -> None:
    gov, now = setup(filled=True)
    out = assess(cmd("cancel"), now, gov)
    assert codes(out) == [D.BRACKET_FILLED_USE_CLOSE]
    assert "close" in out[0].message


def test_bracket_not_working() -> None:
    gov, now = setup()
    now.legs["entry"] = now.legs["entry"].model_copy(update={"status": "Cancelled"})
    assert codes(assess(cmd("amend", stop_loss=99.5), now, gov)) == [D.BRACKET_NOT_WORKING]
    now.closed = True
    assert codes(assess(cmd("close"), now, gov)) == [D.BRACKET_NOT_WORKING]


def test_close_codes() -> None:
    gov, now = setup()
    assert codes(assess(cmd("close"), now, gov)) == [D.NOTHING_TO_CLOSE]
    gov, now = setup(filled=True)
    out = assess(cmd("close", quantity=11), now, gov)
    assert codes(out) == [D.CLOSE_EXCEEDS_POSITION] and (out[0].limit, out[0].value) == (10.0, 11.0)


def test_command_in_progress() -> None:
    gov, now = setup()
    assert codes(assess(cmd("amend", stop_loss=99.5), now, gov, in_flight="c0")) \
        == [D.COMMAND_IN_PROGRESS]


def test_geometry_and_tick() -> None:
    gov, now = setup()
    assert codes(assess(cmd("amend", stop_loss=100.5), now, gov)) == [D.BRACKET_GEOMETRY]
    assert codes(assess(cmd("amend", stop_loss=99.505), now, gov)) == [D.PRICE_OFF_TICK]
    gov, now = setup(filled=True)
    assert codes(assess(cmd("amend", take_profit=98.0), now, gov)) == [D.BRACKET_GEOMETRY]


def test_agents_file_applies() -> None:
    from bracketgate.config.agents import parse_agents

    gov, now = setup()
    gov.set_agents(parse_agents({"agents": {"a1": {"enabled": False}}}))
    assert codes(assess(cmd("cancel"), now, gov)) == [D.AGENT_DISABLED]
    assert codes(assess(cmd("cancel", agent="zz"), now, gov)) == [D.UNKNOWN_AGENT]


# ====================================================================== the desk


class _Execution:
    """The execution agent's part the desk reads (its book), for one bracket."""

    def __init__(self, p: Any, filled: float) -> None:
        self.proposal = p
        self.bracket = Bracket("p1", "a1", "AAPL", Side.BUY,
                               BracketOrderIds(entry=1, take_profit=2, stop_loss=3), stop_price=99.0,
                               placed=True)
        self.bracket.status = {Leg.ENTRY: "Filled" if filled else "Submitted",
                               Leg.TAKE_PROFIT: "Submitted", Leg.STOP_LOSS: "Submitted"}
        self.bracket.filled = {Leg.ENTRY: filled}

    def book(self, pid: str) -> Any:
        return self.bracket if pid == "p1" else None

    def proposal_of(self, pid: str) -> Any:
        return self.proposal if pid == "p1" else None


class _RefusingOrders:
    """IB as a failure injection: every modify refused (110 off tick, say)."""

    def __init__(self, legs: dict[int, LegState]) -> None:
        self.legs = legs
        self.modifies: list[tuple[int, dict[str, Any]]] = []

    def leg(self, oid: int) -> LegState | None:
        return self.legs.get(oid)

    def working(self, oid: int) -> bool:
        return oid in self.legs

    async def modify(self, oid: int, **kw: Any) -> LegState:
        self.modifies.append((oid, kw))
        raise BrokerError("IB refused the modify", code=110)


async def _desk(gov: Any, now: BracketNow) -> tuple[CommandDesk, Bus, list[CommandAnswer], Any]:
    bus = Bus()
    await bus.start()
    answers: list[CommandAnswer] = []
    got = asyncio.Event()

    async def on_answer(a: CommandAnswer) -> None:
        answers.append(a)
        got.set()

    bus.subscribe(CommandAnswer, on_answer, name="test")
    orders = _RefusingOrders({leg.order_id: leg for leg in now.legs.values()})
    desk = CommandDesk(bus, gov, _Execution(now.proposal, now.entry_filled), broker=None,
                       orders=orders)
    desk.attach()
    return desk, bus, answers, orders


async def _answer(answers: list[CommandAnswer], n: int) -> CommandAnswer:
    async with asyncio.timeout(5):
        while len(answers) < n:
            await asyncio.sleep(0.01)
    return answers[n - 1]


async def test_desk_answers_command_failed_and_restores_the_reservation() -> None:
    gov, now = setup()
    desk, bus, answers, orders = await _desk(gov, now)
    await desk.take_in(cmd("amend", stop_loss=98.0))           # risk-raising: reserved first
    ans = await _answer(answers, 1)
    assert ans.verdict is CommandVerdict.REJECTED and [r.code for r in ans.reasons] == [D.COMMAND_FAILED]
    assert "110" in str(ans.reasons[0].value)
    assert orders.modifies == [(3, {"stop_price": 98.0})]
    assert gov.ledger.get("p1").worst_case_loss == pytest.approx(10.0), "back to what IB has"
    assert ans.legs["stop_loss"].stop_price == 99.0
    await bus.close()


async def test_desk_idempotency_same_answer_again_other_content_duplicate() -> None:
    gov, now = setup()
    desk, bus, answers, orders = await _desk(gov, now)
    first = AmendCommand(command_id="c9", agent_id="a1", proposal_id="p1", action="amend",
                         stop_loss=99.5)
    await desk.take_in(first)
    one = await _answer(answers, 1)
    await desk.take_in(first)
    two = await _answer(answers, 2)
    assert two == one and len(orders.modifies) == 1, "never a second action"
    await desk.take_in(first.model_copy(update={"stop_loss": 99.6}))
    dup = await _answer(answers, 3)
    assert [r.code for r in dup.reasons] == [D.DUPLICATE_COMMAND] and len(orders.modifies) == 1
    await bus.close()


class _AcceptingOrders(_RefusingOrders):
    """IB that takes every modify (the leg as asked)."""

    async def modify(self, oid: int, **kw: Any) -> LegState:
        self.modifies.append((oid, kw))
        leg = self.legs[oid]
        update = {"quantity": kw.get("quantity", leg.quantity),
                  "stop_price": kw.get("stop_price", leg.stop_price),
                  "limit_price": kw.get("limit_price", leg.limit_price)}
        self.legs[oid] = leg.model_copy(update=update)
        return self.legs[oid]


@pytest.mark.parametrize("kw,worst", [
    (dict(stop_loss=98.0), 20.0),          # risk-raising: reserved with the check
    (dict(stop_loss=99.5), 5.0),           # risk-lowering: once IB confirmed
    (dict(quantity=4), 4.0),               # smaller: the reservation shrinks with it
])
async def test_the_reservation_follows_an_accepted_change(kw: dict[str, Any], worst: float) -> None:
    gov, now = setup()
    desk, bus, answers, _ = await _desk(gov, now)
    accepting = _AcceptingOrders({leg.order_id: leg for leg in now.legs.values()})
    desk._orders = accepting
    await desk.take_in(cmd("amend", **kw))
    ans = await _answer(answers, 1)
    assert ans.verdict is CommandVerdict.ACCEPTED, ans
    res = gov.ledger.get("p1")
    assert res.worst_case_loss == pytest.approx(worst)
    assert gov.ledger.total_worst_case == pytest.approx(worst)
    if "quantity" in kw:
        assert res.quantity == 4 and [oid for oid, _ in accepting.modifies] == [1, 2, 3], \
            "smaller: the entry first, then the children"
    await bus.close()


@pytest.mark.parametrize("stop_qty,held,want", [
    (6.0, 10.0, 10.0),    # a partial close cut between the resize and its exit: grown back
    (10.0, 6.0, 6.0),     # an exit that filled only partly: shrunk (never a stop for more)
    (10.0, 10.0, None),   # as it should be: nothing sent
])
async def test_exits_are_resized_to_what_is_held(stop_qty: float, held: float,
                                                 want: float | None) -> None:
    gov, now = setup(filled=True)
    desk, bus, _, _ = await _desk(gov, now)
    legs = {leg.order_id: leg for leg in now.legs.values()}
    legs[3] = legs[3].model_copy(update={"quantity": stop_qty})
    legs[2] = legs[2].model_copy(update={"quantity": stop_qty})
    accepting = _AcceptingOrders(legs)
    desk._orders = accepting
    book = desk._execution.bracket
    book.filled = {Leg.ENTRY: 10.0, Leg.TAKE_PROFIT: 0.0, Leg.STOP_LOSS: 0.0}
    book.guard_filled = 10.0 - held
    await desk._reprotect("p1")
    sent = {oid: kw["quantity"] for oid, kw in accepting.modifies}
    assert sent == ({} if want is None else {3: want, 2: want})
    await bus.close()
