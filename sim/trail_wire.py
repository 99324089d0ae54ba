"""Trailing-stop fields on the wire: what placeOrder carries (trailStopPrice, trailingPercent,
lmtPriceOffset, the adjustable-stop block) and where openOrder / completedOrder report them.

Layouts from the clients' encoders/decoders (ib_async 2.1 `Client.placeOrder`, `Decoder.openOrder`,
`Decoder.completedOrder`) and a real completedOrder of a TRAIL LIMIT (sv200 capture in
/work/shared/reference/captures: `BUY 1 TRAIL LIMIT 2000.05 1.0 ... trailStopPrice 2000.0 ...
lmtPriceOffset 0.05`): auxPrice is the trailing amount, lmtPrice the current limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from bracketgate.sim.model import SimOrder
from bracketgate.sim.wire import UNSET_DOUBLE_STR, FieldReader, java_double


@dataclass(frozen=True)
class TrailFields:
    """The trailing-stop part of a placeOrder (None = unset)."""

    trail_stop_price: float | None = None
    trailing_percent: float | None = None
    lmt_price_offset: float | None = None
    adjusted_order_type: str = ""       # adjustable stops (not modelled: refused when set)


NO_TRAIL = TrailFields()


def read_trail_fields(r: FieldReader, n_conditions: int, trail_stop_price: float | None,
                      trailing_percent: float | None) -> TrailFields:
    """After the conditions count: adjustedOrderType triggerPrice lmtPriceOffset ... (only read
    when there are no conditions: an order with conditions is refused before it matters)."""
    adjusted, offset = "", None
    if n_conditions == 0 and r.remaining >= 3:
        adjusted = r.str()
        r.skip()  # triggerPrice
        offset = r.opt_float()
    return TrailFields(trail_stop_price, trailing_percent, offset,
                       "" if adjusted in ("", "None") else adjusted)


def _or_empty(v: float | None) -> str:
    return "" if v is None else java_double(v)


def _or_unset(v: float | None) -> str:
    return UNSET_DOUBLE_STR if v is None else java_double(v)


def trail_open_fields(o: SimOrder) -> list[str]:
    """openOrder / completedOrder: trailStopPrice trailingPercent (empty when unset)."""
    return [_or_empty(o.trail_stop_price), _or_empty(o.trailing_percent)]


def trail_adjusted_fields(o: SimOrder) -> list[str]:
    """openOrder: triggerPrice trailStopPrice lmtPriceOffset adjustedStopPrice
    adjustedStopLimitPrice adjustedTrailingAmount (the decoders set trailStopPrice from here
    last, so it must carry the current stop too)."""
    return [UNSET_DOUBLE_STR, _or_unset(o.trail_stop_price), _or_unset(o.lmt_price_offset),
            UNSET_DOUBLE_STR, UNSET_DOUBLE_STR, UNSET_DOUBLE_STR]


def trail_completed_fields(o: SimOrder) -> list[str]:
    """completedOrder: trailStopPrice lmtPriceOffset (UNSET when none)."""
    return [_or_unset(o.trail_stop_price), _or_unset(o.lmt_price_offset)]
