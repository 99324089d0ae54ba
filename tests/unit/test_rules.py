"""Every rule, table-driven: approved exactly at its limit, rejected just past it.

Each case runs through a fresh RiskGovernor (so the context the rule reads is built the real
way) with limits that open every check except the one under test (riskkit.open_limits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from bracketgate.agents import rules
from bracketgate.agents.risk import RiskGovernor
from bracketgate.bus.messages import (
    DENIAL_MESSAGES,
    DenialCode,
    Leg,
    PortfolioSnapshot,
    ResolvedContract,
    SecType,
    TradeProposal,
    TradingState,
    Verdict,
)
from bracketgate.config.limits import RiskLimits
from bracketgate.core.clock import ManualClock
from tests.unit.riskkit import fill, governor, open_limits, position, proposal, quote, snapshot

D = DenialCode
Setup = Callable[[RiskGovernor, ManualClock], PortfolioSnapshot]


def plain(gov: RiskGovernor, clock: ManualClock) -> PortfolioSnapshot:
    return snapshot(clock)


def holding(*positions: Any) -> Setup:
    def setup(gov: RiskGovernor, clock: ManualClock) -> PortfolioSnapshot:
        return snapshot(clock, positions=positions)
    return setup


def with_daily(daily: float) -> Setup:
    def setup(gov: RiskGovernor, clock: ManualClock) -> PortfolioSnapshot:
        return snapshot(clock, daily=daily)
    return setup


def after_approvals(n: int, agent: str = "a1") -> Setup:
    """n brackets already approved and open (other symbol, so only counts interact)."""
    def setup(gov: RiskGovernor, clock: ManualClock) -> PortfolioSnapshot:
        snap = snapshot(clock)
        for i in range(n):
            d = gov.evaluate(proposal(f"pre{i}", agent=agent, symbol="MSFT", qty=1), snap)
            assert d.verdict is Verdict.APPROVED, d.reasons
        return snap
    return setup


def agent_realized(pnl: float) -> Setup:
    def setup(gov: RiskGovernor, clock: ManualClock) -> PortfolioSnapshot:
        p = proposal("old", agent="a1")
        gov.on_fill(fill(p, clock, leg=Leg.STOP_LOSS, realized=pnl))
        return snapshot(clock)
    return setup


def reducing(*positions: Any) -> Setup:
    def setup(gov: RiskGovernor, clock: ManualClock) -> PortfolioSnapshot:
        gov.set_state(TradingState.REDUCING, "test", "operator")
        return snapshot(clock, positions=positions)
    return setup


def pending(*approved: TradeProposal) -> Setup:
    def setup(gov: RiskGovernor, clock: ManualClock) -> PortfolioSnapshot:
        snap = snapshot(clock)
        for p in approved:
            assert gov.evaluate(p, snap).verdict is Verdict.APPROVED
        return snap
    return setup


@dataclass
class Case:
    name: str
    code: DenialCode
    limits: dict[str, Any]
    ok: TradeProposal
    bad: TradeProposal
    setup: Setup = plain
    bad_setup: Setup | None = None                     # default: the same as setup
    kw: dict[str, Any] = field(default_factory=dict)   # RiskGovernor keyword arguments

    def __str__(self) -> str:
        return self.name


P = proposal  # BUY 10 AAPL @100, tp 102, sl 99: worst case 10, notional 1000

CASES = [
    Case("order quantity", D.MAX_ORDER_QUANTITY, dict(max_order_quantity=10), P(qty=10), P(qty=11)),
    Case("order quantity per symbol", D.MAX_ORDER_QUANTITY,
         dict(symbols={"AAPL": {"max_order_quantity": 10}}), P(qty=10), P(qty=11)),
    Case("order notional", D.MAX_ORDER_NOTIONAL, dict(max_order_notional=1000.0), P(qty=10), P(qty=11)),
    Case("position units (held)", D.POSITION_LIMIT, dict(max_position_units=50.0),
         P(qty=10), P(qty=11), holding(position("AAPL", 40))),
    Case("position units (short, selling)", D.POSITION_LIMIT, dict(max_position_units=50.0),
         P(side="SELL", qty=10), P(side="SELL", qty=11), holding(position("AAPL", -40))),
    Case("position units (pending)", D.POSITION_LIMIT, dict(max_position_units=20.0),
         P("p2", qty=10), P("p2", qty=11), pending(P("p0", qty=10))),
    Case("position notional", D.POSITION_NOTIONAL_LIMIT, dict(max_position_notional=5000.0),
         P(qty=10), P(qty=11), holding(position("AAPL", 40))),
    Case("gross exposure", D.GROSS_EXPOSURE_LIMIT, dict(max_gross_exposure_pct=0.5),
         P(qty=10), P(qty=11), holding(position("MSFT", -40))),
    Case("net exposure", D.NET_EXPOSURE_LIMIT, dict(max_net_exposure_pct=0.5),
         P(qty=10), P(qty=11), holding(position("MSFT", 40))),
    Case("net exposure (pending sells do not offset pending buys)", D.NET_EXPOSURE_LIMIT,
         dict(max_net_exposure_pct=0.5), P(qty=10), P(qty=11),
         pending(P("b", symbol="MSFT", qty=40), P("s", symbol="MSFT", side="SELL", qty=40))),
    Case("open brackets", D.MAX_OPEN_BRACKETS, dict(max_open_brackets=3),
         P(), P(), after_approvals(2, agent="z"), bad_setup=after_approvals(3, agent="z")),
    Case("open brackets per agent", D.MAX_OPEN_BRACKETS_AGENT, dict(agent={"max_open_brackets": 2}),
         P(), P(), after_approvals(1), bad_setup=after_approvals(2)),
    # agents named in the limits file have budgets of their own ...
    Case("open brackets per agent (others unaffected)", D.MAX_OPEN_BRACKETS_AGENT,
         dict(agent={"max_open_brackets": 2}, agents={"a1": {}, "a2": {}}), P(agent="a2"), P(),
         after_approvals(2)),
    # ... every other agent_id shares ONE budget (issue 10): inventing ids buys nothing
    Case("unregistered agent ids share one budget", D.MAX_OPEN_BRACKETS_AGENT,
         dict(agent={"max_open_brackets": 2}), P(agent="a2"), P(agent="invented-9"),
         after_approvals(1), bad_setup=after_approvals(2)),
    Case("per-trade loss", D.PER_TRADE_LOSS_LIMIT, dict(per_trade_loss_limit=10.0), P(qty=10), P(qty=11)),
    Case("per-trade loss with slippage", D.PER_TRADE_LOSS_LIMIT,
         dict(per_trade_loss_limit=12.0, slippage_ticks=20.0), P(qty=10), P(qty=11)),
    Case("per-trade loss, MKT entry slips twice", D.PER_TRADE_LOSS_LIMIT,
         dict(per_trade_loss_limit=14.0, slippage_ticks=20.0),  # (1 + .2 + .2) x 10
         P(qty=10, limit=None, tp=102.01, sl=99.01), P(qty=11, limit=None, tp=102.01, sl=99.01),
         lambda g, c: snapshot(c, quotes=[_quote(c)])),
    Case("per-trade loss %", D.PER_TRADE_LOSS_PCT_LIMIT, dict(per_trade_loss_pct=0.001), P(qty=10), P(qty=11)),
    Case("daily loss (today's loss)", D.DAILY_LOSS_LIMIT, dict(daily_loss_limit=110.0),
         P(qty=10), P(qty=11), with_daily(-100.0)),
    Case("daily loss (profit does not extend)", D.DAILY_LOSS_LIMIT, dict(daily_loss_limit=10.0),
         P(qty=10), P(qty=11), with_daily(+5000.0)),
    Case("daily loss (open brackets)", D.DAILY_LOSS_LIMIT, dict(daily_loss_limit=13.0),
         P(qty=10), P(qty=11), after_approvals(3)),
    Case("agent loss", D.AGENT_LOSS_LIMIT, dict(agent={"loss_limit": 20.0}),
         P(qty=10), P(qty=11), agent_realized(-10.0)),
    Case("agent loss override", D.AGENT_LOSS_LIMIT, dict(agents={"a1": {"loss_limit": 10.0}}),
         P(qty=10), P(qty=11)),
    Case("agent exposure", D.AGENT_EXPOSURE_LIMIT, dict(agent={"exposure_limit": 1000.0}),
         P(qty=10), P(qty=11)),
    Case("reward:risk", D.REWARD_RISK_TOO_LOW, dict(min_reward_risk=2.0), P(tp=102.0), P(tp=101.99)),
    Case("stop too close", D.STOP_DISTANCE_OUT_OF_BOUNDS, dict(min_stop_distance_pct=1.0),
         P(sl=99.0), P(sl=99.01)),
    Case("stop too far", D.STOP_DISTANCE_OUT_OF_BOUNDS, dict(max_stop_distance_pct=5.0),
         P(sl=95.0, tp=110.0), P(sl=94.99, tp=110.0)),
    Case("geometry BUY stop", D.BRACKET_GEOMETRY, {}, P(sl=99.99), P(sl=100.0)),
    Case("geometry BUY take-profit", D.BRACKET_GEOMETRY, {}, P(tp=100.01), P(tp=100.0)),
    Case("geometry SELL", D.BRACKET_GEOMETRY, {}, P(side="SELL", sl=100.01, tp=99.99),
         P(side="SELL", sl=99.99, tp=98.0)),
    Case("tick (stock)", D.PRICE_OFF_TICK, {}, P(limit=100.01, sl=99.0, tp=102.0),
         P(limit=100.005, sl=99.0, tp=102.0)),
    Case("tick (float noise tolerated)", D.PRICE_OFF_TICK, {}, P(limit=0.1 + 0.2, sl=0.2, tp=0.5),
         P(limit=0.3 + 0.001, sl=0.2, tp=0.5)),
    Case("tick (future)", D.PRICE_OFF_TICK, dict(symbols={"ES": {"multiplier": 50.0}},
                                                 price_bands=False),
         P(symbol="ES", sec_type=SecType.FUT, expiry="202612", limit=5000.25, sl=4990.0, tp=5020.0),
         P(symbol="ES", sec_type=SecType.FUT, expiry="202612", limit=5000.1, sl=4990.0, tp=5020.0)),
    Case("tick (contract details)", D.PRICE_OFF_TICK, dict(price_bands=False),
         P(limit=100.05, sl=99.0, tp=102.0),
         P(limit=100.01, sl=99.0, tp=102.0),
         kw=dict(contract_info=lambda p: ResolvedContract(
             con_id=1, symbol=p.symbol, sec_type=p.sec_type, exchange="SMART", currency="USD",
             min_tick=0.05))),
    # the quote is 100 (riskkit's default snapshot): the bands are 10 % and 50 % wide here
    Case("price band: entry above", D.PRICE_OUT_OF_BAND, dict(entry_band_pct=10.0),
         P(limit=110.0, sl=109.0, tp=112.0), P(limit=110.01, sl=109.0, tp=112.0)),
    Case("price band: entry below", D.PRICE_OUT_OF_BAND, dict(entry_band_pct=10.0),
         P(side="SELL", limit=90.0, sl=91.0, tp=88.0), P(side="SELL", limit=89.99, sl=91.0, tp=88.0)),
    Case("price band: take-profit", D.PRICE_OUT_OF_BAND, dict(exit_band_pct=50.0),
         P(tp=150.0), P(tp=150.01)),
    Case("price band: stop (BUY)", D.PRICE_OUT_OF_BAND, dict(exit_band_pct=50.0),
         P(sl=50.0), P(sl=49.99)),
    Case("price band: stop (SELL)", D.PRICE_OUT_OF_BAND, dict(exit_band_pct=50.0),
         P(side="SELL", sl=150.0), P(side="SELL", sl=150.01)),
    Case("price band: market entry's exits", D.PRICE_OUT_OF_BAND, dict(exit_band_pct=50.0),
         P(limit=None, tp=150.0, sl=99.0), P(limit=None, tp=150.01, sl=99.0)),
    Case("price band: no quote fails closed", D.QUOTE_UNAVAILABLE, {}, P(symbol="AAPL"),
         P(symbol="AAPL"), bad_setup=lambda g, c: snapshot(c, quotes={"MSFT": quote(c, "MSFT")})),
    Case("symbol allow list", D.SYMBOL_NOT_ALLOWED, dict(allowed_symbols=["AAPL"]),
         P(symbol="AAPL"), P(symbol="MSFT")),
    Case("symbol deny list", D.SYMBOL_NOT_ALLOWED, dict(denied_symbols=["MSFT"]),
         P(symbol="AAPL"), P(symbol="MSFT")),
    Case("sec type", D.SEC_TYPE_NOT_ALLOWED, dict(allowed_sec_types=["STK"]), P(),
         P(symbol="AAPL", sec_type=SecType.OPT, expiry="20261218", strike=100.0, right="C",
           limit=5.0, sl=4.0, tp=7.0)),
    Case("reducing: sell <= long", D.REDUCING_ONLY, {}, P(side="SELL", qty=10), P(side="SELL", qty=11),
         reducing(position("AAPL", 10))),
    Case("reducing: buy <= |short|", D.REDUCING_ONLY, {}, P(qty=10), P(qty=11),
         reducing(position("AAPL", -10))),
    Case("reducing: growing refused", D.REDUCING_ONLY, {}, P(side="SELL", qty=1), P(qty=1),
         reducing(position("AAPL", 10))),
    Case("unknown contract", D.UNKNOWN_CONTRACT, dict(price_bands=False), P(symbol="AAPL"),
         P(symbol="NOPE"),
         kw=dict(contract_info=lambda p: None if p.symbol == "NOPE" else ResolvedContract(
             con_id=1, symbol=p.symbol, sec_type=p.sec_type, exchange="SMART", currency="USD"))),
    Case("future without multiplier", D.UNKNOWN_CONTRACT,
         dict(symbols={"ES": {"multiplier": 50.0}}, price_bands=False),
         P(symbol="ES", sec_type=SecType.FUT, expiry="202612", limit=5000.0, sl=4990.0, tp=5020.0),
         P(symbol="NQ", sec_type=SecType.FUT, expiry="202612", limit=5000.0, sl=4990.0, tp=5020.0)),
]


def _quote(clock: ManualClock) -> Any:
    return quote(clock, bid=99.99, ask=100.01)


def _decide(case: Case, p: TradeProposal, setup: Setup) -> list[DenialCode]:
    gov, clock = governor(open_limits(**case.limits), **case.kw)
    d = gov.evaluate(p, setup(gov, clock))
    assert (d.verdict is Verdict.APPROVED) == (not d.reasons)
    return [r.code for r in d.reasons]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule_at_and_past_the_limit(case: Case) -> None:
    ok_codes = _decide(case, case.ok, case.setup)
    assert ok_codes == [], f"{case.name}: at the limit should pass, got {ok_codes}"
    bad_codes = _decide(case, case.bad, case.bad_setup or case.setup)
    assert case.code in bad_codes, f"{case.name}: past the limit should deny {case.code}"


def _ny(day: int, h: int, m: int, s: int = 0) -> datetime:
    """November 2026 in New York is UTC-5; the 20th is a Friday."""
    return datetime(2026, 11, day, h + 5, m, s, tzinfo=timezone.utc)


@pytest.mark.parametrize("when,open_", [
    (_ny(20, 9, 29, 59), False), (_ny(20, 9, 30), True), (_ny(20, 15, 59, 59), True),
    (_ny(20, 16, 0), False), (_ny(21, 10, 0), False), (_ny(23, 10, 0), True),
])
def test_trading_hours_window(when: datetime, open_: bool) -> None:
    lim = open_limits(trading_hours=dict(start="09:30:00", end="16:00:00", weekdays=[0, 1, 2, 3, 4]))
    gov, clock = governor(lim, ManualClock(start=when))
    codes = [r.code for r in gov.evaluate(proposal(), snapshot(clock)).reasons]
    assert codes == ([] if open_ else [D.OUTSIDE_TRADING_HOURS])


def test_denial_carries_limit_value_and_message() -> None:
    gov, clock = governor(open_limits(max_order_quantity=10, per_trade_loss_limit=10.0))
    d = gov.evaluate(proposal(qty=11), snapshot(clock))
    by_code = {r.code: r for r in d.reasons}
    assert by_code[D.MAX_ORDER_QUANTITY].limit == 10 and by_code[D.MAX_ORDER_QUANTITY].value == 11
    assert by_code[D.PER_TRADE_LOSS_LIMIT].limit == 10.0
    assert by_code[D.PER_TRADE_LOSS_LIMIT].value == pytest.approx(11.0)
    for r in d.reasons:
        assert r.message.startswith(DENIAL_MESSAGES[r.code])
    # every reason serialises (the decision goes out as JSON)
    assert "MAX_ORDER_QUANTITY" in d.model_dump_json()


def test_all_failing_rules_are_reported() -> None:
    gov, clock = governor(open_limits(max_order_quantity=10, max_order_notional=1000.0,
                                      per_trade_loss_limit=10.0, min_reward_risk=3.0))
    d = gov.evaluate(proposal(qty=11), snapshot(clock))
    assert {r.code for r in d.reasons} == {D.MAX_ORDER_QUANTITY, D.MAX_ORDER_NOTIONAL,
                                          D.PER_TRADE_LOSS_LIMIT, D.REWARD_RISK_TOO_LOW}


def test_a_trade_that_shrinks_a_breach_is_admitted() -> None:
    """Past a position/exposure limit already (limits lowered): reducing trades still pass."""
    gov, clock = governor(open_limits(max_position_units=5.0, max_position_notional=100.0,
                                      max_gross_exposure_pct=0.001, max_net_exposure_pct=0.001))
    d = gov.evaluate(proposal(side="SELL", qty=10), snapshot(clock, positions=[position("AAPL", 40)]))
    assert d.verdict is Verdict.APPROVED, d.reasons


def test_agent_exposure_counts_its_fills_and_shrinks_by_selling() -> None:
    gov, clock = governor(open_limits(agent={"exposure_limit": 1500.0}))
    snap = snapshot(clock)
    first = proposal("p0", qty=10)
    assert gov.evaluate(first, snap).verdict is Verdict.APPROVED
    gov.on_fill(fill(first, clock))                 # the agent now holds 10 x 100
    codes = [r.code for r in gov.evaluate(proposal("p1", qty=6), snap).reasons]
    assert codes == [D.AGENT_EXPOSURE_LIMIT]        # 1000 held + 600 > 1500
    assert gov.evaluate(proposal("p2", side="SELL", qty=10, agent="a1"), snap).verdict \
        is Verdict.APPROVED                         # selling its own long shrinks it


def test_pending_reductions_use_up_reducing_room() -> None:
    gov, clock = governor()
    gov.set_state(TradingState.REDUCING, "test", "operator")
    snap = snapshot(clock, positions=[position("AAPL", 10)])
    assert gov.evaluate(proposal("s1", side="SELL", qty=6), snap).verdict is Verdict.APPROVED
    d = gov.evaluate(proposal("s2", side="SELL", qty=5), snap)
    assert [r.code for r in d.reasons] == [D.REDUCING_ONLY]
    assert d.reasons[0].limit == 4.0


def test_rate_limits_proposals_per_agent_and_orders() -> None:
    # both agents named in the limits file: each has a bucket of its own
    lim = open_limits(agent={"max_proposals_per_s": 1.0, "proposal_burst": 2},
                      agents={"a1": {}, "other": {}})
    gov, clock = governor(lim)
    snap = snapshot(clock)
    codes = [[r.code for r in gov.evaluate(proposal(f"p{i}"), snap).reasons] for i in range(3)]
    assert codes == [[], [], [D.RATE_LIMITED]]
    assert gov.evaluate(proposal("x", agent="other"), snap).verdict is Verdict.APPROVED
    clock.advance(1.0)
    assert gov.evaluate(proposal("p3"), snap).verdict is Verdict.APPROVED

    gov, clock = governor(open_limits(max_order_msgs_per_s=6.0))  # two brackets a second
    snap = snapshot(clock)
    codes = [[r.code for r in gov.evaluate(proposal(f"o{i}"), snap).reasons] for i in range(3)]
    assert codes == [[], [], [D.RATE_LIMITED]]
    clock.advance(0.5)   # 3 tokens back: one bracket
    assert gov.evaluate(proposal("o3"), snap).verdict is Verdict.APPROVED


def test_rejections_spend_no_order_messages() -> None:
    gov, clock = governor(open_limits(max_order_msgs_per_s=3.0, max_order_quantity=1))
    snap = snapshot(clock)
    for i in range(5):
        assert gov.evaluate(proposal(f"r{i}", qty=2), snap).verdict is Verdict.REJECTED
    assert gov.evaluate(proposal("ok", qty=1), snap).verdict is Verdict.APPROVED


def test_global_proposal_rate() -> None:
    gov, clock = governor(open_limits(max_proposals_per_s=1.0, proposal_burst=1))
    snap = snapshot(clock)
    assert gov.evaluate(proposal("a", agent="x"), snap).verdict is Verdict.APPROVED
    d = gov.evaluate(proposal("b", agent="y"), snap)
    assert [r.code for r in d.reasons] == [D.RATE_LIMITED] and d.reasons[0].value == "global"


# ------------------------------------------------------------------ pure helpers


def test_worst_case_loss_formula() -> None:
    lim = RiskLimits(slippage_ticks=2.0, slippage_pct=0.1)
    # |100 - 98| + (2 x 0.01 + 0.1 % x 98) per unit, x 10 units x multiplier 1
    assert rules.worst_case_loss(10, 100.0, 98.0, 1.0, 0.01, lim, market_entry=False) == \
        pytest.approx(10 * (2.0 + 0.02 + 0.098))
    # a MKT entry slips too: + (0.02 + 0.1)
    assert rules.worst_case_loss(10, 100.0, 98.0, 1.0, 0.01, lim, market_entry=True) == \
        pytest.approx(10 * (2.0 + 0.02 + 0.098 + 0.02 + 0.1))
    # futures: x multiplier
    assert rules.worst_case_loss(2, 5000.0, 4990.0, 50.0, 0.25, RiskLimits(slippage_ticks=0.0),
                                 market_entry=False) == pytest.approx(1000.0)


@pytest.mark.parametrize("price,tick,ok", [
    (100.01, 0.01, True), (100.005, 0.01, False), (0.1 + 0.2, 0.01, True),
    (5000.25, 0.25, True), (5000.1, 0.25, False), (1e6 + 0.01, 0.01, True),
])
def test_on_tick(price: float, tick: float, ok: bool) -> None:
    assert rules.on_tick(price, tick, 1e-6) is ok


def test_every_code_a_rule_can_emit_has_a_case_here_or_in_the_governor_tests() -> None:
    covered = {c.code for c in CASES} | {
        # fail-closed and state, margin, placement, idempotency: tests/unit/test_risk_governor.py
        D.BROKER_DISCONNECTED, D.BROKER_CONNECTIVITY_LOST, D.NOT_RECONCILED, D.SNAPSHOT_STALE,
        D.PNL_UNKNOWN, D.ACCOUNT_VALUES_UNKNOWN, D.QUOTE_UNAVAILABLE, D.TRADING_HALTED,
        D.RATE_LIMITED, D.INSUFFICIENT_MARGIN, D.WHATIF_FAILED, D.PLACEMENT_FAILED,
        D.DUPLICATE_PROPOSAL,
        D.BRACKET_CANCELLED_AT_IB, D.BRACKET_FINISHED_AT_IB,  # tests/unit/test_prior_placement.py
        D.OUTSIDE_TRADING_HOURS,  # test_trading_hours_window above
        D.UNKNOWN_AGENT, D.AGENT_DISABLED,  # the agents file: tests/unit/test_agents.py
        D.UNDEFINED_RISK_COMBO,  # combos (issue 12): tests/unit/test_combo_risk.py
        # bracket lifecycle commands (issue 13): tests/unit/test_commands.py
        D.UNKNOWN_BRACKET, D.NOT_BRACKET_OWNER, D.BRACKET_FILLED_USE_CLOSE, D.BRACKET_NOT_WORKING,
        D.NOTHING_TO_CLOSE, D.CLOSE_EXCEEDS_POSITION, D.DUPLICATE_COMMAND, D.COMMAND_IN_PROGRESS,
        D.COMMAND_FAILED,
    }
    # answered by the MQTT bridge / daemon, not the governor
    elsewhere = {D.MALFORMED_JSON, D.PAYLOAD_TOO_LARGE, D.VALIDATION_ERROR, D.OVERLOADED,
                 D.SHUTTING_DOWN, D.PROPOSAL_EXPIRED,
                 D.RETAINED_PROPOSAL,  # tests/e2e/test_replays_e2e.py
                 # message authentication (bus/auth.py): tests/unit/test_auth.py and
                 # tests/e2e/test_auth_e2e.py
                 D.AUTH_REQUIRED, D.BAD_SIGNATURE, D.SIGNATURE_REPLAYED}
    assert covered | elsewhere == set(DenialCode)
