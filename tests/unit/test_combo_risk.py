"""Combos (BAG) at the RiskGovernor: worst case as one unit (stop or structure bound), per-leg
positions / notional / exposure at and just past each limit, undefined-risk refusals, pending
legs, BAG and leg fills. Governors without IB details: legs are known by their offline conIds."""

from __future__ import annotations

from typing import Any

import pytest

from bracketgate.bus.combos import leg_query
from bracketgate.bus.messages import (
    DenialCode as D,
    Fill,
    Leg,
    Quote,
    ResolvedContract,
    Side,
    TradeProposal,
    Verdict,
)
from tests.unit.riskkit import contract_id, governor, open_limits, position, quote, snapshot

E = "20261218"
SPY = "SPY"


def opt(strike: float, right: str, action: str, ratio: int = 1) -> dict[str, Any]:
    return dict(sec_type="OPT", expiry=E, strike=strike, right=right, action=action, ratio=ratio)


STRADDLE = [opt(100, "C", "BUY"), opt(100, "P", "BUY")]
CALL_DEBIT = [opt(100, "C", "BUY"), opt(105, "C", "SELL")]          # width 5
PUT_CREDIT = [opt(100, "P", "SELL"), opt(95, "P", "BUY")]           # a credit: bought < 0
PUT_RATIO = [opt(100, "P", "BUY"), opt(90, "P", "SELL", ratio=2)]   # a naked short put


def combo(legs: list[dict[str, Any]], pid: str = "c1", *, side: str = "BUY", qty: int = 2,
          limit: float | None = 10.0, tp: float = 14.0, sl: float = 8.0,
          agent: str = "a1") -> TradeProposal:
    return TradeProposal(proposal_id=pid, agent_id=agent, symbol=SPY, sec_type="BAG",
                         side=Side(side), quantity=qty, order_type="LMT" if limit else "MKT",
                         limit_price=limit, take_profit=tp, stop_loss=sl, legs=legs)


def leg_id(strike: float, right: str) -> int:
    return contract_id(SPY, "OPT", E, float(strike), right)


# every leg a test uses, quoted: mid = the price below, a dime wide
MIDS = {(100, "C"): 5.0, (100, "P"): 5.0, (105, "C"): 3.0, (95, "P"): 3.5, (90, "P"): 1.0}


def snap(clock: Any, **kw: Any) -> Any:
    qs = [quote(clock, SPY, m - 0.05, m + 0.05, m, sec_type="OPT", expiry=E, strike=float(k),
                right=r) for (k, r), m in MIDS.items()]
    return snapshot(clock, quotes=qs, **kw)


def decide(p: TradeProposal, **limits: Any) -> Any:
    lim = open_limits(**limits)
    gov, clock = governor(lim)
    return gov.evaluate(p, snap(clock)), gov


def worst(gov: Any, pid: str = "c1") -> float:
    return gov.ledger.get(pid).worst_case_loss


# =========================================================================== the worst case

@pytest.mark.parametrize("legs,side,limit,tp,sl,expected,bound", [
    # long straddle 2 @ 10, stop 8: 2 x (2 + 2 ticks) x 100
    (STRADDLE, "BUY", 10.0, 14.0, 8.0, 2 * 2.02 * 100, "stop"),
    # the stop below what the straddle can lose: capped by the premium paid (2 x 10 x 100)
    (STRADDLE, "BUY", 10.0, 14.0, 0.01, 2 * 10.0 * 100, "structure"),
    # debit call vertical 100/105 @ 2: the stop's figure is below the debit
    (CALL_DEBIT, "BUY", 2.0, 4.0, 1.0, 2 * 1.02 * 100, "stop"),
    # put credit vertical bought at -1.50 (a credit): max loss width - credit = 3.50
    (PUT_CREDIT, "BUY", -1.5, -0.5, -4.0, 2 * 2.52 * 100, "stop"),
    (PUT_CREDIT, "BUY", -1.5, -0.5, -4.99, 2 * 3.5 * 100, "structure"),
    # the call vertical sold at 2 (a bear call credit spread): max loss 5 - 2 = 3
    (CALL_DEBIT, "SELL", 2.0, 1.0, 4.0, 2 * 2.02 * 100, "stop"),
    (CALL_DEBIT, "SELL", 2.0, 1.0, 4.99, 2 * 3.0 * 100, "structure"),
])
def test_worst_case_is_the_stop_or_the_structure_whichever_is_smaller(
        legs: Any, side: str, limit: float, tp: float, sl: float, expected: float,
        bound: str) -> None:
    p = combo(legs, side=side, limit=limit, tp=tp, sl=sl)
    d, gov = decide(p, slippage_ticks=2.0)
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert worst(gov) == pytest.approx(expected)
    # the approval itself says which bound applied, and the loss it was admitted with
    assert d.worst_case is not None and d.worst_case.bound == bound
    assert d.worst_case.loss == pytest.approx(expected, abs=0.01)
    assert d.model_dump(mode="json")["worst_case"] == {"loss": d.worst_case.loss, "bound": bound}
    # the bound named in a denial at one cent under that worst case
    d2, _ = decide(p, slippage_ticks=2.0, per_trade_loss_limit=round(expected - 0.01, 2))
    assert [r.code for r in d2.reasons] == [D.PER_TRADE_LOSS_LIMIT]
    assert d2.reasons[0].bound == bound and f"bound: {bound}" in d2.reasons[0].message
    assert d2.reasons[0].value == pytest.approx(expected)


def test_a_market_combo_is_priced_from_its_legs_quotes() -> None:
    # BUY the straddle at market: the legs' asks, 5.05 + 5.05
    p = combo(STRADDLE, limit=None, tp=14.0, sl=8.0)
    d, gov = decide(p)
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert gov.ledger.get("c1").worst_case_loss == pytest.approx(2 * (10.10 - 8.0) * 100)


# =========================================================================== at and past each limit
# a long straddle 2 @ 10, stop 8, no slippage: worst case 400; legs 2 contracts each at a 5.00
# mark: 1,000 notional a leg, 2,000 gross and net; NetLiquidation 1,000,000

STRADDLE_CASES = [
    # (limits at the figure, limits just past it, code, field)
    (dict(per_trade_loss_limit=400.0), dict(per_trade_loss_limit=399.99), D.PER_TRADE_LOSS_LIMIT, None),
    (dict(per_trade_loss_pct=0.04), dict(per_trade_loss_pct=0.0399), D.PER_TRADE_LOSS_PCT_LIMIT, None),
    (dict(daily_loss_limit=400.0), dict(daily_loss_limit=399.99), D.DAILY_LOSS_LIMIT, None),
    (dict(agent=dict(loss_limit=400.0)), dict(agent=dict(loss_limit=399.99)), D.AGENT_LOSS_LIMIT, None),
    (dict(max_order_quantity=2), dict(max_order_quantity=1), D.MAX_ORDER_QUANTITY, "quantity"),
    (dict(max_order_notional=2000.0), dict(max_order_notional=1999.99), D.MAX_ORDER_NOTIONAL, None),
    (dict(max_position_units=2.0), dict(max_position_units=1.99), D.POSITION_LIMIT, "legs[0]"),
    (dict(max_position_notional=1000.0), dict(max_position_notional=999.99),
     D.POSITION_NOTIONAL_LIMIT, "legs[0]"),
    (dict(max_gross_exposure_pct=0.2), dict(max_gross_exposure_pct=0.1999), D.GROSS_EXPOSURE_LIMIT, "legs"),
    (dict(max_net_exposure_pct=0.2), dict(max_net_exposure_pct=0.1999), D.NET_EXPOSURE_LIMIT, "legs"),
    (dict(agent=dict(exposure_limit=2000.0)), dict(agent=dict(exposure_limit=1999.99)),
     D.AGENT_EXPOSURE_LIMIT, "legs"),
]


@pytest.mark.parametrize("at,past,code,field", STRADDLE_CASES,
                         ids=[c[2].value for c in STRADDLE_CASES])
def test_straddle_at_the_limit_passes_and_just_past_it_is_denied(
        at: dict[str, Any], past: dict[str, Any], code: D, field: str | None) -> None:
    d, _ = decide(combo(STRADDLE), **at)
    assert d.verdict is Verdict.APPROVED, d.reasons
    d, gov = decide(combo(STRADDLE), **past)
    assert [r.code for r in d.reasons] == [code]
    assert d.reasons[0].field == field
    if code.value.endswith("LOSS_LIMIT") or code is D.PER_TRADE_LOSS_PCT_LIMIT:
        assert d.reasons[0].bound == "stop"
    assert "c1" not in gov.ledger


@pytest.mark.parametrize("at,past,code", [
    (dict(per_trade_loss_limit=700.0), dict(per_trade_loss_limit=699.99), D.PER_TRADE_LOSS_LIMIT),
    (dict(daily_loss_limit=700.0), dict(daily_loss_limit=699.99), D.DAILY_LOSS_LIMIT),
    (dict(agent=dict(loss_limit=700.0)), dict(agent=dict(loss_limit=699.99)), D.AGENT_LOSS_LIMIT),
])
def test_credit_vertical_capped_by_its_structure_at_and_past_the_loss_limits(
        at: dict[str, Any], past: dict[str, Any], code: D) -> None:
    # 2 put credit spreads at -1.50 with a stop beyond the width: 2 x 3.50 x 100 = 700
    p = combo(PUT_CREDIT, limit=-1.5, tp=-0.5, sl=-5.5)
    d, _ = decide(p, **at)
    assert d.verdict is Verdict.APPROVED, d.reasons
    d, _ = decide(p, **past)
    assert [r.code for r in d.reasons] == [code]
    assert d.reasons[0].bound == "structure"


def test_a_leg_already_held_counts_and_the_denial_names_that_leg() -> None:
    lim = open_limits(max_position_units=3.0)
    gov, clock = governor(lim)
    held = position(SPY, 1, 5.0, 100.0, "OPT", E, 100.0, "P")
    assert gov.evaluate(combo(STRADDLE), snap(clock, positions=[held])).verdict is Verdict.APPROVED
    gov, clock = governor(open_limits(max_position_units=2.99))
    d = gov.evaluate(combo(STRADDLE), snap(clock, positions=[held]))
    assert [(r.code, r.field) for r in d.reasons] == [(D.POSITION_LIMIT, "legs[1]")]
    assert d.reasons[0].value == 3.0


def test_pending_combos_count_per_leg_until_released() -> None:
    gov, clock = governor(open_limits(max_position_units=4.0))
    s = snap(clock)
    assert gov.evaluate(combo(STRADDLE, "c1"), s).verdict is Verdict.APPROVED
    assert gov.evaluate(combo(STRADDLE, "c2"), s).verdict is Verdict.APPROVED
    d = gov.evaluate(combo(STRADDLE, "c3"), s)
    assert [(r.code, r.field, r.value) for r in d.reasons] == [(D.POSITION_LIMIT, "legs[0]", 6.0)]
    # a single-leg reservation's gross counts too: the two combos' 4,000 is pending
    assert gov.ledger.gross_pending_notional == pytest.approx(4000.0)
    gov.release("c1", "test")
    assert gov.evaluate(combo(STRADDLE, "c4"), s).verdict is Verdict.APPROVED


def test_a_single_leg_proposal_counts_a_pending_combo_leg_of_its_contract() -> None:
    gov, clock = governor(open_limits(max_position_units=3.0))
    s = snap(clock)
    assert gov.evaluate(combo(STRADDLE, "c1"), s).verdict is Verdict.APPROVED   # 2 calls pending
    call = TradeProposal(proposal_id="s1", agent_id="a1", symbol=SPY, sec_type="OPT",
                         side=Side.BUY, quantity=2, limit_price=5.0, take_profit=6.0,
                         stop_loss=4.5, expiry=E, strike=100.0, right="C")
    d = gov.evaluate(call, s)
    assert [(r.code, r.value) for r in d.reasons] == [(D.POSITION_LIMIT, 4.0)]
    gov.release("c1", "test")
    assert gov.evaluate(call.model_copy(update={"proposal_id": "s2"}), s).verdict \
        is Verdict.APPROVED


def test_opposite_legs_net_against_pending_and_held() -> None:
    # the call vertical buys 100C and sells 105C: selling 105C against a held long 105C shrinks it
    held = position(SPY, 2, 3.0, 100.0, "OPT", E, 105.0, "C")
    gov, clock = governor(open_limits(max_position_units=2.0))
    d = gov.evaluate(combo(CALL_DEBIT, limit=2.0, tp=4.0, sl=1.0), snap(clock, positions=[held]))
    assert d.verdict is Verdict.APPROVED, d.reasons


# =========================================================================== undefined risk

@pytest.mark.parametrize("legs,side,prices", [
    (STRADDLE, "SELL", (10.0, 6.0, 12.0)),          # a short straddle
    (PUT_RATIO, "BUY", (3.0, 5.0, 2.0)),            # 1 x 2 put ratio: a net short naked put
    ([opt(100, "C", "SELL"), opt(95, "P", "BUY")], "BUY", (-1.5, -0.5, -2.5)),  # naked call
])
def test_undefined_risk_is_refused_unless_the_limits_file_allows_it(
        legs: Any, side: str, prices: tuple[float, float, float]) -> None:
    limit, tp, sl = prices
    p = combo(legs, side=side, limit=limit, tp=tp, sl=sl)
    d, gov = decide(p)
    assert [r.code for r in d.reasons] == [D.UNDEFINED_RISK_COMBO]
    assert d.reasons[0].field == "legs" and "naked" in d.reasons[0].message
    assert "c1" not in gov.ledger
    d, gov = decide(p, allow_undefined_risk_combos=True)
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert gov.ledger.get("c1").worst_case_loss > 0


def test_defined_risk_structures_are_not_refused() -> None:
    for legs, limit, tp, sl in ((STRADDLE, 10.0, 14.0, 8.0), (CALL_DEBIT, 2.0, 4.0, 1.0),
                                (PUT_CREDIT, -1.5, -0.5, -2.5)):
        d, _ = decide(combo(legs, limit=limit, tp=tp, sl=sl))
        assert d.verdict is Verdict.APPROVED, (legs, d.reasons)


# =========================================================================== geometry, bands, ticks

@pytest.mark.parametrize("kw,code,field", [
    (dict(limit=-1.5, tp=-2.0, sl=-2.5), D.BRACKET_GEOMETRY, "take_profit"),   # credit, tp below
    (dict(limit=-1.5, tp=-0.5, sl=-1.0), D.BRACKET_GEOMETRY, "stop_loss"),     # stop above entry
    (dict(limit=-1.505, tp=-0.5, sl=-2.5), D.PRICE_OFF_TICK, "limit_price"),
])
def test_credit_combo_geometry_and_ticks_in_combo_price_terms(kw: Any, code: D, field: str) -> None:
    d, _ = decide(combo(PUT_CREDIT, **kw))
    assert (code, field) in [(r.code, r.field) for r in d.reasons]


def test_price_bands_are_a_share_of_the_gross_premium_around_the_combo_mid() -> None:
    # the put credit spread's mid is -1.50, its gross premium 8.50: 20 % = 1.70 for the entry
    p = combo(PUT_CREDIT, limit=-3.20, tp=-0.5, sl=-4.5)
    d, _ = decide(p, entry_band_pct=20.0, exit_band_pct=50.0)
    assert d.verdict is Verdict.APPROVED, d.reasons
    d, _ = decide(combo(PUT_CREDIT, limit=-3.21, tp=-0.5, sl=-4.5), entry_band_pct=20.0,
                  exit_band_pct=50.0)
    assert [(r.code, r.field) for r in d.reasons] == [(D.PRICE_OUT_OF_BAND, "limit_price")]


def test_a_leg_quoted_on_one_side_only_prices_the_combo_with_that_side() -> None:
    # a stream's first tick may bring only the ask: the call quoted 5.05 ask, no bid, no last
    gov, clock = governor(open_limits())
    qs = [quote(clock, SPY, None, 5.05, None, sec_type="OPT", expiry=E, strike=100.0, right="C"),
          quote(clock, SPY, 4.95, 5.05, 5.0, sec_type="OPT", expiry=E, strike=100.0, right="P")]
    d = gov.evaluate(combo(STRADDLE, limit=None), snapshot(clock, quotes=qs))
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert gov.ledger.get("c1").worst_case_loss == pytest.approx(2 * (10.10 - 8.0) * 100)


def test_a_leg_without_a_quote_fails_closed_naming_it() -> None:
    gov, clock = governor(open_limits())
    p = combo([opt(100, "C", "BUY"), opt(110, "C", "SELL")], limit=3.0, tp=4.0, sl=2.0)
    d = gov.evaluate(p, snap(clock))
    assert [(r.code, r.field) for r in d.reasons] == [(D.QUOTE_UNAVAILABLE, "legs[1]")]


# =========================================================================== IB's contract details

def test_unknown_leg_is_named_and_resolved_combos_use_ibs_con_ids() -> None:
    p = combo(STRADDLE)
    known = {("C",): 501, ("P",): 502}

    def leg(i: int) -> ResolvedContract:
        right = p.legs[i].right
        return ResolvedContract(con_id=known[(right,)], symbol=SPY, sec_type="OPT",
                                exchange="SMART", currency="USD", multiplier=100.0,
                                expiry=E, strike=100.0, right=right)

    def missing_put(q: Any) -> ResolvedContract | None:
        if getattr(q, "legs", None) is not None:
            return None                       # the combo: not resolved (its put leg is unknown)
        return leg(0) if q.right == "C" else None

    gov, clock = governor(open_limits(), contract_info=missing_put)
    d = gov.evaluate(p, snap(clock))
    assert [(r.code, r.field) for r in d.reasons] == [(D.UNKNOWN_CONTRACT, "legs[1]")]
    assert "100P" in d.reasons[0].message

    bag = ResolvedContract(con_id=-7, symbol=SPY, sec_type="BAG", exchange="SMART",
                           currency="USD", multiplier=100.0, legs=[leg(0), leg(1)])
    gov, clock = governor(open_limits(max_position_units=2.0),
                          contract_info=lambda q: bag if getattr(q, "legs", None) else None)
    s = snapshot(clock, quotes=[Quote(con_id=cid, symbol=SPY, bid=4.95, ask=5.05, ts=clock.now())
                                for cid in (501, 502)])
    d = gov.evaluate(p, s)
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert gov.ledger.get("c1").con_id == -7
    # a position on IB's conId of the call leg counts against that leg
    held = position(SPY, 1, 5.0, 100.0, "OPT", E, 100.0, "C").model_copy(update={"con_id": 501})
    gov, clock = governor(open_limits(max_position_units=2.0),
                          contract_info=lambda q: bag if getattr(q, "legs", None) else None)
    s = s.model_copy(update={"positions": [held]})
    d = gov.evaluate(p, s)
    assert [(r.code, r.field) for r in d.reasons] == [(D.POSITION_LIMIT, "legs[0]")]


def test_a_leg_query_shares_the_single_leg_contract_key() -> None:
    from bracketgate.adapters.ib import contract_key

    p = combo(STRADDLE)
    single = TradeProposal(proposal_id="s", agent_id="a", symbol=SPY, sec_type="OPT",
                           side=Side.BUY, quantity=1, limit_price=5.0, take_profit=6.0,
                           stop_loss=4.0, expiry=E, strike=100.0, right="C")
    assert contract_key(leg_query(p, p.legs[0])) == contract_key(single)
    assert contract_key(p) != contract_key(single)


# =========================================================================== fills

def test_the_bag_fill_moves_the_bracket_and_leg_fills_the_positions_and_pnl() -> None:
    gov, clock = governor(open_limits())
    p = combo(STRADDLE)
    assert gov.evaluate(p, snap(clock)).verdict is Verdict.APPROVED

    def f(exec_id: str, leg: Leg, sec_type: str, con_id: int, side: Side, qty: float,
          price: float, realized: float | None = None) -> Fill:
        return Fill(proposal_id="c1", agent_id="a1", order_id=1, leg=leg, exec_id=exec_id,
                    symbol=SPY, con_id=con_id, side=side, quantity=qty, price=price,
                    realized_pnl=realized, sec_type=sec_type, ts=clock.now())

    call, put = leg_id(100, "C"), leg_id(100, "P")
    gov.on_fill(f("x1", Leg.ENTRY, "OPT", call, Side.BUY, 2, 5.0))
    gov.on_fill(f("x2", Leg.ENTRY, "OPT", put, Side.BUY, 2, 5.0))
    res = gov.ledger.get("c1")
    assert res.entry_filled == 0          # legs do not count combos
    gov.on_fill(f("x3", Leg.ENTRY, "BAG", 0, Side.BUY, 2, 10.0))
    assert res.entry_filled == 2 and res.entry_done
    budget = gov.budget_of("a1")
    assert gov._agent_positions[budget] == {call: 2.0, put: 2.0}
    # the take-profit: legs carry the realized P&L, the BAG fill closes the bracket
    gov.on_fill(f("x4", Leg.TAKE_PROFIT, "OPT", call, Side.SELL, 2, 9.0, realized=800.0))
    gov.on_fill(f("x5", Leg.TAKE_PROFIT, "OPT", put, Side.SELL, 2, 5.0, realized=0.0))
    assert "c1" in gov.ledger
    gov.on_fill(f("x6", Leg.TAKE_PROFIT, "BAG", 0, Side.SELL, 2, 14.0, realized=800.0))
    assert "c1" not in gov.ledger
    assert gov._agent_realized["a1"] == 800.0      # the BAG's own figure is not counted again
    assert gov._agent_positions[budget] == {}
    # a re-delivered fill counts nothing twice
    gov.on_fill(f("x4", Leg.TAKE_PROFIT, "OPT", call, Side.SELL, 2, 9.0, realized=800.0))
    assert gov._agent_realized["a1"] == 800.0


# =========================================================================== restarts, REDUCING

def test_a_working_combo_bracket_from_before_a_restart_counts_its_worst_case() -> None:
    from bracketgate.bus.messages import WorkingOrder

    bag = 28812380     # IB's conId of every BAG
    common = dict(order_ref="old-combo", symbol=SPY, con_id=bag, multiplier=100.0,
                  quantity=2.0, remaining=2.0, status="Submitted")
    working = [
        WorkingOrder(order_id=1, side=Side.BUY, order_type="LMT", limit_price=-1.5, **common),
        WorkingOrder(order_id=2, parent_id=1, side=Side.SELL, order_type="LMT", limit_price=-0.5,
                     **common),
        WorkingOrder(order_id=3, parent_id=1, side=Side.SELL, order_type="STP", stop_price=-2.5,
                     **common)]
    # 2 x |-1.50 - -2.50| x 100 = 200 of the daily budget is taken by the old combo
    gov, clock = governor(open_limits(daily_loss_limit=600.0))
    s = snap(clock, working=working)
    assert gov.summary()["open_worst_case"] == 0.0
    d = gov.evaluate(combo(STRADDLE), s)                       # 400 more: 600, at the limit
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert gov.summary()["open_worst_case"] == pytest.approx(600.0)
    d = gov.evaluate(combo(STRADDLE, "c2", qty=1), s)
    assert [(r.code, r.value) for r in d.reasons] == [(D.DAILY_LOSS_LIMIT, 200.0)]


def test_reducing_admits_a_combo_only_if_every_leg_reduces() -> None:
    from bracketgate.bus.messages import TradingState

    held = [position(SPY, 2, 5.0, 100.0, "OPT", E, 100.0, "C"),
            position(SPY, 2, 5.0, 100.0, "OPT", E, 100.0, "P")]
    gov, clock = governor(open_limits(), initial_state=TradingState.REDUCING)
    s = snap(clock, positions=held)
    # selling the straddle closes both legs
    d = gov.evaluate(combo(STRADDLE, "close", side="SELL", limit=10.0, tp=8.0, sl=11.0), s)
    assert d.verdict is Verdict.APPROVED, d.reasons
    # buying more grows them
    d = gov.evaluate(combo(STRADDLE, "grow"), s)
    assert [(r.code, r.field) for r in d.reasons] == [(D.REDUCING_ONLY, "legs[0]")]
    # the close above is pending: the held calls are spoken for
    d = gov.evaluate(combo(STRADDLE, "close2", side="SELL", limit=10.0, tp=8.0, sl=11.0), s)
    assert [(r.code, r.field) for r in d.reasons] == [(D.REDUCING_ONLY, "legs[0]")]
    # a vertical that sells the held call but buys a 105 call the account does not hold
    gov, clock = governor(open_limits(), initial_state=TradingState.REDUCING)
    d = gov.evaluate(combo([opt(100, "C", "SELL"), opt(105, "C", "BUY")], "mixed", limit=-2.0,
                           tp=-1.0, sl=-2.5), s)
    assert [(r.code, r.field) for r in d.reasons] == [(D.REDUCING_ONLY, "legs[1]")]


async def test_the_what_if_is_asked_for_the_combo_and_its_margin_must_fit() -> None:
    """IB's what-if runs on the combo (the ApprovedBracket carries the BAG's legs); a margin
    change past AvailableFunds x (1 - cushion) replaces the approval and frees the legs."""
    p = combo(STRADDLE)
    legs = [ResolvedContract(con_id=500 + i, symbol=SPY, sec_type="OPT", exchange="SMART",
                             currency="USD", multiplier=100.0, expiry=E, strike=100.0, right=r)
            for i, r in enumerate(("C", "P"))]
    bag = ResolvedContract(con_id=-7, symbol=SPY, sec_type="BAG", exchange="SMART",
                           currency="USD", multiplier=100.0, legs=legs)
    asked: list[Any] = []

    async def whatif(bracket: Any) -> dict[str, float]:
        asked.append(bracket)
        return {"init_margin_change": 2000.0}

    for funds, verdict in ((2000.0 / 0.9 + 1, Verdict.APPROVED), (2000.0 / 0.9 - 1, Verdict.REJECTED)):
        gov, clock = governor(open_limits(margin_cushion_pct=10.0),
                              contract_info=lambda q: bag if getattr(q, "legs", None) else None)
        s = snapshot(clock, funds=funds, quotes=[
            Quote(con_id=cid, symbol=SPY, bid=4.95, ask=5.05, ts=clock.now()) for cid in (500, 501)])
        gov.on_snapshot(s)
        d = gov.evaluate(p, s)
        assert d.verdict is Verdict.APPROVED
        d = await gov.confirm_margin(d, whatif)
        assert d.verdict is verdict, d.reasons
        assert asked[-1].contract.sec_type.value == "BAG" and asked[-1].contract.legs == legs
        if verdict is Verdict.REJECTED:
            assert [r.code for r in d.reasons] == [D.INSUFFICIENT_MARGIN]
            assert "c1" not in gov.ledger
            # the legs are no longer pending: the same straddle fits the position limit again
            assert gov._combos.pending(gov.ledger) == {}
