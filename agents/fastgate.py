"""The gate's fused all-pass check: the common case (every rule passes) decided in one pass.

`RiskGovernor._check` builds a RuleContext and runs every rule of agents/rules.py in turn — some
20 function calls and 40 attribute stores per proposal. Most proposals that pass, pass by a wide
margin; `all_pass` reads the same numbers once into locals and tests each rule's denial
condition, written exactly as the rule writes it (same operands, same order of float
operations, so the same answer bit for bit, NaN included). It returns the few context fields
the approval needs (reservation, log line) only when no rule can deny; on anything else — a
rule that would deny, a case it was not written for — it returns None and the governor runs
the full chain, which produces the reasons. It never decides a rejection and never skips a
check: the full chain is the only path that can say no.

Scope (anything outside goes down the full chain):
- the rules it covers are COVERED, each named (the RULES of this version); `fast_path_for`
  gives the governor no fast path when its active rules include any other (a rule added to
  RULES later is never skipped: the fast path is off until it covers that rule too);
- single-leg proposals of sec_type STK, OPT or FUT (no `legs`: a combo is never on it);
- trading state ACTIVE (REDUCING runs the reducing-only rule on the full chain);
- price bands with a quote that has both bid and ask usable (the reference price's common
  case).
tests/unit/test_fastgate.py proves it: over random proposals, snapshots, limits and open
brackets, a governor with the fast path and one without take the same decisions (verdict,
codes, limits and values) and hold the same reservations.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bracketgate.agents import rules as r
from bracketgate.agents.rules import ORDER_MSGS_PER_BRACKET, Rule, RuleContext
from bracketgate.bus.messages import PortfolioSnapshot, SecType, Side, TradeProposal, TradingState
from bracketgate.config.limits import SymbolLimits

if TYPE_CHECKING:
    from bracketgate.agents.risk import RiskGovernor, SnapshotView

# the rules all_pass tests, each by its own denial condition (see the comments below)
# named one by one (not taken from RULES): a rule added to RULES later is not in here, so
# `fast_path_for` turns the fast path off until all_pass tests it too
COVERED: frozenset[Rule] = frozenset((
    r.rule_reducing_only, r.rule_symbol_allowed, r.rule_sec_type_allowed, r.rule_trading_hours,
    r.rule_geometry, r.rule_price_band, r.rule_tick, r.rule_reward_risk, r.rule_stop_distance,
    r.rule_max_order_quantity, r.rule_max_order_notional, r.rule_position_limit,
    r.rule_position_notional, r.rule_gross_exposure, r.rule_net_exposure,
    r.rule_max_open_brackets, r.rule_max_open_brackets_agent, r.rule_per_trade_loss,
    r.rule_per_trade_loss_pct, r.rule_daily_loss, r.rule_agent_loss, r.rule_agent_exposure,
    r.rule_rates,
))
FAST_SEC_TYPES = frozenset((SecType.STK, SecType.OPT, SecType.FUT))
_ACTIVE, _BUY = TradingState.ACTIVE, Side.BUY
_MAX_TICK_STEPS = 2.0 ** 53
_new_ctx = RuleContext.__new__
_inf = math.inf


def fast_path_for(active: tuple[Rule, ...]) -> Any:
    """`all_pass` if it covers every rule in `active`, else None (the full chain alone)."""
    return all_pass if COVERED.issuperset(active) else None


def all_pass(gov: RiskGovernor, p: TradeProposal, snapshot: PortfolioSnapshot,
             view: SnapshotView, now: datetime, mono: float, budget: str,
             rate_denied: tuple[str, float] | None, sym: SymbolLimits, con_id: int,
             mult: float, tick: float, entry: float, market: bool) -> RuleContext | None:
    """A RuleContext with the fields an approval reads (proposal, now, con_id, sign, quantity,
    entry, multiplier, worst_case_loss, notional) when no rule would deny; else None."""
    if (rate_denied is not None or gov._state is not _ACTIVE
            or p.sec_type not in FAST_SEC_TYPES or p.__dict__.get("legs")
            or gov._combos):    # a pending combo's legs pend by contract (combo_risk.py)
        return None
    lim = gov._limits
    sl, tp, lp = p.stop_loss, p.take_profit, p.limit_price
    sign = 1 if p.side is _BUY else -1
    e = entry
    # every condition must hold, so their order is free: what most failing proposals fail
    # on comes first (a rejection pays only up to its first failing condition)
    # rule_geometry
    if sign * (e - sl) <= 0 or sign * (tp - e) <= 0:
        return None
    # rule_reward_risk
    risk = abs(e - sl)
    if risk != 0 and abs(tp - e) / risk < lim.min_reward_risk:
        return None
    # rule_stop_distance
    pct = abs(e - sl) / e * 100.0
    if pct < lim.min_stop_distance_pct or pct > lim.max_stop_distance_pct:
        return None
    # rule_max_order_quantity, rule_max_order_notional
    qty = p.quantity
    if qty > sym.max_order_quantity:
        return None
    notional = qty * e * mult
    if notional > sym.max_order_notional:
        return None
    # rule_symbol_allowed, rule_sec_type_allowed
    s = p.symbol
    if s in lim.denied_symbols:
        return None
    allowed = lim.allowed_symbols
    if allowed and s not in allowed:
        return None
    if p.sec_type not in lim.allowed_sec_types:
        return None
    # rule_trading_hours (in the chain only when hours are set)
    hours = gov._hours
    if hours is not None:
        start, end, weekdays = hours
        local = now.astimezone(gov._tz)
        t = local.time()
        if local.weekday() not in weekdays or not (start <= t < end):
            return None
    # rule_price_band (in the chain only with price_bands on): the mid of a usable bid/ask
    if lim.price_bands:
        q = snapshot.quotes.get(con_id)
        if q is None:
            return None
        bid, ask = q.bid, q.ask
        if not (bid is not None and ask is not None and 0 < bid < _inf and 0 < ask < _inf
                and bid / 2.0 + ask / 2.0 > 0):
            return None
        ref = bid / 2.0 + ask / 2.0
        if lp is not None:      # _in_band per price, the entry's band then the exits'
            width = ref * lim.entry_band_pct / 100.0
            if lp > ref + width or lp < ref - width:
                return None
        width = ref * lim.exit_band_pct / 100.0
        if tp > ref + width or tp < ref - width or sl > ref + width or sl < ref - width:
            return None
    # rule_tick (on_tick for each price given; take-profit and stop are never None here)
    tol = lim.tick_tolerance
    lo = 1.0 - tol
    if lp is not None:
        steps = lp / tick
        if not lo <= steps < _MAX_TICK_STEPS or not abs(steps - round(steps)) <= tol:
            return None
    steps = tp / tick
    if not lo <= steps < _MAX_TICK_STEPS or not abs(steps - round(steps)) <= tol:
        return None
    steps = sl / tick
    if not lo <= steps < _MAX_TICK_STEPS or not abs(steps - round(steps)) <= tol:
        return None
    # rule_position_limit, rule_position_notional (this contract's, with its pending entries)
    ledger = gov.ledger
    i = 0 if sign > 0 else 1
    row = view.foreign_pending.get(con_id) if view.foreign_pending else None
    lpd = ledger.contract_pending.get(con_id)
    pending = (row[i] if row else 0.0) + (lpd[i] if lpd else 0.0)
    pending_n = (row[i + 2] if row else 0.0) + (lpd[i + 2] if lpd else 0.0)
    position = view.positions.get(con_id, 0.0)
    before = abs(position + sign * pending)
    after = abs(position + sign * (pending + qty))
    cap = sym.max_position_units
    if after > cap and after > before:
        return None
    pos_n = view.position_notional.get(con_id, 0.0)
    before = abs(pos_n + sign * pending_n)
    after = abs(pos_n + sign * (pending_n + notional))
    cap = sym.max_position_notional
    if after > cap and after > before:
        return None
    # rule_gross_exposure (_after_trade spelled out)
    nlv = view.net_liquidation
    gross = view.gross_base + ledger.gross_pending_notional
    held = pos_n + sign * pending_n
    if sign * held < 0:
        after = gross - abs(held) + abs(held + sign * notional)
    else:
        after = gross + notional
    cap = nlv * lim.max_gross_exposure_pct / 100.0
    if after > cap and after > gross:
        return None
    # rule_net_exposure
    net = view.net_positions + sign * (view.foreign_side[i] + ledger.side_pending_notional[i])
    after = net + sign * notional
    cap = nlv * lim.max_net_exposure_pct / 100.0
    if abs(after) > cap and abs(after) > abs(net):
        return None
    # rule_max_open_brackets, rule_max_open_brackets_agent
    if len(ledger._by_id) + view.open_foreign + 1 > lim.max_open_brackets:
        return None
    al = gov._agent_limits.get(budget) or gov._agent(budget)
    if len(ledger._by_agent.get(budget, ())) + 1 > al.max_open_brackets:   # agent_open
        return None
    # worst_case_loss (rules.worst_case_loss and slippage spelled out, same operations)
    per_unit = abs(e - sl) + (lim.slippage_ticks * tick + lim.slippage_pct / 100.0 * sl)
    if market:
        per_unit += lim.slippage_ticks * tick + lim.slippage_pct / 100.0 * e
    wcl = qty * per_unit * mult
    # rule_per_trade_loss, rule_per_trade_loss_pct, rule_daily_loss, rule_agent_loss
    if wcl > lim.per_trade_loss_limit or wcl > nlv * lim.per_trade_loss_pct / 100.0:
        return None
    open_worst = ledger.total_worst_case + view.foreign_worst_case
    if wcl > lim.daily_loss_limit + min(0.0, view.daily_pnl) - open_worst:
        return None
    agent_worst = ledger.agent_worst_case.get(budget, 0.0)
    if wcl > al.loss_limit + min(0.0, gov._budget_realized.get(budget, 0.0)) - agent_worst:
        return None
    # rule_agent_exposure (the governor's loop over the budget's holdings, as in _check)
    positions = gov._agent_positions.get(budget)
    exposure = ledger.agent_pending_notional.get(budget, 0.0)
    own_n = 0.0
    if positions:
        for cid, units in positions.items():
            own = cid == con_id
            n = (units * gov._mark(cid, view, e if own else None)
                 * (mult if own else gov._multiplier_for(cid, "")))
            exposure += abs(n)
            if own:
                own_n = n
    if sign * own_n < 0:
        after = exposure - abs(own_n) + abs(own_n + sign * notional)
    else:
        after = exposure + notional
    if after > al.exposure_limit and after > exposure:
        return None
    # rule_rates (rate_denied is None here): the IB pacer's headroom, the agent's share of it,
    # or the governor's own order bucket without a pacer
    needed = gov._order_msgs_per_bracket or ORDER_MSGS_PER_BRACKET
    if gov._order_budget is not None:
        if gov._order_budget.headroom(gov._order_horizon_s()) < needed:
            return None
        ob = gov._agent_order_buckets.get(budget) or gov._agent_order_bucket(budget, mono)
        if ob.available(mono) < needed:
            return None
    elif gov._order_bucket.available(mono) < needed:
        return None

    c = _new_ctx(RuleContext)
    c.proposal = p
    c.now = now
    c.con_id = con_id
    c.sign = sign
    c.quantity = qty
    c.entry = e
    c.multiplier = mult
    c.worst_case_loss = wcl
    c.notional = notional
    c.combo = None           # never a combo here (legs take the full chain)
    return c
