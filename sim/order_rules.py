"""Order attributes TWS refuses outright (checked before anything else of a placeOrder).

TWS (since 983.x) no longer supports the `eTradeOnly` and `firmQuoteOnly` order attributes;
the official IB client 9.81 still sends both as true by default, and TWS refuses such an
order with error 10268 (eTradeOnly) or 10269 (firmQuoteOnly, when eTradeOnly is false), the
message texts of IB's message-code table. Nothing is created; a new order gets its final
orderStatus Cancelled like any refused order (sim/server.py `_reject`).
"""

from __future__ import annotations

from typing import Any

MSG_ETRADE_ONLY = "The 'EtradeOnly' order attribute is not supported."
MSG_FIRM_QUOTE_ONLY = "The 'firmQuoteOnly' order attribute is not supported."


def unsupported_attribute(m: Any) -> tuple[int, str] | None:
    """(code, message) when the placeOrder `m` carries an attribute TWS refuses, else None."""
    if getattr(m, "e_trade_only", False):
        return 10268, MSG_ETRADE_ONLY
    if getattr(m, "firm_quote_only", False):
        return 10269, MSG_FIRM_QUOTE_ONLY
    return None
