"""The gate of bracket lifecycle commands (issue 13): who may change a bracket, and what the
change does to risk. Pure: `assess(command, bracket now, governor)` is a Plan or the reasons it
is refused; agents/commands.py carries a Plan out at IB.

Gating (`assess`), in this order: the agents file (UNKNOWN_AGENT / AGENT_DISABLED), the
bracket (UNKNOWN_BRACKET), its owner (NOT_BRACKET_OWNER), still working (BRACKET_NOT_WORKING),
another command on it in flight (COMMAND_IN_PROGRESS), the action's own shape (cancel of a
filled entry BRACKET_FILLED_USE_CLOSE, NOTHING_TO_CLOSE, CLOSE_EXCEEDS_POSITION, geometry,
tick), then risk. The bracket's worst-case loss after the change, units at risk x the stop's
distance on the loss side of the entry (0 once the stop is past it) plus slippage, is compared
with the worst case now:
  lower or equal (tighter stop, smaller size, take-profit move, trail, close, cancel)
      -> always allowed, whatever the trading state;
  higher (looser stop, larger size)
      -> every check a new bracket passes (RiskGovernor.check_as_new, the bracket's own
         reservation left out), with the same codes, limits and values; fail-closed broker
         state included. Once the entry has filled, the position is already in the
         portfolio: only the loss, stop-distance, band, tick, rate, state and broker checks
         apply (the exposure checks would count it twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bracketgate.bus.commands import (
    AmendCommand,
    CancelCommand,
    CloseCommand,
    LegState,
    TrailCommand,
)
from bracketgate.bus.messages import DENIAL_MESSAGES, DenialCode, OrderType, Reason, Side, TradeProposal

D = DenialCode
TERMINAL = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})
EPS = 1e-9

Command = CancelCommand | AmendCommand | TrailCommand | CloseCommand

# what still applies to a risk-raising change once the entry has filled (see module doc)
FILLED_CHECKS = frozenset({
    D.BROKER_DISCONNECTED, D.BROKER_CONNECTIVITY_LOST, D.NOT_RECONCILED, D.SNAPSHOT_STALE,
    D.PNL_UNKNOWN, D.ACCOUNT_VALUES_UNKNOWN, D.QUOTE_UNAVAILABLE, D.UNKNOWN_CONTRACT,
    D.TRADING_HALTED, D.REDUCING_ONLY, D.PRICE_OFF_TICK, D.STOP_DISTANCE_OUT_OF_BOUNDS,
    D.PRICE_OUT_OF_BAND, D.PER_TRADE_LOSS_LIMIT, D.PER_TRADE_LOSS_PCT_LIMIT, D.DAILY_LOSS_LIMIT,
    D.AGENT_LOSS_LIMIT, D.RATE_LIMITED,
})

Command = CancelCommand | AmendCommand | TrailCommand | CloseCommand


def deny(code: DenialCode, limit: Any = None, value: Any = None, *, detail: str = "",
         field_: str | None = None) -> Reason:
    msg = DENIAL_MESSAGES[code] + (f": {detail}" if detail else "")
    return Reason(code=code, message=msg, limit=limit, value=value, field=field_)


# --------------------------------------------------------------------------- the bracket now


@dataclass
class BracketNow:
    """One bracket as the desk sees it: the execution agent's book + the legs as IB has them."""

    proposal_id: str
    agent_id: str
    symbol: str
    side: Side
    ids: dict[str, int]                         # entry / take_profit / stop_loss -> order id
    legs: dict[str, LegState]                   # the same keys -> the leg at IB (when known)
    entry_filled: float                         # units the entry bought / sold
    held: float                                 # of those, not yet closed by an exit
    closed: bool                                # every leg ended, nothing held
    proposal: TradeProposal | None = None
    exits: dict[int, str] = field(default_factory=dict)   # market exits / guards -> status
    tick: float = 0.01
    multiplier: float = 1.0
    market: float | None = None                 # the contract's current price, when known

    @property
    def sign(self) -> int:
        return self.side.sign

    def status(self, leg: str) -> str:
        st = self.legs.get(leg)
        return st.status if st is not None else ""

    @property
    def entry_working(self) -> bool:
        return self.status("entry") not in TERMINAL

    @property
    def entry_quantity(self) -> float:
        leg = self.legs.get("entry")
        if leg is not None and leg.quantity:
            return leg.quantity
        return float(self.proposal.quantity) if self.proposal is not None else self.entry_filled

    @property
    def reference(self) -> float | None:
        """The entry price the loss is measured from: the average fill, else the limit."""
        leg = self.legs.get("entry")
        if self.entry_filled > 0 and leg is not None and leg.avg_fill_price:
            return leg.avg_fill_price
        if leg is not None and leg.limit_price:
            return leg.limit_price
        if self.proposal is not None and self.proposal.limit_price is not None:
            return self.proposal.limit_price
        return self.market

    @property
    def stop_price(self) -> float | None:
        leg = self.legs.get("stop_loss")
        if leg is not None and leg.stop_price is not None:
            return leg.stop_price
        return self.proposal.stop_loss if self.proposal is not None else None

    @property
    def take_price(self) -> float | None:
        leg = self.legs.get("take_profit")
        if leg is not None and leg.limit_price is not None:
            return leg.limit_price
        return self.proposal.take_profit if self.proposal is not None else None

    @property
    def units_at_risk(self) -> float:
        """Units the stop protects: what is held, plus what a working entry may still add."""
        if self.entry_working:
            return max(self.entry_quantity - self.entry_filled, 0.0) + self.held
        return self.held


def loss_per_unit(reference: float, stop: float, sign: int) -> float:
    """What one unit loses if the stop is hit (0 once the stop is on the profit side)."""
    return max(0.0, sign * (reference - stop))


@dataclass
class Plan:
    """What an accepted command will do at IB, and what it does to the reservation."""

    action: str
    raises_risk: bool = False
    stop: float | None = None
    take: float | None = None
    quantity: float | None = None          # the entry's new quantity (amend)
    close_quantity: float | None = None
    trail_amount: float | None = None
    trail_percent: float | None = None
    trail_stop: float | None = None
    worst_case: float | None = None        # the bracket's worst-case loss after the change


def _on_tick(price: float, tick: float) -> bool:
    steps = price / tick
    return abs(steps - round(steps)) <= 1e-6 and steps >= 1 - 1e-6


def worst_case(now: BracketNow, units: float, stop: float, limits: Any) -> float:
    ref = now.reference
    if ref is None:
        return math.inf
    slip = limits.slippage_ticks * now.tick + limits.slippage_pct / 100.0 * stop
    return units * (loss_per_unit(ref, stop, now.sign) + slip) * now.multiplier


def assess(cmd: Command, now: BracketNow | None, governor: Any, *,
           in_flight: str | None = None) -> Plan | list[Reason]:
    """The plan for an allowed command, or the reasons it is refused (see module doc)."""
    if getattr(governor, "agents", None) is not None:
        refused = governor._agent_gate(cmd.agent_id)
        if refused is not None:
            return [refused]
    if now is None:
        return [deny(D.UNKNOWN_BRACKET, value=cmd.proposal_id, field_="proposal_id")]
    if now.agent_id != cmd.agent_id:
        return [deny(D.NOT_BRACKET_OWNER, value=cmd.agent_id, field_="agent_id")]
    if now.closed or (not now.entry_working and now.entry_filled <= EPS):
        return [deny(D.BRACKET_NOT_WORKING, value=now.status("entry") or "closed")]
    if in_flight is not None and in_flight != cmd.command_id:
        return [deny(D.COMMAND_IN_PROGRESS, value=in_flight, detail=f"command {in_flight}")]
    lim = governor.limits
    if isinstance(cmd, CancelCommand):
        if now.entry_filled > EPS:
            return [deny(D.BRACKET_FILLED_USE_CLOSE, value=now.entry_filled,
                         detail=f"{now.entry_filled:g} filled")]
        return Plan("cancel", worst_case=0.0)
    if isinstance(cmd, CloseCommand):
        if now.held <= EPS:
            return [deny(D.NOTHING_TO_CLOSE, value=0.0)]
        qty = float(cmd.quantity) if cmd.quantity is not None else now.held
        if qty > now.held + EPS:
            return [deny(D.CLOSE_EXCEEDS_POSITION, now.held, qty, field_="quantity")]
        stop = now.stop_price
        left = now.units_at_risk - qty
        return Plan("close", close_quantity=qty,
                    worst_case=None if stop is None else worst_case(now, left, stop, lim))
    stop_now, take_now = now.stop_price, now.take_price
    if stop_now is None:
        return [deny(D.BRACKET_NOT_WORKING, value="no stop at IB")]
    if isinstance(cmd, TrailCommand):
        return _trail_plan(cmd, now, stop_now, lim)
    assert isinstance(cmd, AmendCommand)
    reasons: list[Reason] = []
    stop = cmd.stop_loss if cmd.stop_loss is not None else stop_now
    take = cmd.take_profit if cmd.take_profit is not None else take_now
    qty = float(cmd.quantity) if cmd.quantity is not None else now.entry_quantity
    if cmd.quantity is not None:
        if not now.entry_working:
            reasons.append(deny(D.VALIDATION_ERROR, value=cmd.quantity, field_="quantity",
                                detail="the entry has filled: its size is what it is; use close"))
        elif qty < now.entry_filled - EPS:
            reasons.append(deny(D.VALIDATION_ERROR, now.entry_filled, qty, field_="quantity",
                                detail="below what the entry already filled"))
    for name, px in (("stop_loss", cmd.stop_loss), ("take_profit", cmd.take_profit)):
        if px is not None and not _on_tick(px, now.tick):
            reasons.append(deny(D.PRICE_OFF_TICK, now.tick, px, field_=name))
    ref = now.reference
    s = now.sign
    if now.entry_filled <= EPS and ref is not None:   # nothing held: the bracket's own geometry
        if s * (ref - stop) <= 0:
            reasons.append(deny(D.BRACKET_GEOMETRY, ref, stop, field_="stop_loss",
                                detail=f"stop must be {'below' if s > 0 else 'above'} the entry"))
        if take is not None and s * (take - ref) <= 0:
            reasons.append(deny(D.BRACKET_GEOMETRY, ref, take, field_="take_profit",
                                detail=f"take-profit must be {'above' if s > 0 else 'below'} the entry"))
    elif take is not None and s * (take - stop) <= 0:
        reasons.append(deny(D.BRACKET_GEOMETRY, stop, take, field_="take_profit",
                            detail=f"take-profit must be {'above' if s > 0 else 'below'} the stop"))
    if reasons:
        return reasons
    units_now = now.units_at_risk
    units_new = (qty - now.entry_filled) + now.held if now.entry_working else now.held
    before = worst_case(now, units_now, stop_now, lim)
    after = worst_case(now, units_new, stop, lim)
    raises = after > before + 1e-9 or units_new > units_now + EPS
    plan = Plan("amend", raises_risk=raises, stop=cmd.stop_loss, take=cmd.take_profit,
                quantity=qty if cmd.quantity is not None else None, worst_case=after)
    if not raises:
        return plan
    refused = check_raise(now, governor, qty=qty, stop=stop, take=take)
    return refused or plan


def _trail_plan(cmd: TrailCommand, now: BracketNow, stop_now: float, lim: Any) -> Plan:
    """A trailing stop never starts looser than the stop it replaces: its initial stop is the
    tighter of the two (so a trail is never risk-raising)."""
    s = now.sign
    best = now.market if now.market is not None else now.reference
    if best is None:
        start = stop_now
    else:
        gap = cmd.amount if cmd.amount is not None else best * (cmd.percent or 0.0) / 100.0
        trailed = best - s * gap
        tick = now.tick
        trailed = (math.floor(trailed / tick + 1e-9) if s > 0 else math.ceil(trailed / tick - 1e-9)) * tick
        start = max(stop_now, trailed) if s > 0 else min(stop_now, trailed)
    start = round(start, 10)
    return Plan("trail", trail_amount=cmd.amount, trail_percent=cmd.percent, trail_stop=start,
                worst_case=worst_case(now, now.units_at_risk, start, lim))


def check_raise(now: BracketNow, governor: Any, *, qty: float, stop: float,
                take: float | None) -> list[Reason]:
    """A risk-raising change: the checks a new bracket passes (see module doc)."""
    if now.proposal is None:
        return [deny(D.UNKNOWN_BRACKET, value=now.proposal_id,
                     detail="the bracket's proposal is not known to this run: only risk-lowering "
                            "changes are possible")]
    p = now.proposal
    filled = now.entry_filled > EPS
    update: dict[str, Any] = {"stop_loss": stop, "created_at": None}
    if take is not None:
        update["take_profit"] = take
    if filled:
        ref = now.reference or p.limit_price
        update.update(quantity=max(1, int(round(now.held))), order_type=OrderType.LMT,
                      limit_price=ref)
        if take is None or now.sign * (take - ref) <= 0:   # geometry is not checked once filled
            update["take_profit"] = ref + now.sign * max(abs(ref - stop), now.tick) * 100
    else:
        update["quantity"] = int(round(qty))
    synthetic = p.model_copy(update=update)
    reasons, _ = governor.check_as_new(synthetic, replaces=now.proposal_id)
    if filled:
        reasons = [r for r in reasons if r.code in FILLED_CHECKS]
    return reasons
