"""Changing working orders at IB: modify (re-place the same order id), read a leg back.

Beside adapters/ib.py (the one connection); it imports no IB library: it works on the broker's
ib object and its Trades. A modify is a placeOrder with the order's own id and every field as
IB has it, only the changed ones differing; IB confirms it with an openOrder for that id (the
new state), or refuses it with an error for that id (the order stays as it was). Nothing is
answered before one of the two, the connection dropping, or `ack_timeout` (then what IB has is
read back and the caller is told it is not confirmed).

    BracketOrders(broker).modify(order_id, quantity=…, limit_price=…, stop_price=…) -> LegState
    BracketOrders(broker).place_trailing_stop(stop_id, new_id, trail_amount=… | trail_percent=…,
                                              trail_stop=…, quantity=…) -> LegState
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
                    trailing_percent=_num(getattr(o, "trailingPercent", None)) if trailing else None,
                    oca_group=getattr(o, "ocaGroup", "") or None)


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

    def _parent_filled(self, parent_id: int) -> bool:
        """The parent has filled (or is a completed order this connection has no id for)."""
        parent = self._broker._trade_for(parent_id)
        return parent is None or parent.orderStatus.status == "Filled"

    async def resync(self) -> None:
        """Ask IB for every open order again (a refused modify leaves the Trade's status wrong)."""
        try:   # through OrderQueries: one open-orders request at a time (ib_truth.py)
            if await self._broker.queries.open_orders() is None:
                log.warning("ib_open_orders_resync_failed", error="no answer in time",
                            code="QUERY_TIMEOUT")
        except Exception as e:  # the next reconcile re-reads them anyway
            log.warning("ib_open_orders_resync_failed", error=repr(e))

    async def place_trailing_stop(self, stop_order_id: int, new_order_id: int, *,
                                  trail_amount: float | None, trail_percent: float | None,
                                  trail_stop: float | None, quantity: float) -> LegState:
        """A TRAIL order to replace the stop `stop_order_id` (TWS changes no order's type by a
        modify: 329): the stop's own fields (side, contract, orderRef, tif, OCA group), as a
        child of the same parent while the parent works, else standalone (a new child of a
        filled parent is refused 135). The caller cancels the old stop once this one works."""
        b = self._broker
        b._require_ready()
        old = b._trade_for(stop_order_id)
        if old is None or old.orderStatus.status in DONE:
            raise ModifyRefused(f"stop {stop_order_id} is not working at IB", code="NOT_WORKING")
        order = copy.copy(old.order)
        order.orderId, order.permId, order.clientId = new_order_id, 0, 0
        order.orderType = "TRAIL"
        order.totalQuantity = quantity
        order.lmtPrice = UNSET_DOUBLE
        if trail_amount is not None:
            order.auxPrice, order.trailingPercent = trail_amount, UNSET_DOUBLE
        else:
            order.auxPrice, order.trailingPercent = UNSET_DOUBLE, trail_percent
        order.trailStopPrice = trail_stop if trail_stop is not None else UNSET_DOUBLE
        if order.parentId and self._parent_filled(order.parentId):
            order.parentId = 0
        order.transmit = True
        await b._turn(Priority.PROTECT)
        b._require_ready()
        try:
            trade = b.ib.placeOrder(old.contract, order)
        except ConnectionError as e:
            raise BrokerNotConnected(f"IB connection lost before the trailing stop: {e}") from e
        log.warning("ib_trailing_stop_sent", proposal_id=order.orderRef or None,
                    order_id=new_order_id, replaces=stop_order_id, parent_id=order.parentId or None,
                    trail_amount=trail_amount, trail_percent=trail_percent, trail_stop=trail_stop)
        await b._wait_ack([trade], order.orderRef, ("trailing_stop",))
        return leg_state(trade)

    async def modify(self, order_id: int, *, quantity: float | None = None,
                     limit_price: float | None = None, stop_price: float | None = None,
                     clear_parent: bool = False) -> LegState:
        """Re-place `order_id` with the changes (its type never changes: TWS refuses that,
        329); the leg as IB confirmed it. A child of a filled parent goes with parentId 0.
        Raises ModifyRefused (IB's code) or BrokerNotConnected."""
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
        if stop_price is not None and (trade.order.orderType or "").startswith("TRAIL"):
            order.auxPrice = trade.order.auxPrice   # a TRAIL's auxPrice is its trailing amount
            order.trailStopPrice = stop_price       # ... its stop is trailStopPrice
        if order.parentId and (clear_parent or self._parent_filled(order.parentId)):
            order.parentId = 0   # a child of a filled parent is modified standalone (else 135)
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
                     quantity=quantity, limit_price=limit_price, stop_price=stop_price)
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
            # the libraries mark the Trade cancelled or invalid while IB still works the order:
            # IB's own word (openOrder + orderStatus again) puts it back
            await self.resync()
            if code == 135 and order.parentId and not clear_parent:
                # the parent filled before its status reached us (a resize re-matched it):
                # IB says so, and a child of a filled parent is modified standalone
                log.info("ib_order_modify_retry_standalone", order_id=order_id,
                         parent_id=order.parentId)
                return await self.modify(order_id, quantity=quantity, limit_price=limit_price,
                                         stop_price=stop_price, clear_parent=True)
            raise ModifyRefused(f"IB refused the modify of {order_id}: {code} {message}", code=code)
        if not b.ib.isConnected():
            raise BrokerNotConnected(f"IB connection lost while modifying {order_id}")
        state = leg_state(trade)
        log.info("ib_order_modified", order_id=order_id, order_type=state.order_type,
                 quantity=state.quantity, limit_price=state.limit_price, stop_price=state.stop_price,
                 status=state.status)
        return state
