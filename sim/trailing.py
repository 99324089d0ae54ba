"""TRAIL and TRAIL LIMIT orders: a stop that follows the best price and never moves against.

    SELL: stop = max(stop, best - distance)     BUY: stop = min(stop, best + distance)
    distance = auxPrice (trailing amount) or best * trailingPercent / 100, rounded to the tick.

`best` is the highest (SELL) / lowest (BUY) last price since the order was armed. An order is
armed when it starts working: a standalone order at placement, a bracket child when its parent
fills (so the trail starts from the price at the fill, not from where the market was when the
bracket was sent). A trailStopPrice sent by the client is the initial stop when it is tighter
than the trail from the arming price (SELL: above last - distance); a looser one is tightened.
Once the last price crosses the stop (SELL: last <= stop, BUY: last >= stop) the order triggers
exactly like STP (TRAIL) or STP LMT (TRAIL LIMIT, limit = stop -/+ lmtPriceOffset) and stops
trailing. Every move of the stop is an OrderChanged, so the client gets openOrder + orderStatus
with the current trailStopPrice (and, for TRAIL LIMIT, lmtPrice = the current limit).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from bracketgate.core.logs import get_logger
from bracketgate.sim.model import UNSET_DOUBLE, OrderRejected, SimContract, SimOrder
from bracketgate.sim.universe import round_to_tick

if TYPE_CHECKING:  # pragma: no cover
    from bracketgate.sim.engine import Brokerage

log = get_logger("sim.trailing")

TRAIL_TYPES = frozenset({"TRAIL", "TRAIL LIMIT"})
EPS = 1e-9


def _validation(cause: str) -> OrderRejected:
    return OrderRejected(321, f"Error validating request.-'bN' : cause - {cause}")


def _on_tick(price: float, tick: float) -> bool:
    steps = price / tick
    return abs(steps - round(steps)) < 1e-6


def validate(order: SimOrder, contract: SimContract) -> None:
    """321 / 110 for a TRAIL or TRAIL LIMIT order (nothing for other types)."""
    if order.order_type not in TRAIL_TYPES:
        return
    amount, pct = _unset_none(order.aux_price), _unset_none(order.trailing_percent)
    if pct is not None and not amount:
        amount = None  # a percent trail echoed back with auxPrice 0
    if amount is not None and pct is not None:
        raise _validation("Trailing amount and trailing percent are mutually exclusive.")
    if amount is None and pct is None:
        raise _validation("Missing trailing amount or trailing percent.")
    if (amount is not None and amount <= 0) or (pct is not None and not 0 < pct < 100):
        raise _validation("Trailing amount must be positive.")
    if order.order_type == "TRAIL LIMIT" and order.lmt_price_offset is None and not (
            order.lmt_price is not None and order.trail_stop_price is not None):
        raise _validation("Missing limit price offset.")
    tick = contract.min_tick
    for px in (amount, _unset_none(order.trail_stop_price), _unset_none(order.lmt_price_offset)):
        if px is not None and (px < 0 or not _on_tick(px, tick)):
            raise OrderRejected(
                110, "The price does not conform to the minimum price variation for this contract.")


def _sell(order: SimOrder) -> bool:
    return order.action == "SELL"


def _distance(order: SimOrder, ref: float) -> float:
    if order.aux_price is not None:
        return order.aux_price
    return ref * (order.trailing_percent or 0.0) / 100.0


def _stop_from(order: SimOrder, best: float) -> float:
    d = _distance(order, best)
    tick = order.contract.min_tick
    return round_to_tick(best - d if _sell(order) else best + d, tick)


def _set_limit(order: SimOrder) -> None:
    """TRAIL LIMIT: the working limit is the stop minus (SELL) / plus (BUY) the offset."""
    if order.order_type != "TRAIL LIMIT" or order.trail_stop_price is None:
        return
    if order.lmt_price_offset is None:
        return
    off = order.lmt_price_offset
    stop = order.trail_stop_price
    order.lmt_price = round_to_tick(stop - off if _sell(order) else stop + off,
                                    order.contract.min_tick)


def normalize(order: SimOrder) -> None:
    """A TRAIL LIMIT sent with lmtPrice + trailStopPrice instead of an offset: the offset is
    their distance. Then the limit follows the stop."""
    if order.order_type != "TRAIL LIMIT":
        return
    if order.lmt_price_offset is None and order.lmt_price is not None \
            and order.trail_stop_price is not None:
        order.lmt_price_offset = round_to_tick(abs(order.trail_stop_price - order.lmt_price),
                                               order.contract.min_tick)
    _set_limit(order)


def on_place(eng: Brokerage, order: SimOrder) -> None:
    """A new TRAIL order: offset/limit settled; a standalone order is armed at once."""
    if order.order_type not in TRAIL_TYPES:
        return
    order.trail_best = None
    order.trailing_percent = _unset_none(order.trailing_percent)
    order.trail_stop_price = _unset_none(order.trail_stop_price)
    order.lmt_price_offset = _unset_none(order.lmt_price_offset)
    _amount_or_percent(order)
    normalize(order)
    if not order.parent_id:
        arm(eng, order)


def arm(eng: Brokerage, order: SimOrder) -> bool:
    """Start trailing from the current price. True if the order changed."""
    if order.trail_best is not None:
        return False
    px = eng.price(order.contract.con_id)
    order.trail_best = px
    start = _stop_from(order, px)
    given = order.trail_stop_price
    if given is None or (start > given if _sell(order) else start < given):
        order.trail_stop_price = start  # a given stop looser than the trail is tightened
    _set_limit(order)
    log.info("trail_armed", perm_id=order.perm_id, order_id=order.order_id,
             stop=order.trail_stop_price, price=px)
    return True


def _ratchet(order: SimOrder, px: float) -> bool:
    """A new last price: a better best moves the stop with it, never against. True if moved."""
    best = order.trail_best if order.trail_best is not None else px
    best = max(best, px) if _sell(order) else min(best, px)
    order.trail_best = best
    candidate = _stop_from(order, best)
    stop = order.trail_stop_price
    if stop is not None and (candidate <= stop + EPS if _sell(order) else candidate >= stop - EPS):
        return False
    order.trail_stop_price = candidate
    _set_limit(order)
    return True


def follow(eng: Brokerage, con_id: int) -> None:
    """The price of `con_id` moved: every working, untriggered trailing order on it follows."""
    px = eng.price(con_id)
    for perm in sorted(eng._open_by_con.get(con_id, ())):
        order = eng.orders[perm]
        if order.order_type not in TRAIL_TYPES or perm in eng._triggered \
                or not eng._is_working(order):
            continue
        armed = arm(eng, order)
        if _ratchet(order, px) or armed:
            log.info("trail_moved", perm_id=perm, order_id=order.order_id,
                     stop=order.trail_stop_price, best=order.trail_best, price=px)
            eng._order_changed(order)


def fill_price(eng: Brokerage, order: SimOrder, arrival: bool) -> tuple[float, int] | None:
    """The engine's fill rule for a trailing order: as STP / STP LMT at the current stop."""
    if order.perm_id not in eng._triggered and arm(eng, order):
        eng._order_changed(order)
    kind = "STP" if order.order_type == "TRAIL" else "STP LMT"
    shadow = dataclasses.replace(order, order_type=kind, aux_price=order.trail_stop_price)
    return eng._fill_price(shadow, arrival)


def on_modify(eng: Brokerage, order: SimOrder, new: SimOrder, old_aux: float | None) -> None:
    """A modify of a trailing order (the engine already took price/qty/tif/aux). A trailStopPrice
    on the modify that differs from the current stop moves the stop there (TWS takes the
    re-placed order as it is: send it unset to keep the trail); a changed amount/percent
    re-trails from the best price; an unset lmtPriceOffset keeps the offset (lmtPrice is only
    the echoed current limit)."""
    if order.order_type not in TRAIL_TYPES:
        return
    old = (old_aux, order.trailing_percent)
    order.trailing_percent = _unset_none(new.trailing_percent)
    _amount_or_percent(order)
    if _unset_none(new.lmt_price_offset) is not None:
        order.lmt_price_offset = new.lmt_price_offset
    explicit = _unset_none(new.trail_stop_price)
    if explicit is not None and (order.trail_stop_price is None
                                 or abs(explicit - order.trail_stop_price) > EPS):
        order.trail_stop_price = explicit
        if order.trail_best is not None:
            order.trail_best = eng.price(order.contract.con_id)
    elif order.trail_best is not None and (order.aux_price, order.trailing_percent) != old:
        order.trail_stop_price = _stop_from(order, order.trail_best)
    _set_limit(order)


def _unset_none(v: float | None) -> float | None:
    return None if v is None or v >= UNSET_DOUBLE / 2 else v


def _amount_or_percent(order: SimOrder) -> None:
    """A percent trail echoed back by a client carries auxPrice 0 (openOrder's empty amount)."""
    if order.trailing_percent is not None and not order.aux_price:
        order.aux_price = None
