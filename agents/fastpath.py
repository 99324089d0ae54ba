"""The gate's fused decision: `RiskGovernor._check`, the reservation and the decision, one pass.

For a single-leg proposal (no `legs`, sec_type STK / OPT / FUT, trading state ACTIVE or
REDUCING, the snapshot's view built) `decide` does what `_evaluate` does from the checks on —
`_check` (tokens, the fail-closed gates, the contract, a MKT entry's price, the rules through
fastgate.check), `_reserve`, `_decision`, the admitted worst case, the decision memory and the
log line — with the numbers in locals: the same steps in the same order, the same objects
(decision, reasons, reservation) and the same log line, without some ten calls, keyword dicts
and repeated look-ups. Anything else (a combo, HALTED, no view yet) it leaves before changing
anything (returns None) and the governor's own path decides. It is on when fastgate.check is
(`gov._fast`); tests/unit/test_fastgate.py holds a governor with it to one without it: same
decisions (every field), reservations, token buckets and log lines.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING

from bracketgate.agents.fastgate import FAST_SEC_TYPES, limit_constants, snapshot_constants
from bracketgate.agents.reservations import Reservation
from bracketgate.agents.rules import (
    deny,
    fresh_until,
    gate_freshness,
    gate_numbers,
    market_entry_price,
    set_extra,
    set_fields_set,
    set_model_dict,
    set_private,
)
from bracketgate.bus.messages import (
    MAX_PRICE,
    MAX_QUANTITY,
    DenialCode,
    OrderType,
    PortfolioSnapshot,
    Reason,
    RiskDecision,
    TradeProposal,
    TradingState,
    Verdict,
    WorstCase,
)

from bracketgate.agents import risk as _risk   # (a cycle: names read at call time)
from bracketgate.core.logs import get_logger

if TYPE_CHECKING:
    from bracketgate.agents.risk import RiskGovernor

_ACTIVE, _REDUCING = TradingState.ACTIVE, TradingState.REDUCING
_APPROVED, _REJECTED = Verdict.APPROVED, Verdict.REJECTED
_MKT = OrderType.MKT
_new_decision = RiskDecision.__new__
_new_worst_case = WorstCase.__new__
# copied per model (a set's copy: half of set(frozenset))
_DECISION_FIELDS = {"proposal_id", "agent_id", "verdict", "reasons", "order_ids",
                    "trading_state", "ts", "worst_case"}
_WORST_CASE_FIELDS = {"loss", "bound"}
_inf = math.inf
_INFO = logging.INFO
log = get_logger("bracketgate.risk")   # the governor's (risk.py `log`): one name


def warm(gov: RiskGovernor) -> None:
    """What the first proposal after a snapshot would compute (the freshness cut-off, the
    per-limits constants and the account's caps), computed with the snapshot instead: the
    same values (the same functions), out of the decision's time. Lazily made again on use
    if the limits change."""
    view, lim = gov._view, gov._limits
    if view is None:
        return
    if gov._fresh[0] is not view or gov._fresh[1] is not lim:
        gov._fresh = (view, lim, fresh_until(view.oldest, lim.max_snapshot_age_s))
    if view.values_gate is None and view.connection_gate is None:   # the caps read NetLiquidation
        if gov._fast_limits[0] is not lim:
            gov._fast_limits = limit_constants(lim)
        if gov._fast_snapshot[0] is not view or gov._fast_snapshot[1] is not lim:
            gov._fast_snapshot = snapshot_constants(view, lim, gov._fast_limits)


def decide(gov: RiskGovernor, p: TradeProposal, snapshot: PortfolioSnapshot | None,
           now: datetime, note: Reason | None) -> RiskDecision | None:
    """The decision, reserved and remembered as `_evaluate` would; None: not for this path
    (nothing changed)."""
    fast = gov._fast
    pd = p.__dict__
    state = gov._state
    view = gov._view
    if (fast is None or snapshot is None or pd["legs"] is not None
            or pd["sec_type"] not in FAST_SEC_TYPES or view is None
            or view.snapshot is not snapshot or (state is not _ACTIVE and state is not _REDUCING)):
        return None
    # ---- _check: a token of the agent's budget, then the global one (see there)
    clock = gov._clock
    lim = gov._limits
    mono = clock.monotonic()
    rate_denied: tuple[str, float] | None = None
    agent = pd["agent_id"]
    budget = gov._budgets.get(agent) or gov.budget_of(agent)
    b = gov._agent_buckets.get(budget) or gov._agent_bucket(budget, mono)
    # TokenBucket.take(mono), inline (twice)
    if mono > b.stamp:
        tokens = b.tokens + (mono - b.stamp) * b.rate
        cap = b.capacity
        b.tokens = tokens if tokens < cap else cap
        b.stamp = mono
    if b.tokens >= 1.0:
        b.tokens -= 1.0
        g = gov._proposal_bucket
        if mono > g.stamp:
            tokens = g.tokens + (mono - g.stamp) * g.rate
            cap = g.capacity
            g.tokens = tokens if tokens < cap else cap
            g.stamp = mono
        if g.tokens >= 1.0:
            g.tokens -= 1.0
        else:
            b.tokens += 1.0   # not the agent's fault: its token back
            rate_denied = ("global", lim.max_proposals_per_s)
    else:
        rate_denied = (f"agent {agent}" if budget != _risk.SHARED_BUDGET
                       else "unregistered agents (one shared budget)", b.rate)
    # the fail-closed gates, in _check's order
    fresh = gov._fresh
    if fresh[0] is not view or fresh[1] is not lim:
        fresh = gov._fresh = (view, lim, fresh_until(view.oldest, lim.max_snapshot_age_s))
    until = fresh[2]
    gate = view.connection_gate or (None if until is not None and now <= until else gate_freshness(
        _inf if view.oldest is None else (now - view.oldest).total_seconds(), lim)
    ) or view.values_gate    # (gate_trading_state: never HALTED here)
    if gate is None and gov.scoped_halts:
        gate = _risk._scoped_halt(gov.scoped_halts, p)
    if gate is None:   # gate_numbers(p): its common case spelled out, else the gate itself
        lp, k, q, tp, sl = (pd["limit_price"], pd["strike"], pd["quantity"], pd["take_profit"],
                            pd["stop_loss"])
        if not (type(tp) is float and 0.0 < tp <= MAX_PRICE and type(sl) is float
                and 0.0 < sl <= MAX_PRICE
                and ((type(lp) is float and 0.0 < lp <= MAX_PRICE)
                     or (lp is None and pd["order_type"] is _MKT))
                and (k is None or (type(k) is float and 0.0 < k <= MAX_PRICE))
                and type(q) is int and 0 < q <= MAX_QUANTITY):
            gate = gate_numbers(p)
    ctx = None
    if gate is not None:
        reasons: list[Reason] = [gate]
    else:
        sym = gov._symbol_limits.get(pd["symbol"]) or gov._symbol(pd["symbol"])
        reasons = []
        contract_info = gov._contract_info
        if contract_info is not None:
            contract = contract_info(p)
            if contract is None:
                reasons = [deny(DenialCode.UNKNOWN_CONTRACT, value=pd["symbol"], field="symbol")]
            else:
                mult = contract.multiplier
                tick = contract.min_tick if contract.min_tick > 0 else lim.default_min_tick
                con_id = contract.con_id
        else:   # gov._offline(p, sym), its cache looked up here
            facts = gov._offline_facts.get((pd["symbol"], pd["sec_type"], pd["expiry"],
                                            pd["strike"], pd["right"], pd["currency"]))
            if facts is None:
                facts = gov._offline(p, sym)
            con_id, mult, tick = facts
            if mult is None:
                reasons = [deny(DenialCode.UNKNOWN_CONTRACT, value=pd["symbol"],
                                field="multiplier",
                                detail=f"no contract details; set [symbols.{pd['symbol']}] "
                                       "multiplier")]
        if not reasons:
            market = pd["order_type"] is _MKT
            if market:
                px = market_entry_price(p, snapshot, now, lim, con_id=con_id)
                if isinstance(px, Reason):
                    reasons = [px]
                else:
                    entry = px
            else:
                entry = pd["limit_price"]
            if not reasons:
                out = fast(gov, p, snapshot, view, now, mono, budget, rate_denied, sym, con_id,
                           mult, tick, entry, market)
                assert out is not None, "fastgate.check declined a shape decide() admits"
                reasons, ctx = out
    # ---- _evaluate
    if note is not None and reasons:
        reasons = _risk._explained(reasons, note)
    pid = pd["proposal_id"]
    d = _new_decision(RiskDecision)
    if not reasons:
        assert ctx is not None
        # _reserve
        mono = clock.monotonic()
        n = gov._order_msgs_per_bracket
        budget_ib = gov._order_budget
        if budget_ib is not None:
            budget_ib.promise(n, gov._order_horizon_s(), pid)
            gov._agent_order_bucket(budget, mono).take(mono, n)
        else:
            gov._order_bucket.take(mono, n)
        gov._multipliers[con_id] = mult
        wcl = ctx.worst_case_loss
        # (proposal_id, agent_id = the budget, symbol, con_id, sign, quantity, entry_price,
        # stop_price, multiplier, worst_case_loss, created_at), in Reservation's field order
        res = Reservation(pid, budget, pd["symbol"], con_id, ctx.sign, ctx.quantity, entry,
                          pd["stop_loss"], mult, wcl, now)
        # ledger.reserve(res) of a reservation nothing has happened to yet, spelled out
        ledger = gov.ledger
        by_id = ledger._by_id
        if pid in by_id:
            raise ValueError(f"reservation {pid} already open")
        by_id[pid] = res
        bucket = ledger._by_contract.get(con_id)
        if bucket is None:
            bucket = ledger._by_contract[con_id] = {}
        bucket[pid] = res
        bucket = ledger._by_agent.get(budget)
        if bucket is None:
            bucket = ledger._by_agent[budget] = {}
        bucket[pid] = res
        ledger._account_new(res)
        wc = _new_worst_case(WorstCase)
        set_model_dict(wc, {"loss": round(wcl, 2), "bound": "stop"})
        set_fields_set(wc, _WORST_CASE_FIELDS.copy())
        set_extra(wc, None)
        set_private(wc, None)
        verdict = _APPROVED
    else:
        wc = None
        verdict = _REJECTED
    # _decision (its worst case set as _evaluate then sets it)
    set_model_dict(d, {"proposal_id": pid, "agent_id": agent, "verdict": verdict,
                       "reasons": reasons, "order_ids": None, "trading_state": gov._state,
                       "ts": now, "worst_case": wc})
    set_fields_set(d, _DECISION_FIELDS.copy())
    set_extra(d, None)
    set_private(d, None)
    # DecisionMemory.put, inline
    memory = gov._decisions
    hot = memory._hot
    hot[pid] = (p, d)
    if len(hot) > 4 * memory.recent:
        memory.compact()
    if log.is_enabled_for(_INFO):   # gov._log_decision(p, d, ctx), its level checked here once
        log.info(
            "risk_decision", proposal_id=pid, agent_id=agent, verdict=verdict._value_,
            codes=[r.code._value_ for r in reasons], symbol=pd["symbol"],
            con_id=None if ctx is None else ctx.con_id, side=pd["side"]._value_,
            quantity=pd["quantity"],
            # an approval's worst case is rounded once (its WorstCase.loss)
            worst_case_loss=(None if ctx is None else wc.loss if wc is not None
                             else round(ctx.worst_case_loss, 2)),
            trading_state=gov._state._value_)
    return d
