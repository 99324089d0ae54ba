"""adapters/ib_repr.py: the IB library's Trade formats as one short line in an f-string (what
the library's own INFO logs evaluate for every leg sent and every status read), naming the
order; its repr stays the library's, whole."""

from __future__ import annotations

from bracketgate.adapters import ib_repr
from bracketgate.adapters.ib import IBBroker, ibl


def trade() -> object:
    contract = ibl.Stock("AAPL", "SMART", "USD")
    order = ibl.Order(orderId=41, permId=9001, action="BUY", totalQuantity=10, orderType="LMT",
                      lmtPrice=195.5, orderRef="p-1", transmit=False)
    return ibl.Trade(contract, order, ibl.OrderStatus(orderId=41, status="Submitted", filled=3))


async def test_an_ibbroker_gives_the_librarys_trade_a_short_str_and_keeps_its_repr() -> None:
    async def publish(_msg: object) -> None:
        return None

    IBBroker(host="127.0.0.1", port=1, client_id=1, publish=publish)
    t = trade()
    text = f"placeOrder: New order {t}"
    assert text == ("placeOrder: New order Trade(orderId=41, permId=9001, orderRef='p-1', "
                    "BUY 10 AAPL LMT, status='Submitted', filled=3)")
    assert str(t) == ib_repr.short_trade_str(t)
    full = repr(t)
    assert full.startswith("Trade(contract=") and "lmtPrice=195.5" in full and len(full) > len(str(t))
    ib_repr.install(ibl)   # idempotent
    assert ibl.Trade.__str__ is ib_repr.short_trade_str
