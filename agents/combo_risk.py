"""Combos (BAG) in the RiskGovernor: one combo gated as one unit, its legs counted as contracts.

The governor's `_check` hands a combo proposal here at three points (small hooks in risk.py):
  combo_contract  the legs' conIds, multipliers and ticks (IB's contract details, or offline
                  stand-ins), the combo's own key, its payoff structure — or UNKNOWN_CONTRACT
                  naming the leg IB does not have
  apply_combo     the legs' marks and the combo quote derived from the legs' quotes, the gross
                  notional (every leg's contracts), per-leg positions and pending units, and
                  the worst case: qty x |entry - stop| x multiplier + slippage, capped by the
                  structure's maximum loss where it has one (`bound` "stop" / "structure")
  combo_rules     RULES with the per-contract rules replaced by per-leg ones, the loss rules
                  naming their bound, and UNDEFINED_RISK_COMBO first
Fills: a combo fills as one BAG execution (its quantity counts for the bracket) and one per
leg (positions and realized P&L): RiskGovernor.on_fill.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bracketgate.agents.rules import (
    Rule,
    RuleContext,
    _after_trade,
    _grows,
    deny,
    offline_con_id,
    on_tick,
    rule_agent_exposure,
    rule_agent_loss,
    rule_daily_loss,
    rule_gross_exposure,
    rule_net_exposure,
    rule_per_trade_loss,
    rule_per_trade_loss_pct,
    rule_position_limit,
    rule_position_notional,
    rule_price_band,
    rule_reducing_only,
    rule_stop_distance,
    rule_tick,
    slippage,
)
from bracketgate.bus.combos import Structure, combo_con_id, leg_query, structure
from bracketgate.bus.messages import (
    MAX_PRICE,
    MAX_QUANTITY,
    DenialCode,
    PortfolioSnapshot,
    Quote,
    Reason,
    ResolvedContract,
    TradeProposal,
)
from bracketgate.config.limits import RiskLimits, SymbolLimits
from bracketgate.core.logs import get_logger

if TYPE_CHECKING:
    from bracketgate.agents.reservations import ReservationLedger
    from bracketgate.agents.risk import SnapshotView

log = get_logger("bracketgate.risk.combo")
D = DenialCode


@dataclass(slots=True)
class ComboLegRisk:
    """One leg as the checks see it; figures for THIS proposal (side applied)."""

    index: int
    con_id: int
    sign: int                    # +1 when this proposal buys the leg (combo side x leg action)
    ratio: int                   # leg units per combo
    multiplier: float
    mark: float = 0.0            # per-unit price now (quote mid, else the position's mark)
    units: float = 0.0           # quantity x ratio
    notional: float = 0.0        # units x mark x multiplier (>= 0)
    position: float = 0.0        # signed units held now (snapshot)
    position_notional: float = 0.0
    pending_same: float = 0.0    # units pending in this leg's direction (all brackets)
    pending_same_notional: float = 0.0
    held_by_agent: float = 0.0   # the budget's signed notional in this leg's contract


@dataclass(slots=True)
class ComboRisk:
    """A combo's facts for one proposal (combo_contract, then apply_combo)."""

    con_id: int                  # the daemon's key for the combo (bus/combos.py combo_con_id)
    multiplier: float
    tick: float
    legs: list[ComboLegRisk]
    structure: Structure
    gross_per_combo: float = 0.0          # sum ratio x mark x leg multiplier / multiplier
    bound: str = "stop"
    stop_worst: float = 0.0
    structure_worst: float | None = None


ContractInfo = Callable[[Any], ResolvedContract | None]


def combo_contract(p: TradeProposal, contract_info: ContractInfo | None, limits: RiskLimits,
                   sym: SymbolLimits) -> ComboRisk | Reason:
    """The combo's legs as contracts: IB's (contract_info) or offline stand-ins."""
    legs = p.legs or []
    side = p.side.sign
    out: list[ComboLegRisk] = []
    if contract_info is not None:
        rc = contract_info(p)
        if rc is None or rc.legs is None or len(rc.legs) != len(legs):
            for i, leg in enumerate(legs):   # name the leg IB does not have
                if contract_info(leg_query(p, leg)) is None:
                    return deny(D.UNKNOWN_CONTRACT, value=leg.describe(), field=f"legs[{i}]",
                                detail=f"IB has no contract for legs[{i}] ({p.symbol} "
                                       f"{leg.describe()})")
            return deny(D.UNKNOWN_CONTRACT, value=p.symbol, field="legs",
                        detail="the combo's legs are not resolved")
        for i, (leg, r) in enumerate(zip(legs, rc.legs)):
            out.append(ComboLegRisk(i, r.con_id, side * leg.sign, leg.ratio, r.multiplier or 1.0))
        con_id, mult = rc.con_id, rc.multiplier
        tick = rc.min_tick if rc.min_tick > 0 else limits.default_min_tick
    else:
        opt_mult = sym.multiplier or limits.option_multiplier
        for i, leg in enumerate(legs):
            cid = offline_con_id(p.symbol, leg.sec_type, leg.expiry, leg.strike, leg.right,
                                 leg.currency)
            out.append(ComboLegRisk(i, cid, side * leg.sign, leg.ratio,
                                    opt_mult if leg.sec_type == "OPT" else 1.0))
        con_id = combo_con_id(p.symbol, p.currency,
                              [(lg.con_id, leg.ratio, leg.action) for lg, leg in zip(out, legs)])
        mult = max(lg.multiplier for lg in out)
        tick = sym.min_tick or limits.default_min_tick
    return ComboRisk(con_id, mult, tick, out, structure(legs, side, mult))


def combo_multiplier(legs: list[ResolvedContract]) -> float:
    """The combo's price multiplier: its option legs' (a stock leg's ratio counts shares)."""
    return max((r.multiplier for r in legs), default=1.0) or 1.0


def gate_combo_numbers(p: TradeProposal) -> Reason | None:
    """gate_numbers for a combo: prices finite, non-zero, |price| <= MAX_PRICE (a credit is
    negative), the quantity a whole number in range."""
    for name in ("limit_price", "take_profit", "stop_loss"):
        v = getattr(p, name)
        if v is None and name == "limit_price":
            continue
        if (v is None or isinstance(v, bool) or not isinstance(v, (int, float))
                or not (0 < abs(v) <= MAX_PRICE)):
            return deny(D.PRICE_OUT_OF_BAND, MAX_PRICE, None if v is None else str(v), field=name,
                        detail="a combo price is non-zero with |price| <= 1e9")
    q = p.quantity
    if isinstance(q, bool) or not isinstance(q, int) or not 0 < q <= MAX_QUANTITY:
        return deny(D.MAX_ORDER_QUANTITY, MAX_QUANTITY, str(q), field="quantity")
    return None


def _leg_quote(snapshot: PortfolioSnapshot, cid: int) -> Quote | None:
    return snapshot.quotes.get(cid)


def _usable(px: float | None) -> float | None:
    return px if px is not None and 0 < px < math.inf else None


def _first(*prices: float | None) -> float | None:
    return next((px for px in prices if px is not None), None)


def combo_quote(combo: ComboRisk, p: TradeProposal, snapshot: PortfolioSnapshot,
                view: SnapshotView) -> Quote | Reason:
    """The combo's bid / ask for a BUY of it, from its legs' (IB's sign: a credit is < 0)."""
    bid = ask = 0.0
    stamps: list[datetime] = []
    legs = p.legs or []
    for lg, leg in zip(combo.legs, legs):
        q = _leg_quote(snapshot, lg.con_id)
        mark = view.marks.get(lg.con_id)
        # a stream's first tick may bring one side only: the other side, the last, the mark
        b, a, last = (_usable(q.bid), _usable(q.ask), _usable(q.last)) if q is not None \
            else (None, None, None)
        lb = _first(b, last, a, mark)
        la = _first(a, last, b, mark)
        if lb is None or la is None:
            return deny(D.QUOTE_UNAVAILABLE, value=lg.con_id, field=f"legs[{lg.index}]",
                        detail=f"no quote for legs[{lg.index}] ({p.symbol} {leg.describe()})")
        w = leg.ratio * lg.multiplier / combo.multiplier
        if leg.sign > 0:
            bid, ask = bid + w * lb, ask + w * la
        else:
            bid, ask = bid - w * la, ask - w * lb
        if q is not None:
            stamps.append(q.ts)
        lg.mark = mark if mark is not None else (lb + la) / 2.0
    ts = min(stamps) if stamps else snapshot.ts
    return Quote(con_id=combo.con_id, symbol=p.symbol, bid=round(bid, 10), ask=round(ask, 10),
                 ts=ts)


def combo_market_price(q: Quote, p: TradeProposal, now: datetime,
                       limits: RiskLimits) -> float | Reason:
    """A MKT combo entry's price: the combo ask for a BUY, its bid for a SELL; stale legs'
    quotes = unavailable."""
    age = (now - q.ts).total_seconds()
    if age > limits.max_quote_age_s:
        return deny(D.QUOTE_UNAVAILABLE, limits.max_quote_age_s, age, field="quote_age_s",
                    detail="a leg's quote is stale")
    px = q.ask if p.side.sign > 0 else q.bid
    if px is None or px == 0 or not math.isfinite(px):
        return deny(D.QUOTE_UNAVAILABLE, detail=f"no usable combo price for {p.symbol}")
    return px


def apply_combo(c: RuleContext, combo: ComboRisk, snapshot: PortfolioSnapshot,
                view: SnapshotView, ledger: ReservationLedger, book: ComboBook,
                held: dict[int, float] | None, quote: Quote) -> None:
    """Fill the context's combo figures (see the module doc); c.entry is already set."""
    p, lim, qty = c.proposal, c.limits, c.quantity
    c.quote = quote
    pend = book.pending(ledger)
    gross = 0.0
    for lg in combo.legs:
        cid, s = lg.con_id, lg.sign
        lg.units = qty * lg.ratio
        lg.notional = lg.units * lg.mark * lg.multiplier
        gross += lg.ratio * lg.mark * lg.multiplier
        lg.position = view.positions.get(cid, 0.0)
        lg.position_notional = view.position_notional.get(cid, 0.0)
        i = 0 if s > 0 else 1
        fu, fn = view.pending(cid, s)
        lp = ledger.contract_pending.get(cid)
        cp = pend.get(cid)
        lg.pending_same = fu + (lp[i] if lp else 0.0) + (cp[i] if cp else 0.0)
        lg.pending_same_notional = fn + (lp[i + 2] if lp else 0.0) + (cp[i + 2] if cp else 0.0)
        lg.held_by_agent = (held.get(cid, 0.0) if held else 0.0) * lg.mark * lg.multiplier
    combo.gross_per_combo = gross / combo.multiplier
    # a leg that sells what the account holds long (or buys back a short) only closes it:
    # not naked (closing a long straddle is no short straddle)
    covered = [min(lg.units, max(0.0, -lg.sign * lg.position)) / qty for lg in combo.legs]
    if any(covered):
        combo.structure = structure(p.legs or [], c.sign, combo.multiplier, covered)
    c.notional = qty * gross
    # the agent's exposure: its legs at their marks (its figure was built with the combo's key)
    # worst case: the stop's, with the slippage allowance single legs get; capped by the
    # structure's maximum loss where the combo has one
    e, sl, tick, mult = c.entry, p.stop_loss, c.tick, combo.multiplier
    per_unit = abs(e - sl) + slippage(abs(sl), tick, lim)
    entry_slip = slippage(abs(e), tick, lim) if c.market_entry else 0.0
    combo.stop_worst = qty * (per_unit + entry_slip) * mult
    max_loss = combo.structure.max_loss(e, c.sign)
    combo.structure_worst = None if max_loss is None else qty * (max_loss + entry_slip) * mult
    if combo.structure_worst is not None and combo.structure_worst < combo.stop_worst:
        combo.bound, c.worst_case_loss = "structure", combo.structure_worst
    else:
        combo.bound, c.worst_case_loss = "stop", combo.stop_worst
    c.combo = combo
    if log.is_enabled_for(logging.INFO):
        log.info("combo_worst_case", proposal_id=p.proposal_id, agent_id=p.agent_id,
                 bound=combo.bound, worst_case_loss=round(c.worst_case_loss, 2),
                 stop_worst=round(combo.stop_worst, 2),
                 structure_worst=None if combo.structure_worst is None
                 else round(combo.structure_worst, 2),
                 undefined=combo.structure.undefined or None, con_id=combo.con_id)


# =========================================================================== the combo's rules


def rule_undefined_risk(c: RuleContext) -> Reason | None:
    why = c.combo.structure.undefined
    if why and not c.limits.allow_undefined_risk_combos:
        return deny(D.UNDEFINED_RISK_COMBO, "allow_undefined_risk_combos = false", why,
                    field="legs", detail=why)
    return None


def _per_leg(check: Callable[[RuleContext, ComboLegRisk], Reason | None]) -> Rule:
    def rule(c: RuleContext) -> Reason | None:
        for lg in c.combo.legs:
            r = check(c, lg)
            if r is not None:
                return r
        return None
    rule.__name__ = check.__name__
    return rule


def _leg_reducing(c: RuleContext, lg: ComboLegRisk) -> Reason | None:
    if c.state.value != "REDUCING":
        return None
    reducible = max(0.0, max(0.0, -lg.sign * lg.position) - lg.pending_same)
    if lg.units > reducible:
        return deny(D.REDUCING_ONLY, reducible, lg.units, field=f"legs[{lg.index}]")
    return None


def _leg_position(c: RuleContext, lg: ComboLegRisk) -> Reason | None:
    before = abs(lg.position + lg.sign * lg.pending_same)
    after = abs(lg.position + lg.sign * (lg.pending_same + lg.units))
    lim = c.symbol_limits.max_position_units
    if _grows(before, after, lim):
        return deny(D.POSITION_LIMIT, lim, after, field=f"legs[{lg.index}]")
    return None


def _leg_position_notional(c: RuleContext, lg: ComboLegRisk) -> Reason | None:
    before = abs(lg.position_notional + lg.sign * lg.pending_same_notional)
    after = abs(lg.position_notional + lg.sign * (lg.pending_same_notional + lg.notional))
    lim = c.symbol_limits.max_position_notional
    if _grows(before, after, lim):
        return deny(D.POSITION_NOTIONAL_LIMIT, lim, after, field=f"legs[{lg.index}]")
    return None


def rule_combo_gross_exposure(c: RuleContext) -> Reason | None:
    after = c.gross_exposure
    for lg in c.combo.legs:
        held = lg.position_notional + lg.sign * lg.pending_same_notional
        after = _after_trade(after, held, lg.sign, lg.notional)
    lim = c.net_liquidation * c.limits.max_gross_exposure_pct / 100.0
    if _grows(c.gross_exposure, after, lim):
        return deny(D.GROSS_EXPOSURE_LIMIT, lim, after, field="legs")
    return None


def rule_combo_net_exposure(c: RuleContext) -> Reason | None:
    after = c.net_exposure + sum(lg.sign * lg.notional for lg in c.combo.legs)
    lim = c.net_liquidation * c.limits.max_net_exposure_pct / 100.0
    if _grows(abs(c.net_exposure), abs(after), lim):
        return deny(D.NET_EXPOSURE_LIMIT, lim, abs(after), field="legs")
    return None


def rule_combo_agent_exposure(c: RuleContext) -> Reason | None:
    after = c.agent_exposure
    for lg in c.combo.legs:
        after = _after_trade(after, lg.held_by_agent, lg.sign, lg.notional)
    lim = c.agent_limits.exposure_limit
    if _grows(c.agent_exposure, after, lim):
        return deny(D.AGENT_EXPOSURE_LIMIT, lim, after, field="legs")
    return None


def rule_combo_price_band(c: RuleContext) -> Reason | None:
    """Each price within the band around the combo's mid; the band's width is the percentage
    of the combo's gross premium (a combo near 0 is not banded to nothing)."""
    lim = c.limits
    q = c.quote
    ref = (q.bid + q.ask) / 2.0
    gross = c.combo.gross_per_combo
    if not gross > 0:
        return deny(D.QUOTE_UNAVAILABLE, field="legs", detail="the legs' quotes price the combo at 0")
    p = c.proposal
    for name, px, pct in (("limit_price", p.limit_price, lim.entry_band_pct),
                          ("take_profit", p.take_profit, lim.exit_band_pct),
                          ("stop_loss", p.stop_loss, lim.exit_band_pct)):
        if px is None:
            continue
        width = gross * pct / 100.0
        if abs(px - ref) > width + 1e-9 * (1.0 + gross):   # float noise is not a breach
            edge = ref + width if px > ref else ref - width
            return deny(D.PRICE_OUT_OF_BAND, edge, px, field=name,
                        detail=f"{name} more than {pct:g}% of the combo's gross premium "
                               f"{gross:g} from its mid {ref:g}")
    return None


def rule_combo_tick(c: RuleContext) -> Reason | None:
    p, tick, tol = c.proposal, c.tick, c.limits.tick_tolerance
    for name in ("limit_price", "take_profit", "stop_loss"):
        px = getattr(p, name)
        if px is not None and not on_tick(abs(px), tick, tol):
            return deny(D.PRICE_OFF_TICK, tick, px, field=name)
    return None


def rule_combo_stop_distance(c: RuleContext) -> Reason | None:
    """|entry - stop| in % of the combo's gross premium (a credit's |entry| can be near 0)."""
    base = max(abs(c.entry), c.combo.gross_per_combo)
    pct = abs(c.entry - c.proposal.stop_loss) / base * 100.0 if base > 0 else math.inf
    lo, hi = c.limits.min_stop_distance_pct, c.limits.max_stop_distance_pct
    if pct < lo:
        return deny(D.STOP_DISTANCE_OUT_OF_BOUNDS, lo, pct,
                    detail="stop too close (% of the combo's gross premium)")
    if pct > hi:
        return deny(D.STOP_DISTANCE_OUT_OF_BOUNDS, hi, pct,
                    detail="stop too far (% of the combo's gross premium)")
    return None


def _with_bound(rule: Rule) -> Rule:
    def bounded(c: RuleContext) -> Reason | None:
        r = rule(c)
        if r is None:
            return None
        b = c.combo.bound
        return r.model_copy(update={"bound": b, "message": f"{r.message} (bound: {b})"})
    bounded.__name__ = rule.__name__
    return bounded


_REPLACED: dict[Rule, Rule] = {
    rule_reducing_only: _per_leg(_leg_reducing),
    rule_price_band: rule_combo_price_band,
    rule_tick: rule_combo_tick,
    rule_stop_distance: rule_combo_stop_distance,
    rule_position_limit: _per_leg(_leg_position),
    rule_position_notional: _per_leg(_leg_position_notional),
    rule_gross_exposure: rule_combo_gross_exposure,
    rule_net_exposure: rule_combo_net_exposure,
    rule_agent_exposure: rule_combo_agent_exposure,
    rule_per_trade_loss: _with_bound(rule_per_trade_loss),
    rule_per_trade_loss_pct: _with_bound(rule_per_trade_loss_pct),
    rule_daily_loss: _with_bound(rule_daily_loss),
    rule_agent_loss: _with_bound(rule_agent_loss),
}
_CACHE: dict[tuple[Rule, ...], tuple[Rule, ...]] = {}


def combo_rules(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """The governor's active rules for a combo: UNDEFINED_RISK_COMBO first, per-leg versions
    of the per-contract rules, the loss rules naming their bound."""
    out = _CACHE.get(rules)
    if out is None:
        out = _CACHE[rules] = (rule_undefined_risk,
                               *(_REPLACED.get(r, r) for r in rules))
    return out


# =========================================================================== open combos


class ComboBook:
    """proposal_id -> the legs of an open combo reservation, for per-leg pending units.
    Entries whose reservation closed are dropped as they are met."""

    def __init__(self) -> None:
        self._legs: dict[str, tuple[tuple[int, int, int, float, float], ...]] = {}
        # proposal_id -> ((conId, sign, ratio, mark, multiplier), ...)

    def __contains__(self, pid: object) -> bool:
        return pid in self._legs

    def __len__(self) -> int:
        return len(self._legs)

    def con_ids(self) -> set[int]:
        """Every leg of every open combo reservation (their quotes must stay streamed)."""
        return {leg[0] for legs in self._legs.values() for leg in legs}

    def add(self, pid: str, combo: ComboRisk) -> None:
        self._legs[pid] = tuple((lg.con_id, lg.sign, lg.ratio, lg.mark, lg.multiplier)
                                for lg in combo.legs)

    def pending(self, ledger: ReservationLedger) -> dict[int, list[float]]:
        """conId -> [BUY units, SELL units, BUY notional, SELL notional] still pending."""
        out: dict[int, list[float]] = {}
        for pid in list(self._legs):
            res = ledger.get(pid)
            if res is None:
                del self._legs[pid]
                continue
            units = res.pending_units
            if units <= 0:
                continue
            for cid, sign, ratio, mark, mult in self._legs[pid]:
                row = out.setdefault(cid, [0.0, 0.0, 0.0, 0.0])
                i = 0 if sign > 0 else 1
                row[i] += units * ratio
                row[i + 2] += units * ratio * mark * mult
        return out
