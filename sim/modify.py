"""Modify semantics as TWS has them: an order id re-placed while its order works changes that
order in place; what TWS refuses, and with which code (sources in sim/README.md, "Modify").

    check(eng, order, new, contract)  # a modify of a live order: raises OrderRejected or passes
    refuse_done(order)                # a re-placed id whose order is done: always raises

Refusals leave the order exactly as it was (TWS sends the error with the order id as reqId and
no new openOrder/orderStatus: the client library's trade may say Cancelled, the order works on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bracketgate.sim.model import OrderRejected, SimContract, SimOrder

if TYPE_CHECKING:  # pragma: no cover
    from bracketgate.sim.engine import Brokerage

EPS = 1e-9
MSG_FILLED = "Can't modify a filled order."                                 # 104
MSG_DUPLICATE_ID = "Duplicate order id"                                      # 103
MSG_MISMATCH = "Order being modified does not match original order"         # 105
MSG_TYPE = "Order modify failed. Cannot change to the new order type."      # 329
MSG_OCA = "OCA group revision is not allowed"                               # 10326
MSG_OCA_TYPE = "OCA group type revision is not allowed"                     # 10327


def cant_find(order_id: int) -> OrderRejected:
    return OrderRejected(135, f"Can't find order with id ={order_id}")


def refuse_done(order: SimOrder) -> None:
    """The id names an order that is over: a Filled one is 104; a Cancelled/Inactive one is no
    longer known as an order to TWS, so the re-placed id is a used id (103)."""
    if order.status == "Filled":
        raise OrderRejected(104, MSG_FILLED)
    raise OrderRejected(103, MSG_DUPLICATE_ID)


def check(eng: Brokerage, order: SimOrder, new: SimOrder, contract: SimContract) -> None:
    """Everything TWS checks on a modify beyond the 321/200/110 of any order, in this order:
    105 contract or side changed; 329 order type changed; 135 / 105 parentId (see below);
    10326 / 10327 OCA group or type restated differently; 321 quantity below the filled."""
    if contract.con_id != order.contract.con_id or new.action != order.action:
        raise OrderRejected(105, MSG_MISMATCH)
    if new.order_type != order.order_type:
        raise OrderRejected(329, MSG_TYPE)
    _check_parent(eng, order, new)
    if new.oca_group and new.oca_group != order.oca_group:
        raise OrderRejected(10326, MSG_OCA)
    has_group = bool(order.oca_group) or order.perm_id in eng._parent_of
    if has_group and new.oca_type not in (0, order.oca_type or 3):
        raise OrderRejected(10327, MSG_OCA_TYPE)
    if new.total_quantity < order.filled - EPS:
        raise OrderRejected(
            321, "Error validating request.-'bN' : cause - Order quantity is less than the "
                 "filled quantity.")


def _check_parent(eng: Brokerage, order: SimOrder, new: SimOrder) -> None:
    """A child of a working parent must be modified with its parentId; once the parent is done
    (filled) the child stands alone at TWS and a modify that still names the parent gets 135
    "Can't find order with id =<parentId>" (ib_insync#647: fixed by parentId = 0). A parentless
    order cannot be attached to a parent by a modify (105)."""
    parent_perm = eng._parent_of.get(order.perm_id)
    if parent_perm is None:
        if new.parent_id:
            raise OrderRejected(105, MSG_MISMATCH)
        return
    parent = eng.orders[parent_perm]
    if parent.is_terminal:
        if new.parent_id:
            raise cant_find(new.parent_id)
    elif new.parent_id != order.parent_id:
        raise OrderRejected(105, MSG_MISMATCH)
