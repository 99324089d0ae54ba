"""Changing working orders at IB: modify (re-place the same order id), read a leg back.

Beside adapters/ib.py (the one connection); it imports no IB library: it works on the broker's
ib object and its Trades. A modify is a placeOrder with the order's own id and every field as
IB has it, only the changed ones differing; IB confirms it with an openOrder for that id (the
new state), or refuses it with an error for that id (the order stays as it was). Nothing is
answered before one of the two, the connection dropping, or `ack_timeout` (then what IB has is
read back and the caller is told it is not confirmed).

    BracketOrders(broker).modify(order_id, quantity=…, limit_price=…, stop_price=…,
                                 trail_amount=…, trail_percent=…, trail_stop=…) -> LegState
    BracketOrders(broker).leg(order_id) -> LegState | None
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from bracketgate.adapters.pacer import Priority
from bracketgate.bus.commands import LegState
from bracketgate.bus.errors import BrokerError, BrokerNotConnected
from bracketgate.core.logs import get_logger

log = get_logger("adapters.ib_lifecycle")

UNSET_DOUBLE = 1.7976931348623157e308
DONE = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})


def _num(v: Any) -> float | None:
    if v is None or v == "" or v == UNSET_DOUBLE:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f != 0.0 else None   # 0: not set (a STP has no limit price)


def leg_state(trade: Any) -> LegState:
    """One order as IB last reported it (trailing fields for a TRAIL stop)."""
    o, s = trade.order, trade.orderStatus
    trailing = o.orderType in ("TRAIL", "TRAIL LIMIT")
    return LegState(order_id=o.orderId, status=s.status or "", order_type=o.orderType or "",
                    quantity=float(o.totalQuantity or 0), filled=float(s.filled or 0),
                    avg_fill_price=_num(s.avgFillPrice) or None,
                    limit_price=_num(o.lmtPrice),
                    stop_price=_num(getattr(o, "trailStopPrice", None)) if trailing else _num(o.auxPrice),
                    trailing_amount=_num(o.auxPrice) if trailing else None,
                    trailing_percent=_num(getattr(o, "trailingPercent", None)) if trailing else None)


class ModifyRefused(BrokerError):
    """IB refused a modify (its error code), or did not confirm it in time."""


class BracketOrders:
    """Modify / read the legs of brackets through one IBBroker."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker

    def leg(self, order_id: int) -> LegState | None:
        trade = self._broker._trade_for(order_id) if order_id else None
        return None if trade is None else leg_state(trade)

    def working(self, order_id: int) -> bool:
        trade = self._broker._trade_for(order_id) if order_id else None
        return trade is not None and trade.orderStatus.status not in DONE

    async def modify(self, order_id: int, *, quantity: float | None = None,
                     limit_price: float | None = None, stop_price: float | None = None,
                     trail_amount: float | None = None, trail_percent: float | None = None,
                     trail_stop: float | None = None, clear_parent: bool = False) -> LegState:
        """Re-place `order_id` with the changes; the leg as IB confirmed it. A trail_* turns a
        stop into a TRAIL order (trail_stop: its initial stop price). Raises ModifyRefused
        (IB's code) or BrokerNotConnected."""
        b = self._broker
        b._require_ready()
        trade = b._trade_for(order_id)
        if trade is None or trade.orderStatus.status in DONE:
            raise ModifyRefused(f"order {order_id} is not working at IB", code="NOT_WORKING")
        order = copy.copy(trade.order)
        if quantity is not None:
            order.totalQuantity = quantity
        if limit_price is not None:
            order.lmtPrice = limit_price
        if stop_price is not None:
            order.auxPrice = stop_price
        if trail_amount is not None or trail_percent is not None:
            order.orderType = "TRAIL"
            if trail_amount is not None:
                order.auxPrice = trail_amount
                order.trailingPercent = UNSET_DOUBLE
            else:
                order.auxPrice = UNSET_DOUBLE
                order.trailingPercent = trail_percent
            if trail_stop is not None:
                order.trailStopPrice = trail_stop
        if clear_parent:
            order.parentId = 0
        order.transmit = True
        confirmed = asyncio.Event()
        refused: list[tuple[int, str]] = []

        def on_open(t: Any) -> None:
            if t.order.orderId == order_id and t.order.clientId in (b.client_id, 0):
                confirmed.set()

        def on_error(req_id: int, code: int, message: str, *_: Any) -> None:
            if req_id == order_id and not (2100 <= code < 2200) and code not in (399,):
                refused.append((code, message))
                confirmed.set()

        def on_lost() -> None:
            confirmed.set()

        await b._turn(Priority.PROTECT)
        b._require_ready()
        b.ib.openOrderEvent += on_open
        b.ib.errorEvent += on_error
        b._ack_waiters.add(on_lost)
        try:
            try:
                trade = b.ib.placeOrder(trade.contract, order)
            except ConnectionError as e:
                raise BrokerNotConnected(f"IB connection lost before the modify of {order_id}: {e}") from e
            log.info("ib_order_modify_sent", order_id=order_id, proposal_id=order.orderRef or None,
                     quantity=quantity, limit_price=limit_price, stop_price=stop_price,
                     trail_amount=trail_amount, trail_percent=trail_percent)
            try:
                await asyncio.wait_for(confirmed.wait(), b.ack_timeout)
            except TimeoutError:
                raise ModifyRefused(f"IB did not confirm the modify of {order_id} within "
                                    f"{b.ack_timeout}s", code="ACK_TIMEOUT") from None
        finally:
            b.ib.openOrderEvent -= on_open
            b.ib.errorEvent -= on_error
            b._ack_waiters.discard(on_lost)
        if refused:
            code, message = refused[0]
            log.warning("ib_order_modify_refused", order_id=order_id, code=code, message=message)
            raise ModifyRefused(f"IB refused the modify of {order_id}: {code} {message}", code=code)
        if not b.ib.isConnected():
            raise BrokerNotConnected(f"IB connection lost while modifying {order_id}")
        state = leg_state(trade)
        log.info("ib_order_modified", order_id=order_id, order_type=state.order_type,
                 quantity=state.quantity, limit_price=state.limit_price, stop_price=state.stop_price,
                 status=state.status)
        return state
