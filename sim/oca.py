"""Named OCA groups across brackets: a fill in one member acts on every other working member with
the same ocaGroup, whether it is a bracket child or a standalone order.

The engine already handles the two pure cases (children of one parent: the bracket's implied
group, sim/engine.py `_update_child`; parentless members: `_oca_standalone`). This covers the
mixed ones, e.g. a bracket whose children carry ocaGroup "g" after its parent filled, joined by a
standalone TRAIL or a closing MKT order sent with ocaGroup "g": the trailing stop replacing the
stop child, or a partial close that shrinks the take-profit and the stop by what it sold.

Semantics by the filling order's ocaType: 1 cancels the other members; 2 and 3 reduce them by
the filled quantity (a member left with nothing to work is cancelled); 0 reduces bracket
children (as the implied group does) and cancels standalone members (as `_oca_standalone`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bracketgate.sim.model import SimOrder

if TYPE_CHECKING:  # pragma: no cover
    from bracketgate.sim.engine import Brokerage

EPS = 1e-9
REASON = "Cancelled by System:"


def across(eng: Brokerage, order: SimOrder, qty: float) -> None:
    """`order` just filled `qty`: act on the members of its named group that the engine's own
    OCA rules do not reach (members outside its bracket)."""
    group = order.oca_group
    if not group:
        return
    own_parent = eng._parent_of.get(order.perm_id)
    for perm in sorted(eng._open):
        m = eng.orders[perm]
        if m is order or m.is_terminal or m.oca_group != group:
            continue
        m_parent = eng._parent_of.get(perm)
        if own_parent is None and m_parent is None:
            continue  # both standalone: _oca_standalone
        if own_parent is not None and m_parent == own_parent:
            continue  # siblings: the bracket's own group
        reduce = order.oca_type in (2, 3) or (order.oca_type == 0 and m_parent is not None)
        if not reduce:
            eng._cancel(m, REASON, notify=False)
        elif m_parent is not None:
            _reduce_child(eng, m, m_parent, qty)
        else:
            m.total_quantity = max(m.total_quantity - qty, m.filled)
            if m.remaining <= EPS:
                eng._cancel(m, REASON, notify=False)
            else:
                eng._order_changed(m)


def _reduce_child(eng: Brokerage, child: SimOrder, parent_perm: int, qty: float) -> None:
    target = eng._child_target.get(child.perm_id, child.total_quantity) - qty
    if target <= child.filled + EPS:
        eng._cancel(child, REASON, notify=False)
        return
    eng._child_target[child.perm_id] = target
    eng._sync_children(eng.orders[parent_perm], force={child.perm_id})
