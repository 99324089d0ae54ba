"""Paper TWS domain model: the brokerage's state, apart from any client session or wire format.

The wire layer (sim/server.py, sim/wire.py) decodes client messages into these objects, calls
the `Brokerage` (sim/engine.py) and turns the `BrokerEvent`s it emits into TWS messages for the
right clients. The engine never sees bytes; the wire layer never decides a fill.

Shapes (one line each):
  Brokerage.orders:      permId -> SimOrder            (every order of the day, any status)
  Brokerage.by_client:   (clientId, orderId) -> permId (each client's own order-id space)
  Brokerage._positions:  conId -> SimPosition          (read through Brokerage.positions())
  Brokerage.executions:  [SimExecution]                 (the day's executions, in order)
  Brokerage.prices:      conId -> float                 (last trade price)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

UNSET_DOUBLE = 1.7976931348623157e308  # IB's "unset" double (sent as 1.7976931348623157E308)
UNSET_INTEGER = 2147483647

OrderStatusName = Literal[
    "PendingSubmit", "PreSubmitted", "Submitted", "Filled", "Cancelled", "ApiCancelled", "Inactive",
]
TERMINAL_STATUSES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})


@dataclass(frozen=True)
class SimContract:
    """One instrument of the universe. conId is stable across runs (seeded universe)."""

    con_id: int
    symbol: str
    sec_type: Literal["STK", "OPT", "FUT"]
    exchange: str               # "SMART" for STK/OPT, "CME" for FUT
    primary_exchange: str       # "NASDAQ", "ARCA", "CME"...
    currency: str = "USD"
    local_symbol: str = ""
    trading_class: str = ""
    multiplier: float = 1.0
    min_tick: float = 0.01
    expiry: str = ""            # OPT: YYYYMMDD; FUT: YYYYMMDD (last trade date)
    contract_month: str = ""    # FUT: YYYYMM
    strike: float = 0.0
    right: str = ""             # "C" / "P" / ""
    long_name: str = ""
    under_con_id: int = 0


@dataclass
class SimOrder:
    """An order as TWS keeps it. Field names follow ib_async's Order where they exist."""

    client_id: int
    order_id: int
    perm_id: int
    contract: SimContract
    action: Literal["BUY", "SELL"]
    total_quantity: float
    order_type: Literal["MKT", "LMT", "STP", "STP LMT", "TRAIL", "TRAIL LIMIT"]
    lmt_price: float | None = None      # None = unset; TRAIL LIMIT: the current limit
    aux_price: float | None = None      # stop trigger for STP / STP LMT; TRAIL: trailing amount
    tif: str = "DAY"
    account: str = ""
    order_ref: str = ""
    parent_id: int = 0                  # placing client's orderId of the parent, 0 = none
    oca_group: str = ""
    oca_type: int = 0
    transmit: bool = True
    outside_rth: bool = False
    trailing_percent: float | None = None   # TRAIL / TRAIL LIMIT: trailing amount as a percent
    trail_stop_price: float | None = None   # TRAIL / TRAIL LIMIT: the current stop (None = unarmed)
    lmt_price_offset: float | None = None   # TRAIL LIMIT: limit = stop -/+ offset (SELL/BUY)
    # state kept by the engine
    status: OrderStatusName = "PendingSubmit"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    why_held: str = ""
    created_at: float = 0.0             # engine clock, seconds
    completed_at: float | None = None
    completed_status: str = ""          # text for completed orders ("Filled", "Cancelled by Trader"...)
    trail_best: float | None = None     # TRAIL: best price since armed (high for SELL, low for BUY)

    @property
    def remaining(self) -> float:
        return max(self.total_quantity - self.filled, 0.0)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class SimExecution:
    exec_id: str                 # "0000e0d5.6554a2f1.01.01" style, unique
    time: float                  # epoch seconds
    client_id: int
    order_id: int
    perm_id: int
    contract: SimContract
    side: Literal["BOT", "SLD"]
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    order_ref: str
    account: str
    exchange: str
    commission: float
    realized_pnl: float | None   # None = unset (opening fills)
    liquidity: int = 1           # 1 added, 2 removed


@dataclass
class SimPosition:
    contract: SimContract
    quantity: float = 0.0
    avg_cost: float = 0.0        # per unit INCLUDING multiplier, as IB reports (price*mult + comm/qty)
    realized_pnl: float = 0.0    # today's realized on this contract
    avg_price: float = 0.0       # engine bookkeeping: average fill price, no multiplier/commission


@dataclass(frozen=True)
class WhatIfResult:
    init_margin_before: float
    maint_margin_before: float
    equity_with_loan_before: float
    init_margin_change: float
    maint_margin_change: float
    equity_with_loan_change: float
    init_margin_after: float
    maint_margin_after: float
    equity_with_loan_after: float
    commission: float
    currency: str = "USD"
    warning: str = ""


class OrderRejected(Exception):
    """The engine refuses an order. `code` is the TWS error code (103, 110, 200, 201, 321...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---- events the engine emits (the wire layer fans them out to the right clients)


@dataclass(frozen=True)
class OrderChanged:
    """openOrder + orderStatus must be sent for this order (status, filled, price changed)."""

    order: SimOrder


@dataclass(frozen=True)
class ExecutionAdded:
    """execDetails (reqId -1) then commissionReport for this execution."""

    execution: SimExecution


@dataclass(frozen=True)
class PositionChanged:
    position: SimPosition


@dataclass(frozen=True)
class AccountChanged:
    """Account values changed (after a fill or a price move). Wire layer re-sends values, portfolio."""


@dataclass(frozen=True)
class PriceChanged:
    con_id: int
    price: float


@dataclass(frozen=True)
class OrderError:
    """An error to send to the order's client after acceptance (e.g. 202 on cancel)."""

    client_id: int
    order_id: int
    code: int
    message: str


BrokerEvent = OrderChanged | ExecutionAdded | PositionChanged | AccountChanged | PriceChanged | OrderError


@dataclass
class AccountState:
    account_id: str = "DU1234567"
    base_currency: str = "USD"
    starting_cash: float = 1_000_000.0
    cash: float = 1_000_000.0
    realized_pnl_today: float = 0.0
    commissions_today: float = 0.0
    # net liquidation at the start of the day: daily P&L = NetLiq - this
    start_of_day_net_liq: float = 1_000_000.0
    extra: dict[str, float] = field(default_factory=dict)
