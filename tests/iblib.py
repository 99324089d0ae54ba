"""The IB client library under test: ib_async, or ib_insync 0.9.86 in its own virtualenv.

Client-level tests of the paper TWS import the library only through this module so the same
suite runs under both (CI runs it twice, once per virtualenv; never both in one).
"""

try:
    import ib_async as ib  # noqa: F401
    LIBRARY = "ib_async"
except ImportError:  # pragma: no cover - exercised in the ib_insync virtualenv
    import ib_insync as ib  # type: ignore[no-redef]  # noqa: F401
    LIBRARY = "ib_insync"

IB = ib.IB
Stock = ib.Stock
Option = ib.Option
Future = ib.Future
Contract = ib.Contract
LimitOrder = ib.LimitOrder
MarketOrder = ib.MarketOrder
StopOrder = ib.StopOrder
Order = ib.Order
ExecutionFilter = ib.ExecutionFilter
util = ib.util
ComboLeg = ib.ComboLeg
TagValue = ib.TagValue
