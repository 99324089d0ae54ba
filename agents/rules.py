"""The RiskGovernor's checks: each a small pure function `(ctx: RuleContext) -> Reason | None`.

None passes; a Reason denies with its DenialCode, the code's message from DENIAL_MESSAGES,
and the limit and value that decided it. The governor fills a RuleContext once per proposal
(every number a rule needs, already resolved), runs GATES in order — the first denial
short-circuits, since past it the numbers cannot be trusted — then every rule in RULES,
collecting every denial.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from bracketgate.bus.messages import (
    DENIAL_MESSAGES,
    MAX_PRICE,
    MAX_QUANTITY,
    ConnectionState,
    DenialCode,
    OrderType,
    PortfolioSnapshot,
    Quote,
    Reason,
    SecType,
    Side,
    TradeProposal,
    TradingState,
)
from bracketgate.config.limits import AgentLimits, RiskLimits, SymbolLimits

D = DenialCode


M = TypeVar("M", bound=BaseModel)
_set_attr = object.__setattr__


def construct(cls: type[M], **fields: Any) -> M:
    """A model from values already valid, without validation: the hot path's model_construct
    (which is about twice as slow). Every field must be given."""
    m = cls.__new__(cls)
    _set_attr(m, "__dict__", fields)
    _set_attr(m, "__pydantic_fields_set__", set(fields))
    _set_attr(m, "__pydantic_extra__", None)
    _set_attr(m, "__pydantic_private__", None)
    return m


_new_reason = Reason.__new__
_REASON_FIELDS = frozenset(("code", "message", "limit", "value", "field", "bound"))
_REASON_FIELDS_SET = set(_REASON_FIELDS)     # copied per Reason (a copy: half of set(frozenset))
# a model's four slots, set through BaseModel's own descriptors: what object.__setattr__(m,
# name, v) does once it has found them (it looks each up along the class's MRO first), at
# about a quarter less per model. For models built without validation on the hot path.
_slots = BaseModel.__dict__
set_model_dict = _slots["__dict__"].__set__
set_fields_set = _slots["__pydantic_fields_set__"].__set__
set_extra = _slots["__pydantic_extra__"].__set__
set_private = _slots["__pydantic_private__"].__set__


def deny(code: DenialCode, limit: Any = None, value: Any = None, *, detail: str = "",
         field: str | None = None) -> Reason:
    """A typed denial. Built without validation (hot path), so normalised here as Reason's
    validator would: numbers become floats, non-finite floats become text."""
    msg = DENIAL_MESSAGES[code]
    # floats that are finite (x - x is 0.0 only for those) go as they are: the common case
    if type(limit) is not float or limit - limit != 0.0:
        limit = _number_or_text(limit)
    if type(value) is not float or value - value != 0.0:
        value = _number_or_text(value)
    m = _new_reason(Reason)
    set_model_dict(m, {"code": code, "message": f"{msg}: {detail}" if detail else msg,
                       "limit": limit, "value": value, "field": field, "bound": None})
    set_fields_set(m, _REASON_FIELDS_SET.copy())
    set_extra(m, None)
    set_private(m, None)
    return m


def message_of(code: DenialCode, detail: str = "") -> str:
    """The message `deny(code, detail=detail)` writes, made once (agents/fastgate.py)."""
    msg = DENIAL_MESSAGES[code]
    return f"{msg}: {detail}" if detail else msg


def denial(code: DenialCode, message: str, limit: Any, value: Any,
           field: str | None = None) -> Reason:
    """`deny` with its message already made (`message_of`) and positional arguments: the same
    Reason, normalised the same way, for the fused check's reasons (agents/fastgate.py)."""
    if type(limit) is not float or limit - limit != 0.0:
        limit = _number_or_text(limit)
    if type(value) is not float or value - value != 0.0:
        value = _number_or_text(value)
    m = _new_reason(Reason)
    set_model_dict(m, {"code": code, "message": message, "limit": limit, "value": value,
                       "field": field, "bound": None})
    set_fields_set(m, _REASON_FIELDS_SET.copy())
    set_extra(m, None)
    set_private(m, None)
    return m


def _number_or_text(v: Any) -> float | str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        f = float(v)
        return f if math.isfinite(f) else str(f)
    return str(v)


def slippage(price: float, tick: float, limits: RiskLimits) -> float:
    """Per-unit price allowance for a fill worse than asked."""
    return limits.slippage_ticks * tick + limits.slippage_pct / 100.0 * price


def worst_case_loss(quantity: float, entry: float, stop: float, multiplier: float, tick: float,
                    limits: RiskLimits, *, market_entry: bool) -> float:
    """The bracket as one unit: loss if the entry fills and the stop is hit, with slippage."""
    per_unit = abs(entry - stop) + slippage(stop, tick, limits)
    if market_entry:
        per_unit += slippage(entry, tick, limits)
    return quantity * per_unit * multiplier


# past 2**53 ticks every float is a whole number of them: the grid cannot be checked any more
_MAX_TICK_STEPS = 2.0 ** 53


def on_tick(price: float, tick: float, tolerance: float) -> bool:
    """`price` is a whole number of ticks, at least one. Never raises: a price so large (or so
    small) that the tick count is inf, nan or past float precision is off tick."""
    steps = price / tick
    if not 1.0 - tolerance <= steps < _MAX_TICK_STEPS:   # also False for nan
        return False
    return abs(steps - round(steps)) <= tolerance


class RuleContext:
    """Everything a rule reads, resolved once per proposal by the governor."""

    __slots__ = (
        "proposal", "limits", "agent_limits", "symbol_limits", "now", "state", "tz", "hours",
        "con_id", "sign", "quantity", "entry", "market_entry", "quote", "tick", "multiplier",
        "worst_case_loss",
        "notional", "net_liquidation", "daily_pnl",
        "position", "position_notional", "pending_same", "pending_same_notional",
        "gross_exposure", "net_exposure",
        "open_brackets", "open_worst_case", "agent_open_brackets", "agent_worst_case",
        "agent_realized", "agent_exposure", "agent_position_notional",
        "proposal_rate_denied", "order_tokens", "order_msgs_needed",
        "order_horizon_s", "agent_order_tokens", "combo",
    )

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.pop(k, None))
        if kw:
            raise TypeError(f"unknown RuleContext fields: {sorted(kw)}")

    proposal: TradeProposal
    limits: RiskLimits
    agent_limits: AgentLimits
    symbol_limits: SymbolLimits
    now: datetime
    state: TradingState
    tz: ZoneInfo
    hours: tuple[time, time, frozenset[int]] | None
    con_id: int                     # the proposal's contract (IB conId, or an offline stand-in)
    sign: int                       # +1 BUY, -1 SELL
    quantity: float
    entry: float                    # limit price, or the quote for a MKT entry
    market_entry: bool
    quote: Quote | None             # the contract's current quote (see quote_for)
    tick: float
    multiplier: float
    worst_case_loss: float
    notional: float                 # quantity x entry x multiplier
    net_liquidation: float
    daily_pnl: float
    position: float                 # signed units of this contract held now (snapshot)
    position_notional: float        # signed notional of this contract held now
    pending_same: float             # units of this contract pending in this proposal's direction
    pending_same_notional: float
    gross_exposure: float           # sum |position notional| + pending, now
    net_exposure: float             # signed sum, now, with this side's pending entries
    open_brackets: int
    open_worst_case: float          # every open bracket's worst case (reserved + working)
    agent_open_brackets: int
    agent_worst_case: float
    agent_realized: float           # the agent's realized P&L today
    agent_exposure: float           # the agent's |position notional| + pending, now
    agent_position_notional: float  # the agent's signed position notional in this contract
    proposal_rate_denied: tuple[str, float] | None   # (bucket, its rate) if out of tokens
    order_tokens: float
    order_msgs_needed: int          # 3 legs, + 1 when a what-if precedes them
    order_horizon_s: float | None   # the IB pacer's horizon for order_tokens; None = own bucket
    agent_order_tokens: float | None  # the agent's share of the pacer left (inf: no pacer)
    combo: Any                      # a combo's facts (agents/combo_risk.py ComboRisk); None = one leg


Rule = Callable[[RuleContext], Reason | None]


# =========================================================================== gates (short-circuit)
# Gates read the raw inputs; they run before the context's numbers are resolved.


def gate_connection(snapshot: PortfolioSnapshot | None) -> Reason | None:
    """Fail closed unless IB is connected and the state reconciled since the last connect."""
    if snapshot is None:
        return deny(D.BROKER_DISCONNECTED, detail="no portfolio snapshot yet")
    conn = snapshot.connection
    if conn is ConnectionState.CONNECTIVITY_LOST:
        return deny(D.BROKER_CONNECTIVITY_LOST, value=conn.value)
    if conn is ConnectionState.DISCONNECTED or conn is ConnectionState.CONNECTING:
        return deny(D.BROKER_DISCONNECTED, value=conn.value)
    if conn is not ConnectionState.READY or not snapshot.reconciled:
        return deny(D.NOT_RECONCILED, value=conn.value)
    return None


def gate_freshness(age: float, limits: RiskLimits) -> Reason | None:
    """`age`: seconds since the oldest of account values, positions and P&L (inf if missing)."""
    if not age <= limits.max_snapshot_age_s:
        return deny(D.SNAPSHOT_STALE, limits.max_snapshot_age_s, age)
    return None


def fresh_until(oldest: datetime | None, max_age_s: float) -> datetime | None:
    """Up to when (inclusive) a snapshot whose oldest part is `oldest` passes gate_freshness,
    as a datetime to compare `now` with (no subtraction per proposal); None: compute the age.
    One microsecond short of the limit, so `now <= fresh_until` implies
    `(now - oldest).total_seconds() <= max_age_s` exactly (datetimes count whole microseconds;
    past the cut-off the age is computed as before)."""
    if oldest is None or not 0 < max_age_s < 1e9:
        return None
    return oldest + timedelta(microseconds=math.floor(max_age_s * 1e6) - 1)


def gate_account_values(snapshot: PortfolioSnapshot) -> Reason | None:
    """Fail closed on a placeholder: P&L or the account values risk needs missing or unset."""
    daily = snapshot.pnl.daily
    if daily is None or not math.isfinite(daily):
        return deny(D.PNL_UNKNOWN, value=daily)
    values = snapshot.account_values
    for key in ("NetLiquidation", "AvailableFunds"):
        v = values.get(key)
        if v is None or not math.isfinite(v) or (key == "NetLiquidation" and v <= 0):
            return deny(D.ACCOUNT_VALUES_UNKNOWN, value=v, field=key)
    return None


def gate_broker_state(snapshot: PortfolioSnapshot | None, now: datetime,
                      limits: RiskLimits) -> Reason | None:
    """Fail closed unless the broker picture is connected, reconciled, fresh and complete.
    (The governor runs the same three gates with the snapshot-only parts cached.)"""
    gate = gate_connection(snapshot)
    if gate is not None or snapshot is None:
        return gate
    return gate_freshness(snapshot.data_age(now), limits) or gate_account_values(snapshot)


def gate_trading_state(state: TradingState) -> Reason | None:
    if state is TradingState.HALTED:
        return deny(D.TRADING_HALTED, value=state.value)
    return None


def _price_ok(v: Any) -> bool:
    return type(v) is float and 0.0 < v <= MAX_PRICE


def gate_numbers(p: TradeProposal) -> Reason | None:
    """Every price finite, > 0 and at most MAX_PRICE, the quantity a whole number in range.
    The contract validates the same; checked again here (a few comparisons) so that no
    proposal, however it was built, reaches the arithmetic with a number it cannot take."""
    d = p.__dict__
    lp, k, q, tp, sl = d["limit_price"], d["strike"], d["quantity"], d["take_profit"], d["stop_loss"]
    # _price_ok spelled out for each price
    if (type(tp) is float and 0.0 < tp <= MAX_PRICE and type(sl) is float and 0.0 < sl <= MAX_PRICE
            and ((type(lp) is float and 0.0 < lp <= MAX_PRICE)
                 or (lp is None and d["order_type"] is OrderType.MKT))
            and (k is None or (type(k) is float and 0.0 < k <= MAX_PRICE))
            and type(q) is int and 0 < q <= MAX_QUANTITY):
        return None     # the common case, decided in a few comparisons; else find the reason
    for name in ("limit_price", "take_profit", "stop_loss", "strike"):
        v = getattr(p, name)
        if v is None:
            if name in ("take_profit", "stop_loss") or (
                    name == "limit_price" and p.order_type is not OrderType.MKT):
                return deny(D.PRICE_OUT_OF_BAND, MAX_PRICE, field=name, detail="missing")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_PRICE:
            return deny(D.PRICE_OUT_OF_BAND, MAX_PRICE, _shown(v), field=name,
                        detail=f"a price is > 0 and <= {MAX_PRICE:g}")
    if isinstance(q, bool) or not isinstance(q, int) or not 0 < q <= MAX_QUANTITY:
        return deny(D.MAX_ORDER_QUANTITY, MAX_QUANTITY, _shown(q), field="quantity")
    return None


def _shown(v: Any) -> float | str:
    """A number for a Reason; one float() or str() cannot take (an int of 5,000 digits) as
    short text."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"<{type(v).__name__}>"
    if isinstance(v, float) or abs(v) < 10**300:
        return float(v) if math.isfinite(v) else str(v)
    return f"<an integer of {int(v.bit_length() * 0.30103) + 1} digits>"


def quote_for(snapshot: PortfolioSnapshot, con_id: int) -> Quote | None:
    """The snapshot's quote for one contract (conId): the ONE place a quote is looked up
    (market entries, price bands, the daemon's prepare hook)."""
    return snapshot.quotes.get(con_id)


def _usable(px: float | None) -> bool:
    return px is not None and 0 < px < math.inf


def reference_price(c: RuleContext) -> float | Reason:
    """The centre of the price bands: the quote's mid (bid and ask both usable), else its last,
    else the one side it has (a stream's first tick may bring only the ask). Any quote the
    adapter holds will do, however old: a band is a sanity bound, not a price (a MKT entry's
    price needs a fresh one, see market_entry_price)."""
    q = c.quote
    sym = c.proposal.symbol
    if q is None:
        return deny(D.QUOTE_UNAVAILABLE, detail=f"no quote for {sym} to check the price bands "
                    "against (price_bands = false in the limits file switches them off)")
    bid, ask = q.bid, q.ask
    if bid is not None and ask is not None and 0 < bid < math.inf and 0 < ask < math.inf \
            and bid / 2.0 + ask / 2.0 > 0:  # both usable, the common case
        return bid / 2.0 + ask / 2.0       # halves: never overflows (nor is 0 but for 5e-324s)
    bid, ask = bid if _usable(bid) else None, ask if _usable(ask) else None
    if bid is not None and ask is not None and bid / 2.0 + ask / 2.0 > 0:
        return bid / 2.0 + ask / 2.0
    for px in (q.last, bid, ask):
        if _usable(px):
            return px  # type: ignore[return-value]
    return deny(D.QUOTE_UNAVAILABLE, detail=f"no usable bid/ask/last for {sym} (price bands)")


def market_entry_price(proposal: TradeProposal, snapshot: PortfolioSnapshot, now: datetime,
                       limits: RiskLimits, *, con_id: int) -> float | Reason:
    """A MKT entry's price from the quote of the proposal's own contract (`con_id`, never the
    symbol: a stock's quote must not price its option): ask for a BUY, bid for a SELL, else
    last; stale = unavailable."""
    q = quote_for(snapshot, con_id)
    if q is None:
        return deny(D.QUOTE_UNAVAILABLE, value=con_id, field="con_id",
                    detail=f"no quote for {proposal.symbol} {proposal.sec_type.value} (conId {con_id})")
    age = (now - q.ts).total_seconds()
    if age > limits.max_quote_age_s:
        return deny(D.QUOTE_UNAVAILABLE, limits.max_quote_age_s, age, detail="quote stale",
                    field="quote_age_s")
    px = q.ask if proposal.side is Side.BUY else q.bid
    if px is None or not (px > 0 and math.isfinite(px)):
        px = q.last
    if px is None or not (px > 0 and math.isfinite(px)):
        return deny(D.QUOTE_UNAVAILABLE, detail=f"no usable bid/ask/last for {proposal.symbol}")
    return px


# =========================================================================== rules (collected)


def rule_reducing_only(c: RuleContext) -> Reason | None:
    """REDUCING admits a proposal only if it shrinks a position, after pending reductions."""
    if c.state is not TradingState.REDUCING:
        return None
    held_against = max(0.0, -c.sign * c.position)      # long for a SELL, |short| for a BUY
    reducible = max(0.0, held_against - c.pending_same)
    if c.quantity > reducible:
        return deny(D.REDUCING_ONLY, reducible, c.quantity, field="quantity")
    return None


def rule_symbol_allowed(c: RuleContext) -> Reason | None:
    sym = c.proposal.symbol
    if sym in c.limits.denied_symbols:
        return deny(D.SYMBOL_NOT_ALLOWED, value=sym, detail="denied", field="symbol")
    allowed = c.limits.allowed_symbols
    if allowed and sym not in allowed:
        return deny(D.SYMBOL_NOT_ALLOWED, value=sym, detail="not in the allowed list",
                    field="symbol")
    return None


def rule_sec_type_allowed(c: RuleContext) -> Reason | None:
    st = c.proposal.sec_type
    if st not in c.limits.allowed_sec_types:
        return deny(D.SEC_TYPE_NOT_ALLOWED, value=st.value, field="sec_type")
    return None


def rule_trading_hours(c: RuleContext) -> Reason | None:
    if c.hours is None:
        return None
    start, end, weekdays = c.hours
    local = c.now.astimezone(c.tz)
    t = local.time()
    if local.weekday() not in weekdays or not (start <= t < end):
        return deny(D.OUTSIDE_TRADING_HOURS, f"{start:%H:%M}-{end:%H:%M} {c.tz.key}",
                    local.strftime("%a %H:%M:%S"))
    return None


def rule_geometry(c: RuleContext) -> Reason | None:
    """BUY: stop < entry < take-profit. SELL: the reverse."""
    p, e = c.proposal, c.entry
    s = c.sign
    if s * (e - p.stop_loss) <= 0:
        return deny(D.BRACKET_GEOMETRY, e, p.stop_loss, field="stop_loss",
                    detail=f"stop must be {'below' if s > 0 else 'above'} the entry")
    if s * (p.take_profit - e) <= 0:
        return deny(D.BRACKET_GEOMETRY, e, p.take_profit, field="take_profit",
                    detail=f"take-profit must be {'above' if s > 0 else 'below'} the entry")
    return None


def rule_price_band(c: RuleContext) -> Reason | None:
    """limit_price within entry_band_pct of the quote, take_profit and stop_loss within
    exit_band_pct of it; no quote fails closed. The first price outside its band is named."""
    lim = c.limits
    if not lim.price_bands:
        return None
    ref = reference_price(c)
    if isinstance(ref, Reason):
        return ref
    p = c.proposal
    entry_w, exit_w = lim.entry_band_pct, lim.exit_band_pct
    return (_in_band("limit_price", p.limit_price, ref, entry_w)
            or _in_band("take_profit", p.take_profit, ref, exit_w)
            or _in_band("stop_loss", p.stop_loss, ref, exit_w))


def _in_band(name: str, px: float | None, ref: float, pct: float) -> Reason | None:
    """None if `px` is absent or within `pct` % of `ref`; else the PRICE_OUT_OF_BAND denial."""
    if px is None:
        return None
    width = ref * pct / 100.0
    if px > ref + width:
        return deny(D.PRICE_OUT_OF_BAND, ref + width, px, field=name,
                    detail=f"{name} more than {pct:g}% above the quote {ref:g}")
    if px < ref - width:
        return deny(D.PRICE_OUT_OF_BAND, ref - width, px, field=name,
                    detail=f"{name} more than {pct:g}% below the quote {ref:g}")
    return None


def rule_tick(c: RuleContext) -> Reason | None:
    p, tick, tol = c.proposal, c.tick, c.limits.tick_tolerance
    lp, tp, sl = p.limit_price, p.take_profit, p.stop_loss
    if lp is not None and not on_tick(lp, tick, tol):
        return deny(D.PRICE_OFF_TICK, tick, lp, field="limit_price")
    if tp is not None and not on_tick(tp, tick, tol):
        return deny(D.PRICE_OFF_TICK, tick, tp, field="take_profit")
    if sl is not None and not on_tick(sl, tick, tol):
        return deny(D.PRICE_OFF_TICK, tick, sl, field="stop_loss")
    return None


def rule_reward_risk(c: RuleContext) -> Reason | None:
    risk = abs(c.entry - c.proposal.stop_loss)
    if risk == 0:
        return None  # geometry reports it
    rr = abs(c.proposal.take_profit - c.entry) / risk
    if rr < c.limits.min_reward_risk:
        return deny(D.REWARD_RISK_TOO_LOW, c.limits.min_reward_risk, rr)
    return None


def rule_stop_distance(c: RuleContext) -> Reason | None:
    pct = abs(c.entry - c.proposal.stop_loss) / c.entry * 100.0
    lo, hi = c.limits.min_stop_distance_pct, c.limits.max_stop_distance_pct
    if pct < lo:
        return deny(D.STOP_DISTANCE_OUT_OF_BOUNDS, lo, pct, detail="stop too close (%)")
    if pct > hi:
        return deny(D.STOP_DISTANCE_OUT_OF_BOUNDS, hi, pct, detail="stop too far (%)")
    return None


def rule_max_order_quantity(c: RuleContext) -> Reason | None:
    lim = c.symbol_limits.max_order_quantity
    if c.quantity > lim:
        return deny(D.MAX_ORDER_QUANTITY, lim, c.quantity, field="quantity")
    return None


def rule_max_order_notional(c: RuleContext) -> Reason | None:
    lim = c.symbol_limits.max_order_notional
    if c.notional > lim:
        return deny(D.MAX_ORDER_NOTIONAL, lim, c.notional)
    return None


def _grows(before: float, after: float, limit: float) -> bool:
    """Past the limit, and worse than before: a trade that shrinks a breach is let through."""
    return after > limit and after > before


def rule_position_limit(c: RuleContext) -> Reason | None:
    before = abs(c.position + c.sign * c.pending_same)
    after = abs(c.position + c.sign * (c.pending_same + c.quantity))
    lim = c.symbol_limits.max_position_units
    if _grows(before, after, lim):
        return deny(D.POSITION_LIMIT, lim, after)
    return None


def rule_position_notional(c: RuleContext) -> Reason | None:
    before = abs(c.position_notional + c.sign * c.pending_same_notional)
    after = abs(c.position_notional + c.sign * (c.pending_same_notional + c.notional))
    lim = c.symbol_limits.max_position_notional
    if _grows(before, after, lim):
        return deny(D.POSITION_NOTIONAL_LIMIT, lim, after)
    return None


def _after_trade(total: float, held: float, sign: int, notional: float) -> float:
    """`total` (a sum of absolute notionals) after a trade of `sign x notional` on a symbol
    where `held` is signed: a trade against the holding shrinks it first."""
    if sign * held < 0:
        return total - abs(held) + abs(held + sign * notional)
    return total + notional


def rule_gross_exposure(c: RuleContext) -> Reason | None:
    held = c.position_notional + c.sign * c.pending_same_notional
    after = _after_trade(c.gross_exposure, held, c.sign, c.notional)
    lim = c.net_liquidation * c.limits.max_gross_exposure_pct / 100.0
    if _grows(c.gross_exposure, after, lim):
        return deny(D.GROSS_EXPOSURE_LIMIT, lim, after)
    return None


def rule_net_exposure(c: RuleContext) -> Reason | None:
    after = c.net_exposure + c.sign * c.notional
    lim = c.net_liquidation * c.limits.max_net_exposure_pct / 100.0
    if _grows(abs(c.net_exposure), abs(after), lim):
        return deny(D.NET_EXPOSURE_LIMIT, lim, abs(after))
    return None


def rule_max_open_brackets(c: RuleContext) -> Reason | None:
    lim = c.limits.max_open_brackets
    if c.open_brackets + 1 > lim:
        return deny(D.MAX_OPEN_BRACKETS, lim, c.open_brackets + 1)
    return None


def rule_max_open_brackets_agent(c: RuleContext) -> Reason | None:
    lim = c.agent_limits.max_open_brackets
    if c.agent_open_brackets + 1 > lim:
        return deny(D.MAX_OPEN_BRACKETS_AGENT, lim, c.agent_open_brackets + 1)
    return None


def rule_per_trade_loss(c: RuleContext) -> Reason | None:
    lim = c.limits.per_trade_loss_limit
    if c.worst_case_loss > lim:
        return deny(D.PER_TRADE_LOSS_LIMIT, lim, c.worst_case_loss)
    return None


def rule_per_trade_loss_pct(c: RuleContext) -> Reason | None:
    lim = c.net_liquidation * c.limits.per_trade_loss_pct / 100.0
    if c.worst_case_loss > lim:
        return deny(D.PER_TRADE_LOSS_PCT_LIMIT, lim, c.worst_case_loss)
    return None


def rule_daily_loss(c: RuleContext) -> Reason | None:
    """What is left of today's budget after today's loss and every open bracket's worst case."""
    remaining = c.limits.daily_loss_limit + min(0.0, c.daily_pnl) - c.open_worst_case
    if c.worst_case_loss > remaining:
        return deny(D.DAILY_LOSS_LIMIT, remaining, c.worst_case_loss)
    return None


def rule_agent_loss(c: RuleContext) -> Reason | None:
    remaining = c.agent_limits.loss_limit + min(0.0, c.agent_realized) - c.agent_worst_case
    if c.worst_case_loss > remaining:
        return deny(D.AGENT_LOSS_LIMIT, remaining, c.worst_case_loss)
    return None


def rule_agent_exposure(c: RuleContext) -> Reason | None:
    after = _after_trade(c.agent_exposure, c.agent_position_notional, c.sign, c.notional)
    lim = c.agent_limits.exposure_limit
    if _grows(c.agent_exposure, after, lim):
        return deny(D.AGENT_EXPOSURE_LIMIT, lim, after)
    return None


def rule_rates(c: RuleContext) -> Reason | None:
    if c.proposal_rate_denied is not None:
        bucket, rate = c.proposal_rate_denied
        return deny(D.RATE_LIMITED, rate, bucket, field="proposals_per_s")
    needed = c.order_msgs_needed or ORDER_MSGS_PER_BRACKET
    if c.order_tokens < needed and c.order_horizon_s is not None:
        # the IB pacer's headroom: order messages that can still go within the horizon
        return deny(D.RATE_LIMITED, needed, round(c.order_tokens, 3), field="ib_pacer_headroom",
                    detail=f"the IB pacer can send {max(0.0, c.order_tokens):.1f} more order "
                           f"messages within {c.order_horizon_s:g}s; a bracket needs {needed}")
    share = c.agent_order_tokens
    if share is not None and share < needed:
        # fair share: this agent has taken its max_order_share_pct of the pacer for now
        pct = c.agent_limits.max_order_share_pct
        return deny(D.RATE_LIMITED, needed, round(share, 3), field="agent_order_share",
                    detail=f"agent {c.proposal.agent_id} used its {pct:g} % share of the IB "
                           f"pacer ({max(0.0, share):.1f} order messages left; a bracket "
                           f"needs {needed})")
    if c.order_tokens < needed:
        return deny(D.RATE_LIMITED, c.limits.max_order_msgs_per_s, round(c.order_tokens, 3),
                    field="order_msgs_per_s",
                    detail=f"a bracket needs {needed} order messages")
    return None


ORDER_MSGS_PER_BRACKET = 3

RULES: tuple[Rule, ...] = (
    rule_reducing_only,
    rule_symbol_allowed,
    rule_sec_type_allowed,
    rule_trading_hours,
    rule_geometry,
    rule_price_band,
    rule_tick,
    rule_reward_risk,
    rule_stop_distance,
    rule_max_order_quantity,
    rule_max_order_notional,
    rule_position_limit,
    rule_position_notional,
    rule_gross_exposure,
    rule_net_exposure,
    rule_max_open_brackets,
    rule_max_open_brackets_agent,
    rule_per_trade_loss,
    rule_per_trade_loss_pct,
    rule_daily_loss,
    rule_agent_loss,
    rule_agent_exposure,
    rule_rates,
)


def is_market(p: TradeProposal) -> bool:
    return p.order_type is OrderType.MKT


def offline_con_id(symbol: str, sec_type: str = "STK", expiry: str | None = None,
                   strike: float | None = None, right: str | None = None,
                   currency: str = "USD") -> int:
    """A stand-in conId for a governor run without IB's contract details (tests, benches):
    negative, so it never collides with IB's, and the same for the same contract every run."""
    key = "|".join((symbol, str(sec_type), expiry or "", "" if strike is None else f"{strike:g}",
                    str(right or ""), currency))
    return -(zlib.crc32(key.encode()) + 1)


def proposal_offline_con_id(p: TradeProposal) -> int:
    return offline_con_id(p.symbol, p.sec_type.value, p.expiry, p.strike,
                          p.right.value if p.right is not None else None, p.currency)


def default_contract_facts(p: TradeProposal, sym: SymbolLimits,
                           limits: RiskLimits) -> tuple[float | None, float]:
    """(multiplier, min tick) without IB's contract details. Multiplier None = unknown."""
    if p.sec_type is SecType.STK:
        mult: float | None = 1.0
        tick = limits.default_min_tick
    elif p.sec_type is SecType.FUT:
        mult, tick = None, limits.futures_min_tick
    else:
        mult, tick = limits.option_multiplier, limits.default_min_tick
    if sym.multiplier is not None:
        mult = sym.multiplier
    if sym.min_tick is not None:
        tick = sym.min_tick
    return mult, tick
