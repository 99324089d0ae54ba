"""The governor keys market data by contract (IB conId), never by symbol (issue 8, item 5).

A stock and its option, and two expiries of one future, share a symbol but are different
contracts: each market entry is risk-priced at its own quote, and one contract's positions,
reservations and working orders never count against another's position limits — while the
account-wide exposure limits still sum every contract's notional, with its multiplier.
The governor learns a proposal's conId from `contract_info` (in the daemon: the adapter's
cached, IB-resolved contract), as here.
"""

from __future__ import annotations

from typing import Any

import pytest

from bracketgate.bus.messages import (
    DenialCode,
    Fill,
    Leg,
    Position,
    Quote,
    ResolvedContract,
    RiskDecision,
    SecType,
    Side,
    TradeProposal,
    Verdict,
    WorkingOrder,
)
from bracketgate.core.clock import ManualClock
from tests.unit.riskkit import governor, open_limits, snapshot

D = DenialCode

STOCK = ResolvedContract(con_id=265598, symbol="AAPL", sec_type=SecType.STK, exchange="SMART",
                         currency="USD", multiplier=1.0, min_tick=0.01)
CALL = ResolvedContract(con_id=700001, symbol="AAPL", sec_type=SecType.OPT, exchange="SMART",
                        currency="USD", multiplier=100.0, min_tick=0.01, expiry="20261218",
                        strike=230.0, right="C")
ES_DEC = ResolvedContract(con_id=800001, symbol="ES", sec_type=SecType.FUT, exchange="CME",
                          currency="USD", multiplier=50.0, min_tick=0.25, expiry="20261218")
ES_MAR = ResolvedContract(con_id=800002, symbol="ES", sec_type=SecType.FUT, exchange="CME",
                          currency="USD", multiplier=50.0, min_tick=0.25, expiry="20270319")
KNOWN = (STOCK, CALL, ES_DEC, ES_MAR)


def contract_info(p: TradeProposal) -> ResolvedContract | None:
    """What the adapter's cache answers: the contract IB resolved for this proposal, if any."""
    for c in KNOWN:
        if (c.symbol, c.sec_type) != (p.symbol, p.sec_type):
            continue
        if p.sec_type is SecType.OPT and (c.expiry, c.strike, c.right) != (p.expiry, p.strike, p.right):
            continue
        if p.sec_type is SecType.FUT and not (c.expiry or "").startswith(p.expiry or "-"):
            continue
        return c
    return None


def gov(**limits: Any):
    # these contracts have no quotes unless a test gives them one: the bands (tests/unit/
    # test_price_bands.py) are not what is tested here
    limits.setdefault("price_bands", False)
    return governor(open_limits(**limits), contract_info=contract_info)


def bracket(c: ResolvedContract, pid: str, *, qty: int = 10, side: str = "BUY",
            entry: float | None = None, tp: float, sl: float) -> TradeProposal:
    extra: dict[str, Any] = {}
    if c.sec_type is SecType.OPT:
        extra = dict(expiry=c.expiry, strike=c.strike, right=c.right)
    elif c.sec_type is SecType.FUT:
        extra = dict(expiry=(c.expiry or "")[:6], exchange="CME")
    return TradeProposal(proposal_id=pid, agent_id="a1", symbol=c.symbol, sec_type=c.sec_type,
                         side=Side(side), quantity=qty, order_type="MKT" if entry is None else "LMT",
                         limit_price=entry, take_profit=tp, stop_loss=sl, **extra)


def quote(clock: ManualClock, c: ResolvedContract, bid: float, ask: float) -> Quote:
    return Quote(con_id=c.con_id, symbol=c.symbol, bid=bid, ask=ask, last=(bid + ask) / 2,
                 ts=clock.now())


def held(c: ResolvedContract, qty: float, price: float) -> Position:
    return Position(con_id=c.con_id, symbol=c.symbol, sec_type=c.sec_type.value, quantity=qty,
                    avg_cost=price * c.multiplier, multiplier=c.multiplier, market_price=price,
                    market_value=qty * price * c.multiplier, expiry=c.expiry, strike=c.strike,
                    right=c.right.value if c.right else None)


def codes(d: RiskDecision) -> list[DenialCode]:
    return [r.code for r in d.reasons]


# ====================================================================== market entries


def test_stock_and_its_option_are_each_priced_at_their_own_quote() -> None:
    g, clock = gov(max_stop_distance_pct=10.0)
    snap = snapshot(clock, quotes=[quote(clock, STOCK, 228.40, 228.60),
                                   quote(clock, CALL, 5.10, 5.30)])
    stock = bracket(STOCK, "stk", tp=235.0, sl=226.0)
    option = bracket(CALL, "opt", qty=2, tp=6.50, sl=4.90)
    ds, do = g.evaluate(stock, snap), g.evaluate(option, snap)
    assert ds.verdict is Verdict.APPROVED, ds.reasons     # at the stock's ask, not 5.30
    assert do.verdict is Verdict.APPROVED, do.reasons     # at the option's ask, not 228.60
    rs, ro = g.ledger.get("stk"), g.ledger.get("opt")
    assert rs is not None and ro is not None
    assert (rs.con_id, rs.entry_price, rs.multiplier) == (STOCK.con_id, 228.60, 1.0)
    assert (ro.con_id, ro.entry_price, ro.multiplier) == (CALL.con_id, 5.30, 100.0)


def test_an_option_without_its_own_quote_is_not_priced_at_the_stocks() -> None:
    g, clock = gov(max_stop_distance_pct=10.0)
    snap = snapshot(clock, quotes=[quote(clock, STOCK, 228.40, 228.60)])
    d = g.evaluate(bracket(CALL, "opt", qty=2, tp=6.50, sl=4.90), snap)
    assert codes(d) == [D.QUOTE_UNAVAILABLE]
    assert d.reasons[0].value == CALL.con_id
    # and the stock without its quote is not priced at the option's
    snap = snapshot(clock, quotes=[quote(clock, CALL, 5.10, 5.30)])
    assert codes(g.evaluate(bracket(STOCK, "stk", tp=235.0, sl=226.0), snap)) == [D.QUOTE_UNAVAILABLE]


def test_an_unresolved_contract_fails_closed_even_with_a_quote_for_its_symbol() -> None:
    g, clock = gov()
    put = TradeProposal(proposal_id="put", agent_id="a1", symbol="AAPL", sec_type="OPT",
                        expiry="20261218", strike=200.0, right="P", side=Side.BUY, quantity=1,
                        order_type="MKT", take_profit=3.0, stop_loss=1.0)
    snap = snapshot(clock, quotes=[quote(clock, STOCK, 228.40, 228.60)])
    assert codes(g.evaluate(put, snap)) == [D.UNKNOWN_CONTRACT]


def test_two_futures_expiries_are_each_priced_at_their_own_quote() -> None:
    g, clock = gov(max_stop_distance_pct=5.0)
    snap = snapshot(clock, quotes=[quote(clock, ES_DEC, 6000.00, 6000.25),
                                   quote(clock, ES_MAR, 6080.00, 6080.25)])
    dec = bracket(ES_DEC, "dec", qty=1, tp=6100.0, sl=5950.0)
    mar = bracket(ES_MAR, "mar", qty=1, side="SELL", tp=6000.0, sl=6120.0)
    assert g.evaluate(dec, snap).verdict is Verdict.APPROVED
    assert g.evaluate(mar, snap).verdict is Verdict.APPROVED
    assert g.ledger.get("dec").entry_price == 6000.25      # type: ignore[union-attr]
    assert g.ledger.get("mar").entry_price == 6080.00      # type: ignore[union-attr]
    # a December take-profit below March's bid would be bad geometry only at March's price
    mar2 = bracket(ES_MAR, "mar2", qty=1, tp=6050.0, sl=6000.0)
    assert codes(g.evaluate(mar2, snap)) == [D.BRACKET_GEOMETRY]


# ====================================================================== positions and reservations


def test_reservations_of_an_option_do_not_count_against_the_stocks_position_limit() -> None:
    g, clock = gov(max_position_units=10)
    snap = snapshot(clock)
    assert g.evaluate(bracket(CALL, "o1", qty=10, entry=5.0, tp=6.0, sl=4.5), snap).verdict \
        is Verdict.APPROVED
    assert g.evaluate(bracket(STOCK, "s1", qty=10, entry=228.0, tp=235.0, sl=226.0), snap).verdict \
        is Verdict.APPROVED
    assert g.ledger.pending_units(STOCK.con_id, +1) == 10
    assert g.ledger.pending_units(CALL.con_id, +1) == 10
    # each contract is at its own limit now
    assert codes(g.evaluate(bracket(STOCK, "s2", qty=1, entry=228.0, tp=235.0, sl=226.0), snap)) \
        == [D.POSITION_LIMIT]
    assert codes(g.evaluate(bracket(CALL, "o2", qty=1, entry=5.0, tp=6.0, sl=4.5), snap)) \
        == [D.POSITION_LIMIT]


def test_positions_of_one_contract_do_not_count_against_another() -> None:
    g, clock = gov(max_position_units=10)
    snap = snapshot(clock, positions=[held(CALL, 10, 5.0), held(ES_DEC, 10, 6000.0)])
    g.on_snapshot(snap)
    assert g.evaluate(bracket(STOCK, "s1", qty=10, entry=228.0, tp=235.0, sl=226.0), snap).verdict \
        is Verdict.APPROVED
    assert g.evaluate(bracket(ES_MAR, "m1", qty=10, entry=6080.0, tp=6100.0, sl=6070.0),
                      snap).verdict is Verdict.APPROVED
    assert codes(g.evaluate(bracket(CALL, "o1", qty=1, entry=5.0, tp=6.0, sl=4.5), snap)) \
        == [D.POSITION_LIMIT]
    assert codes(g.evaluate(bracket(ES_DEC, "d1", qty=1, entry=6000.0, tp=6100.0, sl=5950.0),
                            snap)) == [D.POSITION_LIMIT]


def test_reducing_only_counts_the_proposals_own_contract() -> None:
    g, clock = gov()
    snap = snapshot(clock, positions=[held(CALL, 10, 5.0)])
    g.on_snapshot(snap)
    g.set_state(g.state.REDUCING, "test", "operator")
    # selling stock does not reduce a long call
    assert codes(g.evaluate(bracket(STOCK, "s", qty=5, side="SELL", entry=228.0, tp=220.0,
                                    sl=230.0), snap)) == [D.REDUCING_ONLY]
    assert g.evaluate(bracket(CALL, "o", qty=5, side="SELL", entry=5.0, tp=4.0, sl=5.5),
                      snap).verdict is Verdict.APPROVED


def test_working_orders_of_an_option_do_not_count_against_the_stock() -> None:
    g, clock = gov(max_position_units=10)
    working = [
        WorkingOrder(order_id=1, order_ref="old", symbol="AAPL", con_id=CALL.con_id, multiplier=100,
                     side=Side.BUY,
                     order_type="LMT", quantity=10, remaining=10, limit_price=5.0, status="Submitted"),
        WorkingOrder(order_id=2, parent_id=1, order_ref="old", symbol="AAPL", con_id=CALL.con_id,
                     multiplier=100,
                     side=Side.SELL, order_type="STP", quantity=10, remaining=10, stop_price=4.0,
                     status="PreSubmitted"),
    ]
    snap = snapshot(clock, working=working)
    g.on_snapshot(snap)
    # the foreign bracket's worst case uses the option's multiplier: 10 x (5 - 4) x 100
    assert g.summary()["open_worst_case"] == 1000.0
    assert g.evaluate(bracket(STOCK, "s1", qty=10, entry=228.0, tp=235.0, sl=226.0), snap).verdict \
        is Verdict.APPROVED
    assert codes(g.evaluate(bracket(CALL, "o1", qty=1, entry=5.0, tp=6.0, sl=4.5), snap)) \
        == [D.POSITION_LIMIT]


def test_exposure_limits_still_sum_every_contract_with_its_multiplier() -> None:
    # gross: 10 calls x 5.00 x 100 = 5,000 held; a 10 x 228 stock buy adds 2,280 -> 7,280
    nlv = 1_000_000.0
    g, clock = gov(max_gross_exposure_pct=7_000 / nlv * 100)
    snap = snapshot(clock, nlv=nlv, positions=[held(CALL, 10, 5.0)])
    g.on_snapshot(snap)
    d = g.evaluate(bracket(STOCK, "s1", qty=10, entry=228.0, tp=235.0, sl=226.0), snap)
    assert codes(d) == [D.GROSS_EXPOSURE_LIMIT]
    assert d.reasons[0].value == 7_280.0
    assert g.evaluate(bracket(STOCK, "s2", qty=8, entry=228.0, tp=235.0, sl=226.0), snap).verdict \
        is Verdict.APPROVED                                  # 5,000 + 1,824


def test_an_agents_exposure_marks_each_contract_at_its_own_price_and_multiplier() -> None:
    g, clock = gov(agent={"exposure_limit": 6_000.0})
    snap = snapshot(clock, quotes=[quote(clock, STOCK, 228.40, 228.60),
                                   quote(clock, CALL, 5.10, 5.30)])
    g.on_snapshot(snap)
    o = bracket(CALL, "o1", qty=10, entry=5.0, tp=6.0, sl=4.5)
    assert g.evaluate(o, snap).verdict is Verdict.APPROVED
    g.on_fill(Fill(proposal_id="o1", agent_id="a1", order_id=1, leg=Leg.ENTRY, exec_id="e1",
                   symbol="AAPL", con_id=CALL.con_id, side=Side.BUY, quantity=10, price=5.0,
                   ts=clock.now()))
    snap = snapshot(clock, quotes=list(snap.quotes.values()))
    g.on_snapshot(snap)                                      # the fill is settled
    # held: 10 calls at the call's mid 5.20 x 100 = 5,200 (not at the stock's 228.50, x 1)
    d = g.evaluate(bracket(STOCK, "s1", qty=4, entry=228.0, tp=235.0, sl=226.0), snap)
    assert codes(d) == [D.AGENT_EXPOSURE_LIMIT]
    assert d.reasons[0].value == pytest.approx(5_200.0 + 4 * 228.0)
    assert g.evaluate(bracket(STOCK, "s2", qty=3, entry=228.0, tp=235.0, sl=226.0), snap).verdict \
        is Verdict.APPROVED                                  # 5,200 + 684
