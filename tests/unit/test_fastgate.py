"""The gate's fused check (agents/fastgate.py) decides exactly as the full rule chain.

Property: two governors, one with the fused check and one without (`_fast = None`), fed the same
steps — proposals of every covered kind (stocks, options, futures; LMT and MKT; both sides),
fills, cancels, snapshots with positions, working orders and quotes with sides missing, state
changes, time — over random limits whose edges sit on the proposals' own numbers, take the
same decisions (verdict, and every reason's code, limit, value, field and message) and hold the
same reservations. The fused check must also actually decide both ways (approvals and
rejections: no vacuous pass), and stay off for what it was not written for (combos, a rule it
does not cover, HALTED).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bracketgate.adapters.pacer import Pacer
from bracketgate.agents import fastgate, fastpath
from bracketgate.agents.risk import RiskGovernor
from bracketgate.agents.rules import RULES, proposal_offline_con_id, worst_case_loss
from bracketgate.bus.messages import (
    Leg,
    ResolvedContract,
    Side,
    TradeProposal,
    TradingState,
    Verdict,
    WorkingOrder,
)
from bracketgate.config.limits import RiskLimits
from bracketgate.core.clock import ManualClock
from tests.unit.riskkit import contract_id, fill, open_limits, order_event, position, quote, snapshot

# (symbol, sec_type, expiry, strike, right, mid price, tick)
CONTRACTS = (
    ("AAPL", "STK", None, None, None, 100.0, 0.01),
    ("MSFT", "STK", None, None, None, 50.0, 0.01),
    ("SPY", "OPT", "20261218", 100.0, "C", 5.0, 0.01),
    ("ES", "FUT", "202612", None, None, 5000.0, 0.25),
)
AGENTS = ("a", "b", "c")


def _contract(i: int) -> tuple[Any, ...]:
    return CONTRACTS[i % len(CONTRACTS)]


@st.composite
def proposals(draw: st.DrawFn, n: int, sane: bool = False) -> TradeProposal:
    """A proposal; `sane`: its geometry, reward:risk and ticks right (the pivot's case)."""
    sym, sec, expiry, strike, right, mid, tick = _contract(draw(st.integers(0, 3)))
    side = draw(st.sampled_from(["BUY", "SELL"]))
    s = 1 if side == "BUY" else -1
    market = draw(st.booleans()) and draw(st.booleans())
    entry = mid + tick * draw(st.integers(-3, 3))
    # mostly sane (the fast path's case), sometimes not (geometry, reward:risk, stop distance)
    stop_ticks = draw(st.sampled_from([1, 2, 5, 10, 40] + ([] if sane else [10, 40, -2, 0, 400])))
    tp_ticks = draw(st.sampled_from([2, 5, 10, 20, 80] + ([] if sane else [20, 80, -1, 0, 1, 800])))
    off, where = (0.0, "") if sane else draw(st.sampled_from(
        [(0.0, "")] * 6 + [(tick / 3, "tp"), (tick / 3, "sl"), (tick / 3, "entry")]))
    stop = round(entry - s * stop_ticks * tick, 6) + (off if where == "sl" else 0.0)
    tp = round(entry + s * tp_ticks * tick, 6) + (off if where == "tp" else 0.0)
    entry += off if where == "entry" else 0.0         # sometimes one price off the tick grid
    return TradeProposal(
        proposal_id=f"p{n}", agent_id=draw(st.sampled_from(AGENTS)), symbol=sym, sec_type=sec,
        expiry=expiry, strike=strike, right=right, side=side,
        quantity=draw(st.sampled_from([1, 2, 5, 10, 50, 100])),
        order_type="MKT" if market else "LMT", limit_price=None if market else entry,
        take_profit=max(tp, tick), stop_loss=max(stop, tick))


def _edge(draw: st.DrawFn, exact: float) -> float:
    """A limit on an edge: exactly a proposal's number, or one ulp either side."""
    return max(0.0, draw(st.sampled_from([exact, math.nextafter(exact, math.inf),
                                          math.nextafter(exact, -math.inf)])))


TIGHTENED = ("price_bands", "reward_risk", "stop_distance", "order_quantity", "order_notional",
             "position_units", "position_notional", "gross", "net", "open_brackets",
             "per_trade_loss", "per_trade_loss_pct", "daily_loss", "denied", "allowed", "sec_types",
             "order_msgs", "proposal_rate", "agent_loss", "agent_exposure", "agent_open",
             "agents", "hours", "slippage")


def _pivot_numbers(pivot: TradeProposal, snap: Any, slip: float) -> dict[str, float]:
    """What each rule compares for `pivot` as the first proposal on `snap`, read from the full
    chain's own RuleContext under wide limits: the edges the limits are then set on."""
    clock = ManualClock()
    probe = RiskGovernor(open_limits(slippage_ticks=slip,
                                     symbols={"ES": {"multiplier": 50.0, "min_tick": 0.25}}),
                         clock)
    probe._fast = None
    probe.on_snapshot(snap)
    _, c = probe._check(pivot, snap, snap.ts)
    if c is None:       # a gate or the contract refused it: edges of no consequence
        return dict(notional=1.0, wcl=1.0, units=1.0, pos_n=1.0, gross=1.0, net=1.0,
                    daily=1.0, agent_exp=1.0)
    s, n = c.sign, c.notional
    held = c.position_notional + s * c.pending_same_notional
    gross = (c.gross_exposure - abs(held) + abs(held + s * n) if s * held < 0
             else c.gross_exposure + n)
    return dict(
        notional=n, wcl=c.worst_case_loss,
        units=abs(c.position + s * (c.pending_same + c.quantity)),
        pos_n=abs(c.position_notional + s * (c.pending_same_notional + n)),
        gross=gross, net=abs(c.net_exposure + s * n),
        daily=c.worst_case_loss - min(0.0, c.daily_pnl) + c.open_worst_case,
        agent_exp=c.agent_exposure + n)


@st.composite
def limits(draw: st.DrawFn, pivot: TradeProposal, snap: Any) -> RiskLimits:
    """Wide limits but for a few (`tight`), whose edges sit on `pivot`'s own numbers (its
    notional, worst case, units after the trade, exposures after it) — exactly, or one ulp
    either side — or on values other proposals cross."""
    tight = draw(st.sets(st.sampled_from(TIGHTENED), min_size=1, max_size=3))
    slip = draw(st.sampled_from([0.0, 1.0])) if "slippage" in tight else 0.0
    x = _pivot_numbers(pivot, snap, slip)
    notional, wcl = x["notional"], x["wcl"]
    nlv = 1_000_000.0

    def pick(name: str, wide: Any, *edges: Any) -> Any:
        return draw(st.sampled_from(edges)) if name in tight else wide

    def edge(name: str, wide: float, exact: float, *others: float) -> float:
        if name not in tight:
            return wide
        return draw(st.sampled_from([_edge(draw, exact), *others]))

    over: dict[str, Any] = dict(
        slippage_ticks=slip,
        price_bands=pick("price_bands", True, True, False),
        entry_band_pct=pick("price_bands", 100_000.0, 0.001, 0.05, 1.0),
        exit_band_pct=pick("price_bands", 100_000.0, 0.05, 1.0),
        min_reward_risk=pick("reward_risk", 0.0, 0.5, 1.0, 2.0, 3.0),
        min_stop_distance_pct=pick("stop_distance", 0.0, 0.01, 0.1),
        max_stop_distance_pct=pick("stop_distance", 100.0, 0.5, 2.0),
        max_order_quantity=pick("order_quantity", 10_000, pivot.quantity, pivot.quantity - 1),
        max_order_notional=edge("order_notional", 1e12, notional),
        max_position_units=edge("position_units", 1e12, x["units"], 150.0),
        max_position_notional=edge("position_notional", 1e12, x["pos_n"], 3 * notional),
        max_gross_exposure_pct=edge("gross", 1e9, x["gross"] / nlv * 100.0, 2.0),
        max_net_exposure_pct=edge("net", 1e9, x["net"] / nlv * 100.0, 1.0),
        max_open_brackets=pick("open_brackets", 1_000_000, 1, 2, 3),
        per_trade_loss_limit=edge("per_trade_loss", 1e9, wcl),
        per_trade_loss_pct=edge("per_trade_loss_pct", 100.0, wcl / nlv * 100.0),
        daily_loss_limit=edge("daily_loss", 1e9, x["daily"], 2 * wcl + 1.0, wcl + 500.0),
        denied_symbols=pick("denied", [], ["MSFT"], [pivot.symbol]),
        allowed_symbols=pick("allowed", [], ["AAPL", "SPY", "ES"], ["MSFT"]),
        allowed_sec_types=pick("sec_types", ["STK", "OPT", "FUT"], ["STK", "FUT"]),
        max_order_msgs_per_s=pick("order_msgs", 1e9, 3.0, 7.0),
        max_proposals_per_s=pick("proposal_rate", 1e9, 2.0),
        proposal_burst=pick("proposal_rate", 1_000_000_000, 3),
        symbols={"ES": {"multiplier": 50.0, "min_tick": 0.25}},
        agent=dict(loss_limit=edge("agent_loss", 1e9, wcl, wcl + 24.0, wcl + 25.0),
                   exposure_limit=edge("agent_exposure", 1e12, x["agent_exp"], 2 * notional),
                   max_open_brackets=pick("agent_open", 1_000_000, 1, 2),
                   max_order_share_pct=pick("order_msgs", 50.0, 10.0, 50.0),
                   max_proposals_per_s=1e9, proposal_burst=1_000_000_000),
        agents=pick("agents", {}, {"a": {}, "b": {"loss_limit": 1e9}}),
    )
    if "hours" in tight:   # the clock starts on a Friday, 10:00 New York: inside, on an edge, out
        start, end, days = draw(st.sampled_from([
            ("09:30", "16:00", [0, 1, 2, 3, 4]), ("10:00", "16:00", [0, 1, 2, 3, 4, 5, 6]),
            ("09:00", "10:00", [0, 1, 2, 3, 4, 5, 6]), ("09:30", "16:00", [0, 1, 2, 3])]))
        over["trading_hours"] = {"start": start, "end": end, "weekdays": days}
    return open_limits(**over)


def _quotes(draw: st.DrawFn, clock: ManualClock) -> list[Any]:
    out = []
    for sym, sec, expiry, strike, right, mid, tick in CONTRACTS:
        kind = draw(st.sampled_from(["both"] * 7 + ["bid", "last", "none"]))
        if kind == "none":
            continue
        bid = mid - tick if kind in ("both", "bid") else None
        ask = mid + tick if kind == "both" else None
        out.append(quote(clock, sym, bid, ask, mid, sec_type=sec, expiry=expiry,
                         strike=strike, right=right))
    return out


def _snapshot(draw: st.DrawFn, clock: ManualClock) -> Any:
    positions = []
    for sym, sec, expiry, strike, right, mid, _ in CONTRACTS:
        q = draw(st.sampled_from([0, 0, 10, -10, 100]))
        if q:
            mult = {"STK": 1.0, "OPT": 100.0, "FUT": 50.0}[sec]
            positions.append(position(sym, q, mid, mult, sec, expiry, strike, right))
    working = []
    if draw(st.booleans()):   # an entry at IB the governor did not reserve (a restart)
        sym, sec, expiry, strike, right, mid, _ = _contract(draw(st.integers(0, 3)))
        working.append(WorkingOrder(
            order_id=900, perm_id=900, order_ref="foreign-1", symbol=sym,
            con_id=contract_id(sym, sec, expiry, strike, right),
            side=draw(st.sampled_from([Side.BUY, Side.SELL])), order_type="LMT",
            quantity=20.0, remaining=20.0, limit_price=mid, status="Submitted"))
    return snapshot(clock, daily=draw(st.sampled_from([0.0, -500.0, 300.0])),
                    positions=positions, quotes=_quotes(draw, clock), working=working)


def _contract_info(unknown: str | None) -> Any:
    """IB's contract details for CONTRACTS, with the conIds quotes and positions use (riskkit
    contract_id) — but for `unknown`, which IB does not have (UNKNOWN_CONTRACT)."""
    mults = {"STK": 1.0, "OPT": 100.0, "FUT": 50.0}

    def info(p: TradeProposal) -> ResolvedContract | None:
        for sym, sec, expiry, strike, right, _, tick in CONTRACTS:
            if sym == p.symbol and sec == p.sec_type.value and sym != unknown:
                return ResolvedContract(
                    con_id=contract_id(sym, sec, expiry, strike, right), symbol=sym,
                    sec_type=sec, exchange="SMART", currency="USD", multiplier=mults[sec],
                    min_tick=tick, expiry=expiry, strike=strike, right=right)
        return None

    return info


def _outcome(d: Any) -> tuple[Any, ...]:
    """Every field of the decision (its journal and bus payload) and which ones are set."""
    return (d.verdict, tuple((r.code, r.limit, r.value, r.field, r.message) for r in d.reasons),
            d.model_dump(), d.model_dump_json(), d.model_fields_set,
            tuple(r.model_fields_set for r in d.reasons))


def _ledger(g: RiskGovernor) -> tuple[Any, ...]:
    """The reservations, field by field, the ledger's totals, the token buckets and what the
    decision memory holds."""
    led = g.ledger
    buckets = [(k, b.tokens, b.stamp) for k, b in sorted(g._agent_buckets.items())]
    buckets += [(k, b.tokens, b.stamp) for k, b in sorted(g._agent_order_buckets.items())]
    for b in (g._proposal_bucket, g._order_bucket):
        buckets.append(("", b.tokens, b.stamp))
    return (sorted(dataclasses.astuple(r) for r in led), led.total_worst_case,
            led.gross_pending_notional, tuple(led.side_pending_notional),
            dict(led.agent_worst_case), dict(led.agent_pending_notional),
            {k: tuple(v) for k, v in led.contract_pending.items()}, buckets,
            dict(g._multipliers), list(g._decisions._hot),
            # the ledger's indexes (fastpath.decide files a new reservation itself)
            {k: sorted(v) for k, v in led._by_contract.items()},
            {k: sorted(v) for k, v in led._by_agent.items()})


def _evaluated(g: RiskGovernor, p: TradeProposal) -> tuple[Any, list[dict[str, Any]]]:
    """The decision and the log lines it wrote."""
    with capture_logs() as lines:
        d = g.evaluate(p, g.snapshot)
    return d, lines


FAST_HITS = {"n": 0, "rejected": 0, "reducing": 0}


def _counting(*args: Any) -> Any:
    out = fastgate.check(*args)
    if out is not None:
        FAST_HITS["n"] += 1
        FAST_HITS["rejected"] += bool(out[0])
        FAST_HITS["reducing"] += args[0].state is TradingState.REDUCING
    return out


def all_pass(*args: Any) -> Any:
    """The approval context when the fused check approves, else None."""
    out = fastgate.check(*args)
    return None if out is None or out[0] else out[1]


# FASTGATE_EXAMPLES=5000 for a longer search (600 in the suite: some seconds)
@settings(max_examples=int(os.environ.get("FASTGATE_EXAMPLES", "600")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_path_decides_as_the_full_chain(data: st.DataObject) -> None:
    draw = data.draw
    pivot = draw(proposals(0, sane=True))
    clock = ManualClock()
    snap = _snapshot(draw, clock)
    lim = draw(limits(pivot, snap))
    # IB's contract details (the daemon's case: adapters/ib.py cached_contract), one of the
    # contracts sometimes unknown to IB; or none (offline stand-ins)
    info = draw(st.sampled_from([None, _contract_info(None), _contract_info("MSFT")]))
    fast = RiskGovernor(lim, clock, contract_info=info)
    full = RiskGovernor(lim, clock, contract_info=info)
    assert fast._fast is fastgate.check
    fast._fast = _counting
    full._fast = None
    pacer = draw(st.sampled_from([None, (1.0, 3.0), (6.0, 3.0), (45.0, 9.0)]))
    for g in (fast, full):
        if pacer is not None:   # the IB pacer's headroom and the agent's share of it
            g.use_order_budget(Pacer(*pacer, time=clock.monotonic))
        g.on_snapshot(snap)
    approved: list[TradeProposal] = []
    steps = draw(st.lists(st.sampled_from(
        ["propose"] * 6 + ["again"] * 2 + ["fill", "cancel", "close", "snapshot", "reduce",
                                           "resume", "tick"]),
        min_size=1, max_size=14))
    n = 0
    for step in ["propose"] + steps:
        if step in ("propose", "again"):   # again: the pivot's numbers under a new id
            p = (pivot if n == 0 else draw(proposals(n)) if step == "propose"
                 else pivot.model_copy(update={"proposal_id": f"p{n}"}))
            n += 1
            (a, log_a), (b, log_b) = _evaluated(fast, p), _evaluated(full, p)
            assert _outcome(a) == _outcome(b), p
            assert log_a == log_b, p
            if a.verdict is Verdict.APPROVED:
                approved.append(p)
        elif step in ("fill", "cancel", "close") and approved:
            p = approved[draw(st.integers(0, len(approved) - 1))]
            for g in (fast, full):
                if step == "fill":
                    g.on_fill(fill(p, clock, exec_id=f"{p.proposal_id}-e"))
                elif step == "close":
                    g.on_fill(fill(p, clock, leg=Leg.TAKE_PROFIT, price=p.take_profit,
                                   realized=-25.0, exec_id=f"{p.proposal_id}-x"))
                else:
                    g.on_order_event(order_event(p, clock, "Cancelled"))
        elif step == "snapshot":
            snap = _snapshot(draw, clock)
            for g in (fast, full):
                g.on_snapshot(snap)
        elif step in ("reduce", "resume"):
            new = TradingState.REDUCING if step == "reduce" else TradingState.ACTIVE
            for g in (fast, full):
                g.set_state(new, "test", "operator")
        elif step == "tick":
            clock.advance(draw(st.sampled_from([0.1, 1.0])))
        assert _ledger(fast) == _ledger(full)


def test_the_property_takes_the_fast_path() -> None:
    """Run after the property (file order): the fused check decided a good share of it, both
    approvals and rejections, in REDUCING too."""
    if FAST_HITS["n"] == 0:
        test_fast_path_decides_as_the_full_chain()
    assert FAST_HITS["n"] >= 50, FAST_HITS
    assert FAST_HITS["rejected"] >= 20, FAST_HITS
    assert FAST_HITS["n"] - FAST_HITS["rejected"] >= 20, FAST_HITS
    assert FAST_HITS["reducing"] >= 5, FAST_HITS


def _plain() -> tuple[RiskGovernor, ManualClock, TradeProposal]:
    clock = ManualClock()
    gov = RiskGovernor(open_limits(), clock)
    gov.on_snapshot(snapshot(clock))
    p = TradeProposal(proposal_id="x1", agent_id="a", symbol="AAPL", side="BUY", quantity=10,
                      limit_price=100.0, take_profit=102.0, stop_loss=99.0)
    return gov, clock, p


def _fast_args(gov: RiskGovernor, p: TradeProposal) -> tuple[Any, ...]:
    sym = gov._symbol(p.symbol)
    con_id, mult, tick = gov._offline(p, sym)
    return (gov, p, gov.snapshot, gov._view, gov._clock.now(), gov._clock.monotonic(),
            gov.budget_of(p.agent_id), None, sym, con_id, mult, tick, p.limit_price, False)


def test_a_plain_bracket_is_decided_on_the_fast_path_with_the_reservation_numbers() -> None:
    gov, _, p = _plain()
    c = all_pass(*_fast_args(gov, p))
    assert c is not None
    assert (c.con_id, c.sign, c.quantity, c.entry, c.multiplier) == (
        proposal_offline_con_id(p), 1, 10, 100.0, 1.0)
    assert c.worst_case_loss == worst_case_loss(10, 100.0, 99.0, 1.0, 0.01, gov.limits,
                                                market_entry=False)
    d = gov.evaluate(p, gov.snapshot)
    assert d.verdict is Verdict.APPROVED and p.proposal_id in gov.ledger
    assert gov.ledger.get(p.proposal_id).worst_case_loss == c.worst_case_loss


def test_a_combo_never_takes_the_fast_path() -> None:
    """A proposal with legs (combos, another branch) goes down the full chain."""
    gov, _, p = _plain()
    assert fastgate.check(*_fast_args(gov, p)) is not None
    p.__dict__["legs"] = [{"symbol": "AAPL", "ratio": 1}]    # as a combo model would carry
    assert fastgate.check(*_fast_args(gov, p)) is None


def test_halted_never_takes_the_fast_path() -> None:
    gov, _, p = _plain()
    gov.set_state(TradingState.HALTED, "test", "operator")
    assert fastgate.check(*_fast_args(gov, p)) is None


def test_reducing_calls_the_reducing_only_rule() -> None:
    """REDUCING: the fused check has the reducing-only rule judge (nothing held: denied)."""
    gov, _, p = _plain()
    gov.set_state(TradingState.REDUCING, "test", "operator")
    out = fastgate.check(*_fast_args(gov, p))
    assert out is not None
    assert [x.code.value for x in out[0]] == ["REDUCING_ONLY"]


def test_a_rule_it_does_not_cover_turns_the_fast_path_off() -> None:
    def rule_new(c: Any) -> None:
        return None

    assert fastgate.fast_path_for(RULES) is fastgate.check
    assert fastgate.fast_path_for(RULES + (rule_new,)) is None
    assert fastgate.COVERED == frozenset(RULES)   # this version's rules, each tested by check


def test_a_rule_added_to_rules_turns_the_governors_fast_path_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another branch appends a rule to RULES: the governor built with it has no fast path
    (COVERED names the rules check tests; it is not RULES itself)."""
    from bracketgate.agents import risk

    def rule_new(c: Any) -> None:
        return None

    monkeypatch.setattr(risk, "RULES", RULES + (rule_new,))
    gov = RiskGovernor(open_limits(), ManualClock())
    assert gov._fast is None


def test_a_proposal_out_of_tokens_is_refused_by_the_rate_rule() -> None:
    gov, _, p = _plain()
    args = list(_fast_args(gov, p))
    args[7] = ("global", 1.0)          # rate_denied
    out = fastgate.check(*args)
    assert out is not None
    assert [(x.code.value, x.field) for x in out[0]] == [("RATE_LIMITED", "proposals_per_s")]


def test_a_rejection_names_every_failing_rule_in_rules_order() -> None:
    """Geometry, size and symbol all wrong: each rule's own reason, in RULES order, as the
    full chain gives them."""
    lim = open_limits(max_order_quantity=5, denied_symbols=["AAPL"])
    fast, full, _ = _pair(lim, {})
    p = TradeProposal(proposal_id="w1", agent_id="a", symbol="AAPL", side="BUY", quantity=10,
                      limit_price=100.0, take_profit=102.0, stop_loss=101.0)
    a, b = fast.evaluate(p, fast.snapshot), full.evaluate(p, full.snapshot)
    assert [x.code.value for x in a.reasons] == [
        "SYMBOL_NOT_ALLOWED", "BRACKET_GEOMETRY", "MAX_ORDER_QUANTITY"]
    assert _outcome(a) == _outcome(b)


def _pair(lim: RiskLimits, snap_kw: dict[str, Any]) -> tuple[RiskGovernor, RiskGovernor, ManualClock]:
    clock = ManualClock()
    fast, full = RiskGovernor(lim, clock), RiskGovernor(lim, clock)
    full._fast = None
    snap = snapshot(clock, **snap_kw)
    for g in (fast, full):
        g.on_snapshot(snap)
    return fast, full, clock


def _foreign_buy(qty: float = 20.0) -> WorkingOrder:
    return WorkingOrder(order_id=900, perm_id=900, order_ref="foreign-1", symbol="AAPL",
                        con_id=contract_id("AAPL"), side=Side.BUY, order_type="LMT",
                        quantity=qty, remaining=qty, limit_price=100.0, status="Submitted")


# (limits over the open ones, snapshot arguments, the code the full chain denies with): each
# a number only the state holds (an entry working at IB, realized P&L, a foreign side)
STATE_EDGES = [
    (dict(max_position_units=29.0), dict(working=[_foreign_buy()]), "POSITION_LIMIT"),
    (dict(max_position_notional=2_999.0), dict(working=[_foreign_buy()]),
     "POSITION_NOTIONAL_LIMIT"),
    (dict(max_net_exposure_pct=0.2999), dict(working=[_foreign_buy()]), "NET_EXPOSURE_LIMIT"),
    (dict(max_gross_exposure_pct=0.2999), dict(working=[_foreign_buy()]),
     "GROSS_EXPOSURE_LIMIT"),
    (dict(max_open_brackets=1), dict(working=[_foreign_buy()]), "MAX_OPEN_BRACKETS"),
    (dict(daily_loss_limit=1_000.0 + 9.99), dict(working=[_foreign_buy(100.0)]),
     "DAILY_LOSS_LIMIT"),
    (dict(daily_loss_limit=509.99), dict(daily=-500.0), "DAILY_LOSS_LIMIT"),
    (dict(max_position_units=109.0), dict(positions=[position("AAPL", 100)]), "POSITION_LIMIT"),
]


@pytest.mark.parametrize("over,snap_kw,code", STATE_EDGES)
def test_numbers_the_state_holds_are_counted_on_the_fast_path(over: dict[str, Any],
                                                             snap_kw: dict[str, Any],
                                                             code: str) -> None:
    fast, full, _ = _pair(open_limits(**over), snap_kw)
    p = TradeProposal(proposal_id="e1", agent_id="a", symbol="AAPL", side="BUY", quantity=10,
                      limit_price=100.0, take_profit=102.0, stop_loss=99.0)
    a, b = fast.evaluate(p, fast.snapshot), full.evaluate(p, full.snapshot)
    assert [r.code.value for r in b.reasons] == [code]
    assert _outcome(a) == _outcome(b)


def test_the_agents_realized_loss_is_counted_on_the_fast_path() -> None:
    lim = open_limits(agent=dict(loss_limit=30.0))
    fast, full, clock = _pair(lim, {})
    first = TradeProposal(proposal_id="r1", agent_id="a", symbol="AAPL", side="BUY",
                          quantity=10, limit_price=100.0, take_profit=102.0, stop_loss=99.0)
    for g in (fast, full):
        assert g.evaluate(first, g.snapshot).verdict is Verdict.APPROVED
        g.on_fill(fill(first, clock, exec_id="r1-e"))
        g.on_fill(fill(first, clock, leg=Leg.STOP_LOSS, price=99.0, realized=-10.0,
                       exec_id="r1-x"))
        assert first.proposal_id not in g.ledger
    second = first.model_copy(update={"proposal_id": "r2"})   # worst case 10 <= 30 - 10: fits
    a, b = fast.evaluate(second, fast.snapshot), full.evaluate(second, full.snapshot)
    assert _outcome(a) == _outcome(b)
    # worst case 15 > 30 - 10 realized - 10 open (without the realized loss it would fit)
    third = first.model_copy(update={"proposal_id": "r3", "quantity": 15})
    a, b = fast.evaluate(third, fast.snapshot), full.evaluate(third, full.snapshot)
    assert [r.code.value for r in b.reasons] == ["AGENT_LOSS_LIMIT"]
    assert _outcome(a) == _outcome(b)


@pytest.mark.parametrize("start,end,days", [
    ("09:30", "16:00", [0, 1, 2, 3, 4]), ("01:30", "02:30", [0, 1, 2, 3, 4, 5, 6]),
    ("00:00", "23:59:59", [6]), ("02:00", "03:00", [5, 6])])
def test_trading_hours_are_judged_as_the_rule_judges_them_across_days_and_dst(
        start: str, end: str, days: list[int]) -> None:
    """The fused check keeps the hours' answer for a span (no timezone work per proposal):
    stepping the clock across starts, ends, midnights and New York's 2026-11-01 change, every
    verdict is the full chain's. Steps of 7 minutes 13 seconds, one proposal each."""
    from datetime import datetime, timezone

    lim = open_limits(trading_hours={"start": start, "end": end, "weekdays": days})
    clock = ManualClock(datetime(2026, 10, 30, 20, 0, tzinfo=timezone.utc))
    fast, full = RiskGovernor(lim, clock), RiskGovernor(lim, clock)
    full._fast = None
    seen = set()
    for n in range(1000):      # ~5 days
        snap = snapshot(clock)
        p = TradeProposal(proposal_id=f"h{n}", agent_id="a", symbol="AAPL", side="BUY",
                          quantity=1, limit_price=100.0, take_profit=102.0, stop_loss=99.0)
        for g in (fast, full):
            g.on_snapshot(snap)
        a, b = fast.evaluate(p, snap), full.evaluate(p, snap)
        assert _outcome(a) == _outcome(b), clock.now()
        seen.add(a.verdict)
        for g in (fast, full):
            g.release(p.proposal_id, "test")
        clock.advance(7 * 60 + 13)
    assert seen == {Verdict.APPROVED, Verdict.REJECTED}


def test_the_hours_window_ends_at_the_next_edge_and_not_past_a_dst_change() -> None:
    from datetime import datetime, time, timezone
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    hours = (time(9, 30), time(16, 0), frozenset(range(5)))
    # Friday 2026-10-30 10:00 New York (14:00 UTC): open until 16:00 (20:00 UTC)
    w = fastgate.hours_window(hours, ny, datetime(2026, 10, 30, 14, 0, tzinfo=timezone.utc))
    assert w[3] is True and w[2] == datetime(2026, 10, 30, 20, 0, tzinfo=timezone.utc)
    # Sunday 2026-11-01 00:30 EDT (04:30 UTC): the clocks go back at 02:00 before 09:30
    w = fastgate.hours_window(hours, ny, datetime(2026, 11, 1, 4, 30, tzinfo=timezone.utc))
    assert w[3] is False and (w[2] - w[1]).total_seconds() < 1e-3


# ---------------------------------------------------------------- the fused decision (fastpath.py)


def _buckets(gov: RiskGovernor) -> tuple[Any, ...]:
    return tuple((b.tokens, b.stamp) for b in (gov._proposal_bucket, gov._order_bucket,
                                                *gov._agent_buckets.values()))


def test_a_plain_bracket_is_decided_reserved_and_remembered_by_the_fused_decision() -> None:
    """fastpath.decide takes the whole decision: the governor's own _check is not called."""
    gov, clock, p = _plain()

    def no_check(*_: Any) -> Any:
        raise AssertionError("the governor's _check was called")

    gov._check = no_check    # type: ignore[method-assign]
    d = gov.evaluate(p, gov.snapshot)
    assert d.verdict is Verdict.APPROVED and d.worst_case is not None
    assert gov.ledger.get(p.proposal_id).created_at == clock.now()
    assert gov.evaluate(p, gov.snapshot) is d          # remembered: a repeat gets it back
    bad = p.model_copy(update={"proposal_id": "x2", "stop_loss": 101.0})
    r = gov.evaluate(bad, gov.snapshot)
    assert r.verdict is Verdict.REJECTED and r.worst_case is None
    assert [x.code.value for x in r.reasons] == ["BRACKET_GEOMETRY"]


@pytest.mark.parametrize("case", ["combo", "halted", "other_snapshot", "off"])
def test_the_fused_decision_leaves_what_it_is_not_for_untouched(case: str) -> None:
    """A combo, HALTED, a snapshot other than the view's, the fused check off: decide returns
    None before spending a token or changing anything, and the governor's path decides."""
    gov, clock, p = _plain()
    snap = gov.snapshot
    if case == "combo":
        p.__dict__["legs"] = [{"symbol": "AAPL", "ratio": 1}]
    elif case == "halted":
        gov.set_state(TradingState.HALTED, "test", "operator")
    elif case == "other_snapshot":
        snap = snapshot(clock)
    else:
        gov._fast = None
    before = (_buckets(gov), _ledger(gov))
    assert fastpath.decide(gov, p, snap, clock.now(), None) is None
    assert (_buckets(gov), _ledger(gov)) == before


def test_the_first_decision_after_a_snapshot_finds_its_figures_made() -> None:
    """on_snapshot makes the freshness cut-off and the account's caps (fastpath.warm)."""
    gov, clock, _ = _plain()
    gov.on_snapshot(snapshot(clock))
    view = gov._view
    assert gov._fresh[0] is view and gov._fast_snapshot[0] is view
    assert gov._fast_limits[0] is gov.limits


# (limits over the open ones, proposal fields over a plain BUY, the reason the full chain gives):
# each reason fastgate writes with a message made at import (rules.denial), both sides where
# its message names one
MESSAGES = [
    (dict(denied_symbols=["AAPL"]), {}, ("SYMBOL_NOT_ALLOWED", "denied")),
    (dict(allowed_symbols=["MSFT"]), {}, ("SYMBOL_NOT_ALLOWED", "not in the allowed list")),
    ({}, dict(stop_loss=101.0), ("BRACKET_GEOMETRY", "stop must be below")),
    ({}, dict(side="SELL", stop_loss=99.0, take_profit=98.0), ("BRACKET_GEOMETRY",
                                                               "stop must be above")),
    ({}, dict(take_profit=99.5), ("BRACKET_GEOMETRY", "take-profit must be above")),
    ({}, dict(side="SELL", stop_loss=101.0, take_profit=100.5),
     ("BRACKET_GEOMETRY", "take-profit must be below")),
    (dict(min_reward_risk=3.0), {}, ("REWARD_RISK_TOO_LOW", "")),
    (dict(min_stop_distance_pct=2.0), {}, ("STOP_DISTANCE_OUT_OF_BOUNDS", "stop too close")),
    (dict(max_stop_distance_pct=0.5), {}, ("STOP_DISTANCE_OUT_OF_BOUNDS", "stop too far")),
    (dict(max_order_quantity=5), {}, ("MAX_ORDER_QUANTITY", "")),
    (dict(max_order_notional=999.0), {}, ("MAX_ORDER_NOTIONAL", "")),
    (dict(per_trade_loss_limit=9.0), {}, ("PER_TRADE_LOSS_LIMIT", "")),
    (dict(max_open_brackets=0), {}, ("MAX_OPEN_BRACKETS", "")),
]


@pytest.mark.parametrize("over,fields,want", MESSAGES)
def test_each_reason_written_on_the_fast_path_is_the_rules_own(over: dict[str, Any],
                                                              fields: dict[str, Any],
                                                              want: tuple[str, str]) -> None:
    """Code, limit, value, field and message (made once at import) as the rule's deny writes
    them; the fused decision took it (the full chain's _check not called)."""
    fast, full, _ = _pair(open_limits(**over), {})
    p = TradeProposal(**{**dict(proposal_id="m1", agent_id="a", symbol="AAPL", side="BUY",
                                quantity=10, limit_price=100.0, take_profit=102.0,
                                stop_loss=99.0), **fields})

    def no_check(*_: Any) -> Any:
        raise AssertionError("the governor's _check was called")

    fast._check = no_check    # type: ignore[method-assign]
    a, b = fast.evaluate(p, fast.snapshot), full.evaluate(p, full.snapshot)
    assert b.reasons[0].code.value == want[0] and want[1] in b.reasons[0].message
    assert _outcome(a) == _outcome(b)
