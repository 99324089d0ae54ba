"""The gate's fused check: every rule's condition tested in one pass, approvals and rejections.

`RiskGovernor._check` can build a RuleContext and run every rule of agents/rules.py in turn —
some 20 function calls and 40 attribute stores per proposal. `check` reads the same numbers
once into locals (limits as per-limits constants, account figures as per-snapshot caps) and
tests each rule's denial condition, written exactly as the rule writes it (same operands, same
order of float operations, so the same answer bit for bit, NaN included). When no condition
holds it approves with the few context fields the approval needs (reservation, log line). When
some do, the reasons come in RULES order: the common ones written here, each with its rule's
own `deny(...)` operands and message (rules.denial, the message made once at import: symbol
lists, geometry, reward:risk, stop distance, order size and notional, positions, exposures,
open brackets, the loss budgets), so the same code, limit, value, field and message; for
the others (reducing-only, sec_type, hours, price bands, ticks, rates) it builds the full
RuleContext once and calls the rule itself. A rejection written entirely here returns the
approval's few context fields only (the log line reads con_id and worst_case_loss; nothing
else reads a rejection's context). A condition it was not written for (a quote with a side
missing, REDUCING, a proposal out of tokens) is not decided here: its rule is called the same
way. It never skips a check.

Scope (anything outside returns None and the governor runs the full chain):
- the rules it covers are COVERED, each named (the RULES of this version); `fast_path_for`
  gives the governor no fused check when its active rules include any other (a rule added to
  RULES later is never skipped: the fused check is off until it covers that rule too);
- single-leg proposals of sec_type STK, OPT or FUT (no `legs`: a combo is never on it);
- trading state ACTIVE or REDUCING (HALTED never gets past the gates).
tests/unit/test_fastgate.py proves it: over random proposals, snapshots, limits and open
brackets, a governor with the fused check and one without take the same decisions (verdict,
codes, limits, values and messages) and hold the same reservations.

Pure Python on purpose: this module and fastpath.py compiled with mypyc 2.4.1 as they are
measured 1.10x on bench/bench_risk.py's p50 with the log filtered (medians of 4 alternated
runs), none at p99 nor with the log line; with check's float locals typed, `check` alone ran
no faster (its time goes to attribute and dict reads on plain objects and to building models,
which compiled code does the same way). Too little to carry a build step: it is not built.
"""

from __future__ import annotations

import math
from datetime import datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from bracketgate.agents import rules as r
from bracketgate.agents.rules import (
    ORDER_MSGS_PER_BRACKET,
    Rule,
    RuleContext,
    denial,
    message_of,
)
from bracketgate.bus.messages import (
    DenialCode,
    PortfolioSnapshot,
    Reason,
    SecType,
    Side,
    TradeProposal,
    TradingState,
)
from bracketgate.config.limits import RiskLimits, SymbolLimits

if TYPE_CHECKING:
    from bracketgate.agents.risk import RiskGovernor, SnapshotView

# the rules `check` tests, each by its own denial condition (see the comments below)
# named one by one (not taken from RULES): a rule added to RULES later is not in here, so
# `fast_path_for` turns the fused check off until it tests that rule too
_TESTED: tuple[Rule, ...] = (
    r.rule_reducing_only, r.rule_symbol_allowed, r.rule_sec_type_allowed, r.rule_trading_hours,
    r.rule_geometry, r.rule_price_band, r.rule_tick, r.rule_reward_risk, r.rule_stop_distance,
    r.rule_max_order_quantity, r.rule_max_order_notional, r.rule_position_limit,
    r.rule_position_notional, r.rule_gross_exposure, r.rule_net_exposure,
    r.rule_max_open_brackets, r.rule_max_open_brackets_agent, r.rule_per_trade_loss,
    r.rule_per_trade_loss_pct, r.rule_daily_loss, r.rule_agent_loss, r.rule_agent_exposure,
    r.rule_rates,
)
COVERED: frozenset[Rule] = frozenset(_TESTED)
FAST_SEC_TYPES = frozenset((SecType.STK, SecType.OPT, SecType.FUT))
_ACTIVE, _REDUCING, _BUY = TradingState.ACTIVE, TradingState.REDUCING, Side.BUY
_MAX_TICK_STEPS = 2.0 ** 53
D = DenialCode
_Reason = Reason
_new_ctx = RuleContext.__new__
_inf = math.inf
_ONE_US = timedelta(microseconds=1)
# each reason's message as its rule's deny(code, detail=...) writes it, made once
_M_DENIED = message_of(D.SYMBOL_NOT_ALLOWED, "denied")
_M_NOT_ALLOWED = message_of(D.SYMBOL_NOT_ALLOWED, "not in the allowed list")
_M_STOP_BELOW = message_of(D.BRACKET_GEOMETRY, "stop must be below the entry")
_M_STOP_ABOVE = message_of(D.BRACKET_GEOMETRY, "stop must be above the entry")
_M_TP_ABOVE = message_of(D.BRACKET_GEOMETRY, "take-profit must be above the entry")
_M_TP_BELOW = message_of(D.BRACKET_GEOMETRY, "take-profit must be below the entry")
_M_RR = message_of(D.REWARD_RISK_TOO_LOW)
_M_STOP_CLOSE = message_of(D.STOP_DISTANCE_OUT_OF_BOUNDS, "stop too close (%)")
_M_STOP_FAR = message_of(D.STOP_DISTANCE_OUT_OF_BOUNDS, "stop too far (%)")
_M_QTY = message_of(D.MAX_ORDER_QUANTITY)
_M_NOTIONAL = message_of(D.MAX_ORDER_NOTIONAL)
_M_POSITION = message_of(D.POSITION_LIMIT)
_M_POSITION_N = message_of(D.POSITION_NOTIONAL_LIMIT)
_M_GROSS = message_of(D.GROSS_EXPOSURE_LIMIT)
_M_NET = message_of(D.NET_EXPOSURE_LIMIT)
_M_OPEN = message_of(D.MAX_OPEN_BRACKETS)
_M_OPEN_AGENT = message_of(D.MAX_OPEN_BRACKETS_AGENT)
_M_PER_TRADE = message_of(D.PER_TRADE_LOSS_LIMIT)
_M_PER_TRADE_PCT = message_of(D.PER_TRADE_LOSS_PCT_LIMIT)
_M_DAILY = message_of(D.DAILY_LOSS_LIMIT)
_M_AGENT_LOSS = message_of(D.AGENT_LOSS_LIMIT)
_M_AGENT_EXPOSURE = message_of(D.AGENT_EXPOSURE_LIMIT)
(_reducing_only, _symbol_allowed, _sec_type_allowed, _trading_hours, _geometry, _price_band,
 _tick, _reward_risk, _stop_distance, _order_quantity, _order_notional, _position_limit,
 _position_notional, _gross, _net, _open_brackets, _open_brackets_agent, _per_trade_loss,
 _per_trade_loss_pct, _daily_loss, _agent_loss, _agent_exposure, _rates) = _TESTED


def fast_path_for(active: tuple[Rule, ...]) -> Any:
    """`check` if it covers every rule in `active`, else None (the full chain alone)."""
    return check if COVERED.issuperset(active) else None


def limit_constants(lim: RiskLimits) -> tuple[Any, ...]:
    """What `check` reads of the limits, read once per limits object (a reload makes another).
    The slippage fraction is `slippage_pct / 100.0`, the same division rules.slippage does
    first; the symbol and sec_type lists as sets (the same membership, without a scan)."""
    return (lim, lim.min_reward_risk, lim.min_stop_distance_pct, lim.max_stop_distance_pct,
            frozenset(lim.denied_symbols), frozenset(lim.allowed_symbols),
            frozenset(lim.allowed_sec_types), lim.price_bands,
            lim.entry_band_pct, lim.exit_band_pct, lim.tick_tolerance, lim.max_open_brackets,
            lim.slippage_ticks, lim.slippage_pct / 100.0, lim.per_trade_loss_limit)


def snapshot_constants(view: SnapshotView, lim: RiskLimits,
                       limits: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """Everything `check` reads that depends on the snapshot and the limits only, once per
    (snapshot, limits), in one tuple: the caps, each the very expression its rule computes
    (`nlv * pct / 100.0`; today's loss budget before the open brackets, `daily_loss_limit +
    min(0.0, daily)`, the left part of rule_daily_loss's sum); the view's figures (a view is
    not changed once made: its dicts and numbers as they are); then `limits`' constants
    (limit_constants(lim), made here if not given)."""
    nlv = view.net_liquidation
    if limits is None or limits[0] is not lim:
        limits = limit_constants(lim)
    return (view, lim, nlv * lim.max_gross_exposure_pct / 100.0,
            nlv * lim.max_net_exposure_pct / 100.0, nlv * lim.per_trade_loss_pct / 100.0,
            lim.daily_loss_limit + min(0.0, view.daily_pnl),
            view.foreign_pending or None, view.positions, view.position_notional,
            view.gross_base, view.net_positions, view.foreign_side[0], view.foreign_side[1],
            view.open_foreign, view.foreign_worst_case) + limits[1:]


def hours_window(hours: tuple[time, time, frozenset[int]], tz: tzinfo, now: datetime
                 ) -> tuple[Any, datetime, datetime, bool]:
    """(hours, from, until, open): rule_trading_hours's test for `now` (weekday in weekdays and
    start <= local time < end), and the span [from, until) of UTC instants it holds for — up to
    the next local start, end or midnight, with the UTC offset it has now. If the offset is not
    the same at `until` (a daylight-saving change comes first), the span is `now` alone."""
    start, end, weekdays = hours
    local = now.astimezone(tz)
    t = local.time()
    is_open = local.weekday() in weekdays and start <= t < end
    naive = local.replace(tzinfo=None)
    day = naive.date()
    nxt = datetime.combine(day + timedelta(days=1), time(0))
    for edge in (datetime.combine(day, start), datetime.combine(day, end)):
        if naive < edge < nxt:
            nxt = edge
    until = now + (nxt - naive)
    if until.astimezone(tz).utcoffset() != local.utcoffset():
        until = now + _ONE_US
    return hours, now, until, is_open


def check(gov: RiskGovernor, p: TradeProposal, snapshot: PortfolioSnapshot,
          view: SnapshotView, now: datetime, mono: float, budget: str,
          rate_denied: tuple[str, float] | None, sym: SymbolLimits, con_id: int,
          mult: float, tick: float, entry: float, market: bool
          ) -> tuple[list[Reason], RuleContext] | None:
    """(reasons, context): the full chain's reasons (its context complete when a rule was
    called, else the approval's fields); None: not for this path."""
    state = gov._state
    pd = p.__dict__
    if pd["sec_type"] not in FAST_SEC_TYPES or pd["legs"] is not None or (
            state is not _ACTIVE and state is not _REDUCING):
        return None
    lim = gov._limits
    f = gov._fast_snapshot
    if f[0] is not view or f[1] is not lim:
        k = gov._fast_limits
        if k[0] is not lim:
            k = gov._fast_limits = limit_constants(lim)
        f = gov._fast_snapshot = snapshot_constants(view, lim, k)
    (_, _, gross_cap, net_cap, pct_cap, daily_base, foreign_pending, positions_now,
     positions_notional, gross_base, net_positions, foreign_buy, foreign_sell, open_foreign,
     foreign_worst, min_rr, min_stop, max_stop, denied, allowed, sec_types, bands, entry_band,
     exit_band, tol, max_open, slip_ticks, slip_frac, per_trade) = f
    # the rules in RULES order: `bad` collects the ones whose denial condition holds (or that
    # this path does not decide), to be called on the full context at the end
    bad: list[Rule | Reason] = [_reducing_only] if state is _REDUCING else []
    sl, tp, lp = pd["stop_loss"], pd["take_profit"], pd["limit_price"]
    sign = 1 if pd["side"] is _BUY else -1
    e = entry
    # rule_symbol_allowed, rule_sec_type_allowed
    s = pd["symbol"]
    if s in denied:
        bad.append(denial(D.SYMBOL_NOT_ALLOWED, _M_DENIED, None, s, "symbol"))
    elif allowed and s not in allowed:
        bad.append(denial(D.SYMBOL_NOT_ALLOWED, _M_NOT_ALLOWED, None, s, "symbol"))
    if pd["sec_type"] not in sec_types:
        bad.append(_sec_type_allowed)
    # rule_trading_hours (in the chain only when hours are set): its answer for `now`, kept
    # for as long as it holds (hours_window), so no timezone work per proposal
    hours = gov._hours
    if hours is not None:
        w = gov._fast_hours
        if not (w[0] is hours and w[1] <= now < w[2]):
            w = gov._fast_hours = hours_window(hours, gov._tz, now)
        if not w[3]:
            bad.append(_trading_hours)
    # rule_geometry
    if sign * (e - sl) <= 0:
        bad.append(denial(D.BRACKET_GEOMETRY, _M_STOP_BELOW if sign > 0 else _M_STOP_ABOVE,
                          e, sl, "stop_loss"))
    elif sign * (tp - e) <= 0:
        bad.append(denial(D.BRACKET_GEOMETRY, _M_TP_ABOVE if sign > 0 else _M_TP_BELOW,
                          e, tp, "take_profit"))
    # rule_price_band (in the chain only with price_bands on): the mid of a usable bid/ask;
    # any other quote (or none) is the rule's to judge
    quote = snapshot.quotes.get(con_id)
    if bands:
        q = quote
        if q is None:
            bad.append(_price_band)
        else:
            bid, ask = q.bid, q.ask
            if not (bid is not None and ask is not None and 0 < bid < _inf and 0 < ask < _inf
                    and bid / 2.0 + ask / 2.0 > 0):
                bad.append(_price_band)
            else:
                ref = bid / 2.0 + ask / 2.0
                width = ref * entry_band / 100.0      # _in_band per price: the entry's band
                if lp is not None and (lp > ref + width or lp < ref - width):
                    bad.append(_price_band)
                else:                                 # then the exits'
                    width = ref * exit_band / 100.0
                    if tp > ref + width or tp < ref - width or sl > ref + width or sl < ref - width:
                        bad.append(_price_band)
    # rule_tick (on_tick for each price given; take-profit and stop are never None here).
    # on_tick's distance to the nearest whole tick, abs(steps - round(steps)), is exact for
    # 1 - tol <= steps < 2**53; so is min(x, 1 - x) of x = steps % 1.0 (fmod is exact, and
    # 1 - x is exact where it is the smaller): the same number, without two calls per price
    lo = 1.0 - tol
    steps = tp / tick
    ok = lo <= steps < _MAX_TICK_STEPS and ((x := steps % 1.0) <= tol or 1.0 - x <= tol)
    if ok:
        steps = sl / tick
        ok = lo <= steps < _MAX_TICK_STEPS and ((x := steps % 1.0) <= tol or 1.0 - x <= tol)
    if ok and lp is not None:
        steps = lp / tick
        ok = lo <= steps < _MAX_TICK_STEPS and ((x := steps % 1.0) <= tol or 1.0 - x <= tol)
    if not ok:
        bad.append(_tick)
    # rule_reward_risk
    risk = abs(e - sl)
    if risk != 0 and (rr := abs(tp - e) / risk) < min_rr:
        bad.append(denial(D.REWARD_RISK_TOO_LOW, _M_RR, min_rr, rr))
    # rule_stop_distance
    pct = risk / e * 100.0
    if pct < min_stop:
        bad.append(denial(D.STOP_DISTANCE_OUT_OF_BOUNDS, _M_STOP_CLOSE, min_stop, pct))
    elif pct > max_stop:
        bad.append(denial(D.STOP_DISTANCE_OUT_OF_BOUNDS, _M_STOP_FAR, max_stop, pct))
    # rule_max_order_quantity, rule_max_order_notional
    qty = pd["quantity"]
    if qty > (x := sym.max_order_quantity):
        bad.append(denial(D.MAX_ORDER_QUANTITY, _M_QTY, x, qty, "quantity"))
    notional = qty * e * mult
    if notional > (x := sym.max_order_notional):
        bad.append(denial(D.MAX_ORDER_NOTIONAL, _M_NOTIONAL, x, notional))
    # rule_position_limit, rule_position_notional (this contract's, with its pending entries,
    # and a pending combo's legs in it: they pend by contract, combo_risk.py)
    ledger = gov.ledger
    i = 0 if sign > 0 else 1
    row = foreign_pending.get(con_id) if foreign_pending is not None else None
    lpd = ledger.contract_pending.get(con_id)
    pending = (row[i] if row else 0.0) + (lpd[i] if lpd else 0.0)
    pending_n = (row[i + 2] if row else 0.0) + (lpd[i + 2] if lpd else 0.0)
    if gov._combos._legs:
        cp = gov._combos.pending(ledger).get(con_id)
        if cp is not None:
            pending += cp[i]
            pending_n += cp[i + 2]
    position = positions_now.get(con_id, 0.0)
    after = abs(position + sign * (pending + qty))
    if after > (x := sym.max_position_units) and after > abs(position + sign * pending):
        bad.append(denial(D.POSITION_LIMIT, _M_POSITION, x, after))
    pos_n = positions_notional.get(con_id, 0.0)
    after = abs(pos_n + sign * (pending_n + notional))
    if after > (x := sym.max_position_notional) and after > abs(pos_n + sign * pending_n):
        bad.append(denial(D.POSITION_NOTIONAL_LIMIT, _M_POSITION_N, x, after))
    # rule_gross_exposure (_after_trade spelled out)
    gross = gross_base + ledger.gross_pending_notional
    held = pos_n + sign * pending_n
    if sign * held < 0:
        after = gross - abs(held) + abs(held + sign * notional)
    else:
        after = gross + notional
    if after > gross_cap and after > gross:
        bad.append(denial(D.GROSS_EXPOSURE_LIMIT, _M_GROSS, gross_cap, after))
    # rule_net_exposure
    net = net_positions + sign * ((foreign_buy if sign > 0 else foreign_sell)
                                  + ledger.side_pending_notional[i])
    after = net + sign * notional
    if abs(after) > net_cap and abs(after) > abs(net):
        bad.append(denial(D.NET_EXPOSURE_LIMIT, _M_NET, net_cap, abs(after)))
    # rule_max_open_brackets, rule_max_open_brackets_agent
    open_brackets = len(ledger._by_id) + open_foreign
    if open_brackets + 1 > max_open:
        bad.append(denial(D.MAX_OPEN_BRACKETS, _M_OPEN, max_open, open_brackets + 1))
    al = gov._agent_limits.get(budget) or gov._agent(budget)
    agent_open = len(ledger._by_agent.get(budget, ()))       # ledger.agent_open(budget)
    if agent_open + 1 > (x := al.max_open_brackets):
        bad.append(denial(D.MAX_OPEN_BRACKETS_AGENT, _M_OPEN_AGENT, x, agent_open + 1))
    # worst_case_loss (rules.worst_case_loss and slippage spelled out, same operations)
    per_unit = risk + (slip_ticks * tick + slip_frac * sl)
    if market:
        per_unit += slip_ticks * tick + slip_frac * e
    wcl = qty * per_unit * mult
    # rule_per_trade_loss, rule_per_trade_loss_pct, rule_daily_loss, rule_agent_loss
    if wcl > per_trade:
        bad.append(denial(D.PER_TRADE_LOSS_LIMIT, _M_PER_TRADE, per_trade, wcl))
    if wcl > pct_cap:
        bad.append(denial(D.PER_TRADE_LOSS_PCT_LIMIT, _M_PER_TRADE_PCT, pct_cap, wcl))
    open_worst = ledger.total_worst_case + foreign_worst
    if wcl > (x := daily_base - open_worst):
        bad.append(denial(D.DAILY_LOSS_LIMIT, _M_DAILY, x, wcl))
    agent_worst = ledger.agent_worst_case.get(budget, 0.0)
    realized = gov._budget_realized.get(budget, 0.0)
    # min(0.0, realized) spelled out: the same value (NaN and -0.0 included: min keeps 0.0)
    if wcl > (x := al.loss_limit + (realized if realized < 0.0 else 0.0) - agent_worst):
        bad.append(denial(D.AGENT_LOSS_LIMIT, _M_AGENT_LOSS, x, wcl))
    # rule_agent_exposure (the governor's loop over the budget's holdings, as in _check, with
    # _mark and _multiplier_for spelled out)
    positions = gov._agent_positions.get(budget)
    exposure = ledger.agent_pending_notional.get(budget, 0.0)
    own_n = 0.0
    if positions:
        marks, last, mults, vmults = view.marks, gov._last_price, gov._multipliers, view.multipliers
        for cid, units in positions.items():
            if cid == con_id:
                own_n = units * ((marks.get(cid) or last.get(cid) or e) or 0.0) * mult
                exposure += abs(own_n)
            else:
                m = mults.get(cid)
                if m is None:
                    m = vmults.get(cid)
                    if m is None:
                        m = 1.0
                exposure += abs(units * ((marks.get(cid) or last.get(cid)) or 0.0) * m)
    if sign * own_n < 0:
        after = exposure - abs(own_n) + abs(own_n + sign * notional)
    else:
        after = exposure + notional
    if after > (x := al.exposure_limit) and after > exposure:
        bad.append(denial(D.AGENT_EXPOSURE_LIMIT, _M_AGENT_EXPOSURE, x, after))
    # rule_rates: out of proposal tokens, the IB pacer's headroom, the agent's share of it,
    # or the governor's own order bucket without a pacer
    needed = gov._order_msgs_per_bracket or ORDER_MSGS_PER_BRACKET
    budget_ib = gov._order_budget
    if budget_ib is not None:
        horizon: float | None = gov._order_horizon_s()
        tokens = budget_ib.headroom(horizon)
        ob = gov._agent_order_buckets.get(budget) or gov._agent_order_bucket(budget, mono)
        share = ob.available(mono)
    else:
        horizon = None
        ob = gov._order_bucket      # .available(mono), inline
        if mono > ob.stamp:
            t = ob.tokens + (mono - ob.stamp) * ob.rate      # min(capacity, t) spelled out
            ob.tokens = t if t < (cap := ob.capacity) else cap
            ob.stamp = mono
        tokens = ob.tokens
        share = _inf
    if rate_denied is not None or not (tokens >= needed and share >= needed):
        bad.append(_rates)

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
    if not bad:
        return [], c
    for x in bad:
        if type(x) is not _Reason:
            break
    else:   # every reason written here: the context needs no more (the log line reads con_id
        return bad, c   # and worst_case_loss)
    # the rest of what _check puts in the context, for the rules that judge
    c.limits = lim
    c.agent_limits = al
    c.symbol_limits = sym
    c.state = state
    c.tz = gov._tz
    c.hours = hours
    c.market_entry = market
    c.quote = quote
    c.tick = tick
    c.net_liquidation = view.net_liquidation
    c.daily_pnl = view.daily_pnl
    c.position = position
    c.position_notional = pos_n
    c.pending_same = pending
    c.pending_same_notional = pending_n
    c.gross_exposure = gross
    c.net_exposure = net
    c.open_brackets = open_brackets
    c.open_worst_case = open_worst
    c.agent_open_brackets = agent_open
    c.agent_worst_case = agent_worst
    c.agent_realized = realized
    c.agent_exposure = exposure
    c.agent_position_notional = own_n
    c.proposal_rate_denied = rate_denied
    c.order_horizon_s = horizon
    c.order_tokens = tokens
    c.agent_order_tokens = share
    c.order_msgs_needed = gov._order_msgs_per_bracket
    return [x for rule in bad if (x := (rule if type(rule) is _Reason else rule(c))) is not None], c
