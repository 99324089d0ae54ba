"""adapters/ib_working.py: a working order's model is made again only when its trade changed;
the cache holds only the open trades of the last build."""

from __future__ import annotations

from types import SimpleNamespace

from bracketgate.adapters.ib_working import WorkingOrders
from bracketgate.bus.messages import Side, WorkingOrder


def trade(order_id: int, sec_type: str = "STK", what_if: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        order=SimpleNamespace(orderId=order_id, permId=order_id + 100, parentId=0, orderRef="r",
                              action="BUY", orderType="LMT", totalQuantity=1.0, lmtPrice=10.0,
                              auxPrice=0.0, whatIf=what_if),
        orderStatus=SimpleNamespace(status="Submitted", remaining=1.0),
        contract=SimpleNamespace(symbol="AAPL", conId=7, secType=sec_type, multiplier=""))


def make(t: SimpleNamespace) -> WorkingOrder:
    return WorkingOrder(order_id=t.order.orderId, symbol=t.contract.symbol, side=Side.BUY,
                        order_type=t.order.orderType, quantity=t.order.totalQuantity,
                        remaining=t.orderStatus.remaining, status=t.orderStatus.status)


def test_unchanged_trades_keep_their_model_and_a_change_makes_a_new_one() -> None:
    w = WorkingOrders()
    a, b = trade(1), trade(2)
    first = w.build([a, b, trade(3, what_if=True)], make)
    assert [m.order_id for m in first] == [1, 2] and w.built == 2
    again = w.build([a, b], make)
    assert again[0] is first[0] and again[1] is first[1] and w.built == 2
    b.orderStatus.status, b.orderStatus.remaining = "PreSubmitted", 0.5
    a.order.lmtPrice = 10.5   # a modify
    third = w.build([a, b], make)
    assert third[0] is not first[0] and third[1] is not first[1] and w.built == 4
    assert third[1].status == "PreSubmitted" and third[1].remaining == 0.5


def test_the_cache_holds_only_the_last_builds_trades_and_a_combo_is_always_made() -> None:
    w = WorkingOrders()
    w.build([trade(i) for i in range(50)], make)
    assert len(w) == 50
    w.build([], make)
    assert len(w) == 0
    bag = trade(9, sec_type="BAG")
    w.build([bag], make)
    w.build([bag], make)
    assert w.built == 52      # its multiplier comes from its legs' contracts: never cached
    fresh = trade(1)          # another object with the same fields: its own model
    assert w.build([fresh], make)[0].order_id == 1
