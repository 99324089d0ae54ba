"""A short str() for the IB library's Trade (its repr stays whole).

ib_async / ib_insync log every order they send and every status they read with an f-string,
`self._logger.info(f"placeOrder: New order {trade}")`, `f"orderStatus: {trade}"`: the whole
Trade (its contract, some 150 order fields, the status, the log) is formatted for each leg of a
bracket and for each of IB's acks whether INFO is on or not (the daemon keeps these loggers at
WARNING, so the text is then dropped). That formatting was ~0.2 ms per leg sent and per
status read, on the approved path between the legs and before each ack reaches us
(bench/bench_latency.py). With this, str(trade) (what an f-string calls) names the order in one
short line; repr(trade) is the library's own.
"""

from __future__ import annotations

from typing import Any


def short_trade_str(trade: Any) -> str:
    o, s = trade.order, trade.orderStatus
    return (f"Trade(orderId={o.orderId}, permId={o.permId}, orderRef={o.orderRef!r}, "
            f"{o.action} {o.totalQuantity:g} {trade.contract.symbol} {o.orderType}, "
            f"status={s.status!r}, filled={s.filled:g})")


def install(ibl: Any) -> None:
    """Give the library's Trade the short str() (idempotent)."""
    if ibl.Trade.__dict__.get("__str__") is not short_trade_str:
        ibl.Trade.__str__ = short_trade_str
