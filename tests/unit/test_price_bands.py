"""Absurd prices are refused, and no price, however extreme, makes the governor raise.

The price bands (agents/rules.py `rule_price_band`): every price of a bracket within a band
around the contract's current quote, no quote = QUOTE_UNAVAILABLE unless the bands are off.
Float extremes: `gate_numbers`, `on_tick` and the arithmetic after them never raise, whatever
finite float a price field holds (the contract bounds prices to MAX_PRICE; the governor checks
again, so a proposal built without validation is refused too).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bracketgate.agents import rules
from bracketgate.agents.risk import RiskGovernor
from bracketgate.bus.messages import (
    MAX_PRICE,
    DenialCode,
    OrderType,
    RiskDecision,
    SecType,
    Side,
    TimeInForce,
    TradeProposal,
    Verdict,
)
from bracketgate.config.limits import DEFAULT_LIMITS_PATH, RiskLimits, load_limits
from bracketgate.core.clock import ManualClock
from tests.unit.riskkit import governor, open_limits, proposal, quote, snapshot

D = DenialCode


def raw(pid: str = "x1", *, side: Side = Side.BUY, qty: Any = 10, limit: Any = 100.0,
        tp: Any = 102.0, sl: Any = 99.0, market: bool = False) -> TradeProposal:
    """A proposal built WITHOUT validation: any number in any field."""
    return TradeProposal.model_construct(
        proposal_id=pid, agent_id="a1", symbol="AAPL", sec_type=SecType.STK, exchange="SMART",
        currency="USD", side=side, quantity=qty,
        order_type=OrderType.MKT if market else OrderType.LMT,
        limit_price=None if market else limit, take_profit=tp, stop_loss=sl,
        tif=TimeInForce.DAY, expiry=None, strike=None, right=None, cancel_entry_after_s=None)


def default_governor() -> tuple[RiskGovernor, ManualClock]:
    """The limits a daemon runs with out of the box (config/limits.default.toml)."""
    return governor(load_limits(DEFAULT_LIMITS_PATH))


def codes(d: RiskDecision) -> list[DenialCode]:
    return [r.code for r in d.reasons]


# ============================================================================ the defects filed


def test_an_entry_a_thousand_times_the_quote_is_refused_by_default() -> None:
    """BUY 1 AAPL at 100,000 with AAPL quoted at 100: every size and loss limit holds (it was
    approved and sent to IB); the entry band names the field, its bound and the price."""
    gov, clock = default_governor()
    d = gov.evaluate(proposal(qty=1, limit=100_000.0, tp=100_400.0, sl=99_800.0), snapshot(clock))
    assert d.verdict is Verdict.REJECTED
    (band,) = [r for r in d.reasons if r.code is D.PRICE_OUT_OF_BAND]
    assert band.field == "limit_price"
    assert band.limit == pytest.approx(120.0) and band.value == 100_000.0
    assert "20% above the quote 100" in band.message
    assert len(gov.ledger) == 0


def test_a_take_profit_of_1e300_is_refused() -> None:
    # the contract refuses it ...
    with pytest.raises(ValidationError) as e:
        proposal(tp=1e300)
    assert {err["loc"] for err in e.value.errors()} == {("take_profit",)}
    # ... and so does the governor when a proposal was built without validation
    gov, clock = default_governor()
    d = gov.evaluate(raw(tp=1e300), snapshot(clock))
    assert codes(d) == [D.PRICE_OUT_OF_BAND]
    assert d.reasons[0].field == "take_profit" and d.reasons[0].value == 1e300
    assert d.reasons[0].limit == MAX_PRICE
    # a take-profit the contract admits (1e8) but absurd for a $100 stock: the exit band
    d = gov.evaluate(proposal("x2", tp=1e8), snapshot(clock))
    band = [r for r in d.reasons if r.code is D.PRICE_OUT_OF_BAND]
    assert band and band[0].field == "take_profit" and band[0].limit == pytest.approx(150.0)


def test_a_take_profit_of_5e_324_is_refused() -> None:
    """SELL at 100, take-profit 5e-324 (the smallest float): zero ticks passed the tick check."""
    gov, clock = default_governor()
    p = proposal(side="SELL", limit=100.0, sl=101.0, tp=5e-324)
    d = gov.evaluate(p, snapshot(clock))
    assert d.verdict is Verdict.REJECTED
    assert {D.PRICE_OUT_OF_BAND, D.PRICE_OFF_TICK} <= set(codes(d))
    band = next(r for r in d.reasons if r.code is D.PRICE_OUT_OF_BAND)
    assert band.field == "take_profit" and band.value == 5e-324 and band.limit == pytest.approx(50.0)


def test_a_price_near_float_max_is_refused_not_an_overflow_error() -> None:
    assert rules.on_tick(1.8e306, 0.01, 1e-6) is False          # was OverflowError
    assert rules.on_tick(1.7976931348623157e308, 1e-9, 1e-6) is False
    gov, clock = default_governor()
    for i, fields in enumerate([dict(tp=1.8e306), dict(limit=1.8e306, tp=1.9e306, sl=1e306),
                                dict(sl=1.8e306, side=Side.SELL, tp=1.0)]):
        d = gov.evaluate(raw(f"big{i}", **fields), snapshot(clock))
        assert d.verdict is Verdict.REJECTED and codes(d) == [D.PRICE_OUT_OF_BAND]
        RiskDecision.model_validate_json(d.model_dump_json())


# ============================================================================ bands


def test_no_quote_fails_closed_unless_the_bands_are_off() -> None:
    gov, clock = governor(open_limits())
    d = gov.evaluate(proposal(), snapshot(clock, quotes={}))
    assert codes(d) == [D.QUOTE_UNAVAILABLE]
    assert "price_bands = false" in d.reasons[0].message
    gov, clock = governor(open_limits(price_bands=False))
    assert gov.evaluate(proposal(), snapshot(clock, quotes={})).verdict is Verdict.APPROVED
    assert gov.evaluate(proposal("p2", qty=1, limit=1e8, tp=1.01e8, sl=0.99e8),
                        snapshot(clock, quotes={})) \
        .verdict is Verdict.APPROVED   # off means off: only the absolute bound remains


@pytest.mark.parametrize("bid,ask,last,ref", [
    (99.0, 101.0, 50.0, 100.0),        # mid when bid and ask are both usable
    (None, 101.0, 100.0, 100.0),       # else last
    (-1.0, 101.0, 100.0, 100.0),       # an unset (-1) bid is not usable
    (None, 101.0, None, 101.0),        # else the one side there is (a stream's first tick)
    (99.0, None, -1.0, 99.0),
    (5e-324, 5e-324, 7.0, 7.0),        # a mid that rounds to 0 is no centre
    (1e308, 1.7e308, 100.0, 1.35e308), # halves: no overflow to inf
])
def test_reference_price_is_the_mid_else_the_last(bid: float | None, ask: float | None,
                                                  last: float | None, ref: float) -> None:
    clock = ManualClock()
    c = rules.RuleContext(proposal=proposal(), quote=quote(clock, bid=bid, ask=ask, last=last))
    assert rules.reference_price(c) == pytest.approx(ref)


def test_a_quote_without_any_usable_price_fails_closed() -> None:
    gov, clock = governor(open_limits())
    snap = snapshot(clock, quotes={"AAPL": quote(clock, bid=None, ask=0.0, last=-1.0)})
    d = gov.evaluate(proposal(), snap)
    assert codes(d) == [D.QUOTE_UNAVAILABLE]


def test_an_old_quote_still_centres_the_band() -> None:
    """A band is a sanity bound: a limit entry is checked against any quote the adapter holds
    (a MKT entry still needs a fresh one to be priced)."""
    gov, clock = governor(open_limits(entry_band_pct=10.0))
    snap = snapshot(clock)
    clock.advance(5.0)
    snap = snapshot(clock, quotes={"AAPL": quote(clock, ts=clock.now().replace(year=2020))})
    assert gov.evaluate(proposal(), snap).verdict is Verdict.APPROVED
    assert codes(gov.evaluate(proposal("p2", limit=120.0, tp=122.0, sl=119.0), snap)) == \
        [D.PRICE_OUT_OF_BAND]


def test_the_default_bands_are_what_a_trader_would_accept() -> None:
    lim = load_limits(DEFAULT_LIMITS_PATH)
    assert lim.price_bands is True
    assert 5.0 <= lim.entry_band_pct <= 25.0 and lim.exit_band_pct >= lim.entry_band_pct
    gov, clock = default_governor()
    # a resting BUY 13 % under the market (the e2e tests' BUY at 200 with AAPL at 230)
    snap = snapshot(clock, quotes={"AAPL": quote(clock, bid=229.99, ask=230.01, last=230.0)})
    assert gov.evaluate(proposal(limit=200.0, tp=210.0, sl=196.0), snap).verdict is Verdict.APPROVED


# ============================================================================ float extremes

FINITE = st.floats(allow_nan=False, allow_infinity=False)
NEAR = st.floats(min_value=40.0, max_value=160.0).map(lambda v: round(v, 2))
PRICE = st.one_of(FINITE, NEAR, st.sampled_from([5e-324, 1e-300, 1e300, 1.8e306, 1.79e308,
                                                 -0.0, 0.0, MAX_PRICE, 1e9 + 1]))
QUOTE_PX = st.one_of(st.none(), FINITE, NEAR)


def _in_band(px: float, ref: float, pct: float) -> bool:
    return abs(px - ref) <= ref * pct / 100.0 * (1 + 1e-12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=PRICE, tp=PRICE, sl=PRICE, side=st.sampled_from(list(Side)), market=st.booleans(),
       qty=st.one_of(st.integers(1, 10_000_000), st.integers(-5, 10**30)),
       bid=QUOTE_PX, ask=QUOTE_PX, last=QUOTE_PX)
def test_any_finite_prices_get_a_decision_never_an_exception(
        limit: float, tp: float, sl: float, side: Side, market: bool, qty: int,
        bid: float | None, ask: float | None, last: float | None) -> None:
    gov, clock = governor(open_limits(entry_band_pct=20.0, exit_band_pct=50.0,
                                      max_stop_distance_pct=100.0))
    snap = snapshot(clock, quotes={"AAPL": quote(clock, bid=bid, ask=ask, last=last)})
    d = gov.evaluate(raw(side=side, qty=qty, limit=limit, tp=tp, sl=sl, market=market), snap)
    assert d.verdict in (Verdict.APPROVED, Verdict.REJECTED)
    RiskDecision.model_validate_json(d.model_dump_json())   # the answer always serialises
    assert (d.verdict is Verdict.APPROVED) == (len(gov.ledger) == 1)
    if d.verdict is Verdict.APPROVED:
        prices = [tp, sl] + ([] if market else [limit])
        assert all(0 < px <= MAX_PRICE for px in prices)
        assert 0 < qty <= 10_000_000
        ref = rules.reference_price(rules.RuleContext(proposal=proposal(), quote=next(iter(snap.quotes.values()))))
        assert isinstance(ref, float) and math.isfinite(ref)
        assert market or _in_band(limit, ref, 20.0)
        assert _in_band(tp, ref, 50.0) and _in_band(sl, ref, 50.0)


@settings(max_examples=200, deadline=None)
@given(limit=st.floats(min_value=5e-324, max_value=MAX_PRICE),
       tp=st.floats(min_value=5e-324, max_value=MAX_PRICE),
       sl=st.floats(min_value=5e-324, max_value=MAX_PRICE),
       qty=st.integers(1, 10_000_000), mult=st.sampled_from([1.0, 50.0, 100.0, 1e6]))
def test_valid_proposals_at_the_contract_extremes_get_a_decision(
        limit: float, tp: float, sl: float, qty: int, mult: float) -> None:
    """Every price the contract admits, any quantity, a large multiplier: a decision."""
    lim = RiskLimits.model_validate({**open_limits().model_dump(), "price_bands": False,
                                     "symbols": {"AAPL": {"multiplier": mult}}})
    gov, clock = governor(lim)
    d = gov.evaluate(proposal(qty=qty, limit=limit, tp=tp, sl=sl), snapshot(clock))
    RiskDecision.model_validate_json(d.model_dump_json())
    assert rules.worst_case_loss(qty, limit, sl, mult, 0.01, lim, market_entry=True) >= 0


def test_the_json_schema_carries_the_price_bound() -> None:
    from bracketgate.bus.messages import json_schemas

    props = json_schemas()["TradeProposal"]["properties"]
    # signed since combos (issue 12): a combo's (BAG) net price may be a credit (< 0); a single
    # leg's must be > 0 and no price is 0 (the validator; the description says so)
    bound = {"minimum": -MAX_PRICE, "maximum": MAX_PRICE, "type": "number",
             "description": "> 0; a combo's (sec_type BAG) net price may be negative (a credit), "
                            "never 0"}
    assert props["take_profit"] == {**bound, "title": "Take Profit"}
    assert bound in props["limit_price"]["anyOf"]
