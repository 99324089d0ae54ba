"""Paper TWS brokerage engine: account, orders, matching, brackets, fills, P&L. No wire, no sockets.

CONTRACT (sim/server.py codes against exactly this; keep signatures stable):

    eng = Brokerage(universe: Universe, account: AccountState | None = None, clock=time.time,
                    margin_model=MarginModel(), commission_model=CommissionModel())
        `clock` is a callable returning epoch seconds (a core.clock Clock object with .now() is
        accepted too). The engine never reads the wall clock itself.
    eng.subscribe(callback: Callable[[BrokerEvent], None])   # synchronous fan-out, in order
        Events are buffered during one call and delivered when the engine state is consistent
        again (at the end of place/cancel/set_price...). Each event carries a SNAPSHOT (copy) of
        the order/position, so a queued event never shows a later state. A subscriber that
        raises is logged and skipped; the others still get the event.
    eng.unsubscribe(callback)                               # (extension)
    eng.next_perm_id() -> int

    eng.place(order: SimOrder) -> SimOrder
        New order or modify (same (client_id, order_id), not terminal -> modify price/qty/aux,
        tif, orderRef, transmit). Returns the engine's live order (read it, don't mutate it).
        `order.contract` may be partial (conId 0): it is resolved through the universe and the
        stored order carries the full universe contract. order.perm_id: kept if it came from
        next_perm_id() and is unused, else a fresh one is assigned. Checks, in this order:
          103 "Duplicate order id": new id <= the highest that client used (a modify of its own
              live order is not new). Every other rejection still consumes the id.
          321 "Error validating request.-'bN' : cause - ...": missing exchange, bad action,
              quantity <= 0, unsupported type, LMT/STP LMT without lmt_price, STP/STP LMT
              without aux_price (None or UNSET_DOUBLE count as missing).
          200 "No security definition has been found for the request": unknown/ambiguous
          110 "The price does not conform to the minimum price variation for this contract."
          135 "Can't find order with id =N": parent_id names no order of that client (ext.)
          105 "Order being modified does not match original order": modify changes the
              contract or the action (extension); the other modify refusals (104, 329, 135,
              10326/10327, quantity below filled) are in sim/modify.py, TRAIL checks in
              sim/trailing.py
          201 "Order rejected - reason:...": after a full fill at the expected price the
              initial margin would exceed equity with loan value (orders without a parent
              only; an order that lowers the requirement is never refused); also a child whose
              parent was cancelled unfilled ("Parent order is being cancelled.").
        Rejections raise OrderRejected(code, msg) and leave no order behind.
        Bracket semantics: an order with transmit=False is held (status PreSubmitted, nothing
        works) until an order of the same client whose parent chain includes it arrives (or is
        re-placed) with transmit=True; then the whole chain (root and every held descendant)
        is released. Children (parent_id != 0) are PreSubmitted, why_held "child", until the
        parent has a fill; from then on each child works for min(its quantity, parent FILLED
        quantity) minus what its OCA siblings already filled (IB amends the children as the
        parent fills), so partial parent fills give partially working children.
        A bracket's children form one OCA group (the explicit ocaGroup if set, else implied by
        the shared parent) with reduce semantics: a child fill reduces its siblings. A child
        with nothing left to work while the parent still works waits (PreSubmitted, "child");
        once the parent is done (Filled/Cancelled) the child that completed the group is
        Filled and the others are Cancelled, so a full take-profit fill cancels the stop and
        vice versa (a take-profit partly filled before the stop took the rest ends Cancelled
        with its filled quantity). ocaType 1 on children cancels the siblings on first fill.
        Standalone OCA groups (no parent): ocaType 0/1 cancel the other members on any fill,
        2/3 reduce them by the filled quantity.
        Fills on arrival: MKT at once at last +/- half spread (ask for BUY, bid for SELL; half
        spread = 1 tick, 2 for options, see sim/market.py); a marketable LMT (BUY: last <= lmt)
        at min(lmt, ask) (SELL: max(lmt, bid)); a STP already through its trigger as MKT.
        Emits OrderChanged (accepted), then the fills.

    eng.what_if(order: SimOrder) -> WhatIfResult   # no order is created, no id consumed
        Same 321/200/110 checks. Margins before/after a full fill at the expected price
        (MKT: ask/bid; LMT: limit or better; STP: aux), equity change = -commission -
        slippage against the last price, commission from the commission model.
    eng.cancel(client_id: int, order_id: int) -> None
        Emits OrderChanged(status Cancelled) then OrderError(202, "Order Canceled - reason:")
        (the order of the real capture). Cancelling a parent with no fill cancels its children
        (each gets the same two events); a partly filled parent's children keep protecting the
        filled quantity. Raises OrderRejected(10147, "OrderId N that needs to be cancelled is
        not found.") for an unknown order, OrderRejected(161, "Cancel attempted when order is
        not in a cancellable state. ...") for a terminal one.
    eng.global_cancel() -> None                    # every working order, any client
    eng.set_price(con_id: int, price: float) -> None
        Rounds the price to the contract's tick, moves the market and trades through the
        working orders on that contract in permId order, repeating until nothing more fills
        (so a parent filled by the move can have its stop triggered by the same move):
          BUY LMT fills when price <= lmt at lmt; SELL LMT when price >= lmt at lmt;
          STP SELL triggers when price <= aux and fills at the price (slippage), STP BUY when
          price >= aux; a triggered STP LMT becomes a LMT at lmt (filling at once at the price
          if the price is within the limit); resting MKT remainders fill at ask/bid.
        Events: PriceChanged, then per fill OrderChanged, ExecutionAdded, PositionChanged,
        AccountChanged, then the bracket/OCA consequences (OrderChanged); AccountChanged alone
        when nothing filled but the account holds the contract (or its options).
        Raises UnknownContract (a LookupError) for an unknown conId, ValueError for price <= 0.
    eng.set_price_fill_qty(max_qty: float | None)
        Caps each order's fill quantity per price move (and on arrival): deterministic
        partial fills. None = no cap.

    Reads (for the wire layer):
    eng.orders_for(client_id: int) -> list[SimOrder]       # client 0 sees all; open (non-terminal)
    eng.completed_orders() -> list[SimOrder]               # terminal orders of the day
    eng.executions_since(client_id: int | None = None, since: float | None = None, symbol="",
                         sec_type="", exchange="", side="", account="") -> list[SimExecution]
        client_id None/0 = every client; side "BUY"/"SELL" (or BOT/SLD); since = epoch seconds.
    eng.positions() -> list[SimPosition]                   # non-zero + zeroed today
    eng.account_values() -> list[tuple[str, str, str]]     # (tag, value, currency), TWS tags
        The 153 rows of reqAccountUpdates in the capture's order (tws176_startup_whatif.txt),
        USD for GBP, BASE rows duplicated, money as "%.2f". -S = securities (stocks, options,
        cash), -C = commodities (futures margin and futures P&L); total = S + C.
    eng.account_value(tag: str, currency: str = "USD") -> float   # (extension) numeric value
    eng.portfolio() -> list[tuple[SimPosition, float mkt_price, float mkt_value, float upnl,
                                  float rpnl]]
    eng.pnl() -> tuple[float daily, float unrealized, float realized]
        daily = NetLiquidation - account.start_of_day_net_liq.
    eng.pnl_single(con_id) -> tuple[int pos, float daily, float unrealized, float realized,
                                    float value]
        No position today -> (0, UNSET_DOUBLE x4) as TWS. daily = realized + unrealized change
        since the start of the day.
    eng.position(con_id) -> SimPosition | None             # (extension)
    eng.order(client_id, order_id) -> SimOrder | None      # (extension) any status
    eng.max_order_id(client_id) -> int                     # (extension) nextValidId - 1
    eng.price(con_id) -> float
        Last price; a contract never moved starts at the universe start price (an option at its
        Black-Scholes value from its underlying's current price, pinned once traded).
    eng.to_dict() / Brokerage.from_dict(d, universe, clock=..., ...)   # --state FILE (JSON)
        Round-trips orders, positions, executions, account, per-client order-id high-water
        marks, the permId counter, prices, held/triggered sets and bracket bookkeeping.
    eng.reset()                                            # back to the initial state, silently
    eng.roll_day() -> None                                 # (extension) new trading day: DAY
        orders cancelled, start-of-day NetLiq/marks taken, realized and the day's completed
        orders/executions cleared.

Money is float, rounded to the tick for prices. Accounting as IB reports it: avgCost per unit
includes the multiplier and the commission (ES 1 @ 5900: 5900*50 + 0.85 = 295000.85; a short
subtracts it); unrealized = (price*mult - avgCost)*qty; realized on a closing fill = (price*mult
- avgCost)*closed qty - that fill's commission (sign flipped for shorts). Cash moves with the
notional of stock/option fills and with every commission; futures move cash only by realized
price P&L (they are marked to market), so NetLiquidation = cash + stock and option market value
+ futures open price P&L. EquityWithLoanValue = NetLiquidation (see sim/margin.py).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bracketgate.core.logs import get_logger
from bracketgate.sim import modify, oca, trailing
from bracketgate.sim.margin import ZERO_MARGIN, CommissionModel, MarginModel, MarginRequirement
from bracketgate.sim.market import half_spread
from bracketgate.sim.model import (
    UNSET_DOUBLE,
    AccountChanged,
    AccountState,
    BrokerEvent,
    ExecutionAdded,
    OrderChanged,
    OrderError,
    OrderRejected,
    PositionChanged,
    PriceChanged,
    SimContract,
    SimExecution,
    SimOrder,
    SimPosition,
    WhatIfResult,
)
from bracketgate.sim.universe import Universe, UnknownContract, round_to_tick

log = get_logger("sim.engine")

PERM_ID_START = 700_000_001
EXEC_ID_PREFIX = "0000e0d5"
EPS = 1e-9
ORDER_TYPES = frozenset({"MKT", "LMT", "STP", "STP LMT", "TRAIL", "TRAIL LIMIT"})

MSG_DUPLICATE_ID = "Duplicate order id"
MSG_NO_SECDEF = "No security definition has been found for the request"
MSG_TICK = "The price does not conform to the minimum price variation for this contract."
MSG_CANCELED = "Order Canceled - reason:"
MSG_MISMATCH = "Order being modified does not match original order"


def _validation(cause: str) -> OrderRejected:
    return OrderRejected(321, f"Error validating request.-'bN' : cause - {cause}")


# reqAccountUpdates tags in the order TWS 176 sends them. Kind: "" = no currency, "B" = one row
# in BASE and one in USD, "$" = one row in USD.
_ACCOUNT_TAGS: tuple[tuple[str, str], ...] = tuple(
    (line.split()[0], line.split()[1] if len(line.split()) > 1 else "")
    for line in """
AccountCode
AccountOrGroup B
AccountReady
AccountType
AccruedCash B
AccruedCash-C $
AccruedCash-S $
AccruedDividend $
AccruedDividend-C $
AccruedDividend-S $
AvailableFunds $
AvailableFunds-C $
AvailableFunds-S $
Billable $
Billable-C $
Billable-S $
BuyingPower $
CashBalance B
ColumnPrio-C
ColumnPrio-S
CorporateBondValue B
Currency B
Cushion
DayTradesRemaining
DayTradesRemainingT+1
DayTradesRemainingT+2
DayTradesRemainingT+3
DayTradesRemainingT+4
DayTradingStatus-S
EquityWithLoanValue $
EquityWithLoanValue-C $
EquityWithLoanValue-S $
ExcessLiquidity $
ExcessLiquidity-C $
ExcessLiquidity-S $
ExchangeRate B
FullAvailableFunds $
FullAvailableFunds-C $
FullAvailableFunds-S $
FullExcessLiquidity $
FullExcessLiquidity-C $
FullExcessLiquidity-S $
FullInitMarginReq $
FullInitMarginReq-C $
FullInitMarginReq-S $
FullMaintMarginReq $
FullMaintMarginReq-C $
FullMaintMarginReq-S $
FundValue B
FutureOptionValue B
FuturesPNL B
FxCashBalance B
GrossPositionValue $
GrossPositionValue-S $
Guarantee $
Guarantee-C $
Guarantee-S $
IndianStockHaircut $
IndianStockHaircut-C $
IndianStockHaircut-S $
InitMarginReq $
InitMarginReq-C $
InitMarginReq-S $
IssuerOptionValue B
Leverage-S
LookAheadAvailableFunds $
LookAheadAvailableFunds-C $
LookAheadAvailableFunds-S $
LookAheadExcessLiquidity $
LookAheadExcessLiquidity-C $
LookAheadExcessLiquidity-S $
LookAheadInitMarginReq $
LookAheadInitMarginReq-C $
LookAheadInitMarginReq-S $
LookAheadMaintMarginReq $
LookAheadMaintMarginReq-C $
LookAheadMaintMarginReq-S $
LookAheadNextChange
MaintMarginReq $
MaintMarginReq-C $
MaintMarginReq-S $
MoneyMarketFundValue B
MutualFundValue B
NLVAndMarginInReview
NetDividend B
NetLiquidation $
NetLiquidation-C $
NetLiquidation-S $
NetLiquidationByCurrency B
NetLiquidationUncertainty $
OptionMarketValue B
PASharesValue $
PASharesValue-C $
PASharesValue-S $
PhysicalCertificateValue $
PhysicalCertificateValue-C $
PhysicalCertificateValue-S $
PostExpirationExcess $
PostExpirationExcess-C $
PostExpirationExcess-S $
PostExpirationMargin $
PostExpirationMargin-C $
PostExpirationMargin-S $
PreviousDayEquityWithLoanValue $
PreviousDayEquityWithLoanValue-S $
RealCurrency B
RealizedPnL B
RegTEquity $
RegTEquity-S $
RegTMargin $
RegTMargin-S $
SMA $
SMA-S $
SegmentTitle-C
SegmentTitle-S
StockMarketValue B
TBillValue B
TBondValue B
TotalCashBalance B
TotalCashValue $
TotalCashValue-C $
TotalCashValue-S $
TotalDebitCardPendingCharges $
TotalDebitCardPendingCharges-C $
TotalDebitCardPendingCharges-S $
TradingType-S
UnrealizedPnL B
WarrantValue B
WhatIfPMEnabled
""".strip().splitlines()
)


def _fmt_qty(q: float) -> str:
    return f"{q:g}" if q != int(q) else str(int(q))


def _is_set(price: float | None) -> bool:
    return price is not None and price < UNSET_DOUBLE / 2


def _on_tick(price: float, tick: float) -> bool:
    steps = price / tick
    return abs(steps - round(steps)) < 1e-6


def _as_epoch_clock(clock: Any) -> Callable[[], float]:
    if callable(clock):
        return clock
    if hasattr(clock, "now"):
        return lambda: clock.now().timestamp()
    raise TypeError("clock must be a callable returning epoch seconds or have .now()")


class Brokerage:
    """One paper account's brokerage. Shapes:

      orders:        permId -> SimOrder             (every order of the day, any status)
      by_client:     (clientId, orderId) -> permId  (each client's own order-id space)
      _positions:    conId -> SimPosition           (non-zero + zeroed today; read positions())
      executions:    [SimExecution]                 (the day's executions, in order)
      prices:        conId -> float                 (last price of contracts moved or traded)
      _max_order_id: clientId -> highest orderId used (placed or rejected)
      _held:         {permId}                       (transmit=False, waiting for the chain)
      _triggered:    {permId}                       (STP / STP LMT whose trigger has fired)
      _parent_of:    child permId -> parent permId
      _child_target: child permId -> quantity the client asked for
      _sod_unrealized: conId -> unrealized P&L at the start of the day
      _open:         {permId}                       (non-terminal orders; derived)
      _open_by_con:  conId -> {permId}              (the same, by contract; derived)
      _kids:         parent permId -> [child permId] (derived from _parent_of)
      _exec_count:   permId -> executions so far    (derived from executions)
    """

    def __init__(
        self,
        universe: Universe,
        account: AccountState | None = None,
        clock: Any = time.time,
        margin_model: MarginModel | None = None,
        commission_model: CommissionModel | None = None,
    ) -> None:
        self.universe = universe
        self.clock = _as_epoch_clock(clock)
        self.margin_model = margin_model or MarginModel()
        self.commission_model = commission_model or CommissionModel()
        self._initial_account = _copy_account(account or AccountState())
        self._subscribers: list[Callable[[BrokerEvent], None]] = []
        self._pending: list[BrokerEvent] = []
        self._depth = 0
        self._flushing = False
        self._init_state()

    def _init_state(self) -> None:
        self.account = _copy_account(self._initial_account)
        self.orders: dict[int, SimOrder] = {}
        self.by_client: dict[tuple[int, int], int] = {}
        self._positions: dict[int, SimPosition] = {}
        self.executions: list[SimExecution] = []
        self.prices: dict[int, float] = {}
        self._max_order_id: dict[int, int] = {}
        self._next_perm = PERM_ID_START
        self._held: set[int] = set()
        self._triggered: set[int] = set()
        self._parent_of: dict[int, int] = {}
        self._child_target: dict[int, float] = {}
        self._sod_unrealized: dict[int, float] = {}
        self._fill_cap: float | None = None
        self._exec_base = 0
        self._arrivals: set[int] = set()
        self._derive_indexes()

    def _derive_indexes(self) -> None:
        """Indexes derived from the state above (rebuilt after from_dict)."""
        self._open: set[int] = {p for p, o in self.orders.items() if not o.is_terminal}
        self._open_by_con: dict[int, set[int]] = {}
        for p in self._open:
            self._open_by_con.setdefault(self.orders[p].contract.con_id, set()).add(p)
        self._kids: dict[int, list[int]] = {}
        for child, parent in sorted(self._parent_of.items()):
            self._kids.setdefault(parent, []).append(child)
        self._exec_count: dict[int, int] = {}
        for e in self.executions:
            self._exec_count[e.perm_id] = self._exec_count.get(e.perm_id, 0) + 1

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[BrokerEvent], None]) -> None:
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[BrokerEvent], None]) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def _emit(self, event: BrokerEvent) -> None:
        self._pending.append(event)

    def _order_changed(self, order: SimOrder) -> None:
        self._emit(OrderChanged(copy.copy(order)))

    @contextmanager
    def _batch(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._flush()

    def _flush(self) -> None:
        # A subscriber may call back into the engine: its events queue behind the current ones.
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._pending:
                events, self._pending = self._pending, []
                for event in events:
                    for callback in list(self._subscribers):
                        try:
                            callback(event)
                        except Exception:  # a broken subscriber must not break the others
                            log.exception("subscriber_failed", event_type=type(event).__name__)
        finally:
            self._flushing = False

    # ------------------------------------------------------------------ ids

    def next_perm_id(self) -> int:
        perm = self._next_perm
        self._next_perm += 1
        return perm

    def _new_exec_id(self, order: SimOrder) -> str:
        self._exec_base = max(int(self.clock()), self._exec_base + 1)
        n = self._exec_count.get(order.perm_id, 0) + 1
        self._exec_count[order.perm_id] = n
        return f"{EXEC_ID_PREFIX}.{self._exec_base:08x}.{n:02x}.01"

    # ------------------------------------------------------------------ prices

    def price(self, con_id: int) -> float:
        px = self.prices.get(con_id)
        if px is not None:
            return px
        contract = self.universe.get(con_id)
        if contract is None:
            raise UnknownContract(f"unknown conId {con_id}")
        if contract.sec_type == "OPT" and contract.under_con_id in self.universe:
            return self.universe.theoretical_price(contract, self.price(contract.under_con_id))
        return self.universe.start_price(con_id)

    def _pin_price(self, con_id: int) -> None:
        if con_id not in self.prices:
            self.prices[con_id] = self.price(con_id)

    def _bid_ask(self, contract: SimContract) -> tuple[float, float]:
        px = self.price(contract.con_id)
        half = half_spread(contract)
        bid = max(round_to_tick(px - half, contract.min_tick), contract.min_tick)
        return bid, round_to_tick(px + half, contract.min_tick)

    def set_price_fill_qty(self, max_qty: float | None) -> None:
        if max_qty is not None and max_qty <= 0:
            raise ValueError("max fill quantity must be positive or None")
        self._fill_cap = max_qty

    def set_price(self, con_id: int, price: float) -> None:
        contract = self.universe.get(con_id)
        if contract is None:
            raise UnknownContract(f"unknown conId {con_id}")
        if price <= 0:
            raise ValueError(f"price must be positive, got {price}")
        price = max(round_to_tick(price, contract.min_tick), contract.min_tick)
        with self._batch():
            self.prices[con_id] = price
            self._emit(PriceChanged(con_id, price))
            trailing.follow(self, con_id)  # trailing stops move with the price first
            fills_before = len(self.executions)
            self._match({con_id})
            if len(self.executions) == fills_before and self._holds(con_id):
                self._emit(AccountChanged())

    def _holds(self, con_id: int) -> bool:
        for pos in self._positions.values():
            c = pos.contract
            if pos.quantity and con_id in (c.con_id, c.under_con_id):
                return True
        return False

    # ------------------------------------------------------------------ placing

    def place(self, order: SimOrder) -> SimOrder:
        with self._batch():
            try:
                return self._place(order)
            except OrderRejected as rej:
                log.info("order_rejected", client_id=order.client_id, order_id=order.order_id,
                         code=rej.code, reason=rej.message)
                raise

    def _place(self, incoming: SimOrder) -> SimOrder:
        key = (incoming.client_id, incoming.order_id)
        perm = self.by_client.get(key)
        if perm is not None and not self.orders[perm].is_terminal:
            return self._modify(self.orders[perm], incoming)
        if perm is not None:
            modify.refuse_done(self.orders[perm])  # 104 filled, 103 otherwise
        if incoming.order_id <= self._max_order_id.get(incoming.client_id, 0):
            raise OrderRejected(103, MSG_DUPLICATE_ID)
        self._max_order_id[incoming.client_id] = incoming.order_id

        contract = self._check_order(incoming)
        parent: SimOrder | None = None
        if incoming.parent_id:
            parent_perm = self.by_client.get((incoming.client_id, incoming.parent_id))
            if parent_perm is None:
                raise OrderRejected(135, f"Can't find order with id ={incoming.parent_id}")
            parent = self.orders[parent_perm]
            if parent.is_terminal and parent.filled <= EPS:
                raise OrderRejected(201, "Order rejected - reason:Parent order is being cancelled.")
            if parent.is_terminal:  # a filled parent is no longer an order TWS can attach to
                raise modify.cant_find(incoming.parent_id)
        else:
            self._check_margin(contract, incoming.action, incoming.total_quantity,
                               self._expected_fill_price(incoming, contract))

        perm_id = incoming.perm_id
        if not perm_id or perm_id in self.orders or perm_id >= self._next_perm:
            perm_id = self.next_perm_id()
        order = dataclasses.replace(
            incoming, contract=contract, perm_id=perm_id,
            lmt_price=incoming.lmt_price if _is_set(incoming.lmt_price) else None,
            aux_price=incoming.aux_price if _is_set(incoming.aux_price) else None,
            account=incoming.account or self.account.account_id,
            status="PreSubmitted", filled=0.0, avg_fill_price=0.0, last_fill_price=0.0,
            why_held="", created_at=self.clock(), completed_at=None, completed_status="",
        )
        trailing.on_place(self, order)
        self.orders[perm_id] = order
        self.by_client[key] = perm_id
        self._open.add(perm_id)
        self._open_by_con.setdefault(contract.con_id, set()).add(perm_id)
        self._pin_price(contract.con_id)
        if parent is not None:
            self._parent_of[perm_id] = parent.perm_id
            self._kids.setdefault(parent.perm_id, []).append(perm_id)
            self._child_target[perm_id] = order.total_quantity
        log.info("order_placed", client_id=order.client_id, order_id=order.order_id,
                 perm_id=perm_id, action=order.action, qty=order.total_quantity,
                 order_type=order.order_type, symbol=contract.local_symbol,
                 transmit=order.transmit, parent_id=order.parent_id)
        if not order.transmit:
            self._held.add(perm_id)
            self._order_changed(order)
            return order
        self._release_chain(order)
        return order

    def _check_order(self, order: SimOrder) -> SimContract:
        """321, 200 and 110 checks; returns the universe contract."""
        if not order.contract.exchange:
            raise _validation("Missing order exchange.")
        if order.action not in ("BUY", "SELL"):
            raise _validation(f"Invalid action {order.action!r}.")
        if not order.total_quantity or order.total_quantity <= 0:
            raise _validation("Order quantity must be positive.")
        if order.order_type not in ORDER_TYPES:
            raise _validation(f"Unsupported order type {order.order_type!r}.")
        if order.order_type in ("LMT", "STP LMT") and not _is_set(order.lmt_price):
            raise _validation("Missing limit price.")
        if order.order_type in ("STP", "STP LMT") and not _is_set(order.aux_price):
            raise _validation("Missing aux price.")
        try:
            contract = self.universe.resolve(order.contract)
        except UnknownContract:
            raise OrderRejected(200, MSG_NO_SECDEF) from None
        for px in (order.lmt_price if order.order_type in ("LMT", "STP LMT") else None,
                   order.aux_price if order.order_type in ("STP", "STP LMT") else None):
            if px is not None and (px <= 0 or not _on_tick(px, contract.min_tick)):
                raise OrderRejected(110, MSG_TICK)
        trailing.validate(order, contract)  # TRAIL / TRAIL LIMIT: 321 / 110
        return contract

    def _check_margin(self, contract: SimContract, action: str, qty: float, fill_px: float) -> None:
        p = self._project(contract, action, qty, fill_px)
        if p.init_margin_after > p.init_margin_before + EPS and \
                p.init_margin_after > p.equity_with_loan_after + EPS:
            raise OrderRejected(
                201,
                "Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE "
                f"DESIRED POSITION YOUR EQUITY WITH LOAN VALUE [{p.equity_with_loan_after:.2f} "
                f"USD] MUST EXCEED THE INITIAL MARGIN [{p.init_margin_after:.2f} USD]",
            )

    def _modify(self, order: SimOrder, new: SimOrder) -> SimOrder:
        contract = self._check_order(new)
        modify.check(self, order, new, contract)  # 105, 329, 135, 10326/10327, 321 (sim/modify.py)
        old_aux = order.aux_price
        perm = order.perm_id
        is_child = perm in self._parent_of
        if not is_child and new.total_quantity > order.total_quantity + EPS:
            self._check_margin(contract, new.action, new.total_quantity - order.total_quantity,
                               self._expected_fill_price(new, contract))
        if not self.orders[perm].order_type == new.order_type:
            self._triggered.discard(perm)
        order.order_type = new.order_type
        order.lmt_price = new.lmt_price if _is_set(new.lmt_price) else None
        order.aux_price = new.aux_price if _is_set(new.aux_price) else None
        order.tif = new.tif
        order.order_ref = new.order_ref
        order.outside_rth = new.outside_rth
        order.transmit = new.transmit
        trailing.on_modify(self, order, new, old_aux)
        if new.oca_group:  # (an ocaType of 0 on a modify leaves the type as it is)
            order.oca_group, order.oca_type = new.oca_group, new.oca_type or order.oca_type
        log.info("order_modified", client_id=order.client_id, order_id=order.order_id,
                 perm_id=perm, qty=new.total_quantity, lmt=order.lmt_price, aux=order.aux_price)
        if is_child:
            self._child_target[perm] = new.total_quantity
            if perm in self._held:
                order.total_quantity = new.total_quantity
        else:
            order.total_quantity = new.total_quantity
            if order.remaining <= EPS:
                self._finish(order, "Filled", f"Filled Size: {_fmt_qty(order.filled)}")
        if perm in self._held:
            self._order_changed(order)
            if new.transmit:
                self._release_chain(order)
            return order
        if is_child:
            self._sync_children(self.orders[self._parent_of[perm]], force={perm})
        else:
            self._order_changed(order)
            if not order.is_terminal:
                self._arrivals.add(perm)
            self._sync_children(order)
        self._match(set())
        return order

    # ------------------------------------------------------------------ brackets

    def _children(self, parent_perm: int) -> list[SimOrder]:
        return [self.orders[c] for c in self._kids.get(parent_perm, ())]

    def _root(self, order: SimOrder) -> SimOrder:
        while order.perm_id in self._parent_of:
            order = self.orders[self._parent_of[order.perm_id]]
        return order

    def _descendants(self, order: SimOrder) -> list[SimOrder]:
        out: list[SimOrder] = []
        for child in self._children(order.perm_id):
            out.append(child)
            out.extend(self._descendants(child))
        return out

    def _release_chain(self, order: SimOrder) -> None:
        """`order` arrived (or was re-placed) with transmit=True: release its whole chain."""
        root = self._root(order)
        chain = [root, *self._descendants(root)]
        released = [o for o in chain if o.perm_id in self._held or o is order]
        for o in released:
            self._held.discard(o.perm_id)
        for o in released:
            if o.is_terminal:
                continue
            if o.perm_id in self._parent_of:
                continue  # children are set by _sync_children below
            o.status, o.why_held = "Submitted", ""
            if o.order_type == "MKT":
                o.status = "PreSubmitted"  # as the capture: PreSubmitted, then Filled
            self._order_changed(o)
            self._arrivals.add(o.perm_id)
        parents = []
        for o in chain:
            if o.perm_id in self._parent_of:
                parent = self.orders[self._parent_of[o.perm_id]]
                if parent not in parents:
                    parents.append(parent)
        for parent in parents:
            self._sync_children(parent, force={o.perm_id for o in released})
        self._match(set())

    def _sync_children(self, parent: SimOrder, force: set[int] | frozenset[int] = frozenset(),
                       notify: bool = False, reason: str = "Cancelled by System:") -> None:
        """Bring a parent's children in line with its fills (see the contract docstring)."""
        for c in self._children(parent.perm_id):
            if c.is_terminal:
                continue
            if c.perm_id in self._held:
                if parent.is_terminal and parent.filled <= EPS:
                    self._cancel(c, reason, notify=notify)
                continue
            outcome = self._update_child(c, parent)
            if outcome == "cancel":
                self._cancel(c, reason, notify=notify and parent.filled <= EPS)
            elif outcome != "same" or c.perm_id in force:
                self._order_changed(c)

    def _update_child(self, c: SimOrder, parent: SimOrder) -> str:
        """Set one working child's status and working quantity from its parent's fills and its
        OCA siblings' fills. Returns "cancel" (caller cancels), "filled", "changed" or "same"."""
        before = (c.status, c.total_quantity, c.why_held)
        target = self._child_target.get(c.perm_id, c.total_quantity)
        members = [m for m in self._children(parent.perm_id) if m.oca_group == c.oca_group]
        group_filled = sum(m.filled for m in members)
        others_filled = group_filled - c.filled
        follow = min(target, parent.filled)
        remaining = max(0.0, follow - group_filled)
        parent_done = parent.is_terminal
        if c.oca_type == 1 and others_filled > EPS:
            return "cancel"
        if c.filled >= target - EPS:
            done = True
        elif parent.filled <= EPS:
            if parent_done:
                return "cancel"
            c.status, c.why_held, c.total_quantity = "PreSubmitted", "child", target
            done = False
        elif remaining <= EPS:
            # nothing to work now: wait for more parent fills, or end with the group
            if parent_done:
                if c.filled <= EPS or self._last_filler(members) is not c:
                    return "cancel"
                done = True
            else:
                c.status, c.why_held = "PreSubmitted", "child"
                done = False
        else:
            grew = c.filled + remaining > c.total_quantity + EPS
            c.total_quantity = c.filled + remaining
            if c.status != "Submitted" or grew:
                self._arrivals.add(c.perm_id)
            c.status, c.why_held = "Submitted", ""
            done = False
        if done:
            c.total_quantity = c.filled
            self._finish(c, "Filled", f"Filled Size: {_fmt_qty(c.filled)}")
            return "filled"
        return "same" if (c.status, c.total_quantity, c.why_held) == before else "changed"

    def _last_filler(self, members: list[SimOrder]) -> SimOrder | None:
        """The member of an OCA group that filled last (it completed the group)."""
        perms = {m.perm_id: m for m in members}
        for e in reversed(self.executions):
            if e.perm_id in perms:
                return perms[e.perm_id]
        filled = [m for m in members if m.filled > EPS]
        return max(filled, key=lambda m: m.filled) if filled else None

    def _oca_standalone(self, order: SimOrder, qty: float) -> None:
        """A fill of `qty` in a parentless order of an OCA group acts on the other members."""
        if not order.oca_group:
            return
        for other in [self.orders[p] for p in sorted(self._open)]:
            if other is order or other.is_terminal or other.oca_group != order.oca_group \
                    or other.perm_id in self._parent_of:
                continue
            if order.oca_type in (2, 3):
                other.total_quantity = max(other.total_quantity - qty, other.filled)
                if other.remaining <= EPS:
                    self._cancel(other, "Cancelled by System:", notify=False)
                else:
                    self._order_changed(other)
            else:
                self._cancel(other, "Cancelled by System:", notify=False)

    # ------------------------------------------------------------------ matching

    def _is_working(self, order: SimOrder) -> bool:
        if order.is_terminal or order.perm_id in self._held or order.remaining <= EPS:
            return False
        if order.perm_id in self._parent_of:
            return order.status == "Submitted"
        return True

    def _match(self, con_ids: set[int]) -> None:
        """Fill what can fill: orders on `con_ids` (resting rules) and `_arrivals` (arrival
        rules), repeated until a pass fills nothing. Fill caps count per call."""
        used: dict[int, float] = {}
        while True:
            progressed = False
            arrivals, self._arrivals = self._arrivals, set()
            candidates = set(arrivals)
            for con_id in con_ids:
                candidates |= self._open_by_con.get(con_id, set())
            for perm in sorted(candidates & self._open):
                order = self.orders[perm]
                arrival = perm in arrivals or perm in self._arrivals  # (newly activated too)
                if not arrival and order.contract.con_id not in con_ids:
                    continue
                self._arrivals.discard(perm)
                if not self._is_working(order):
                    continue
                cap = order.remaining
                if self._fill_cap is not None:
                    cap = min(cap, self._fill_cap - used.get(perm, 0.0))
                if cap <= EPS:
                    continue
                fill = self._fill_price(order, arrival)
                if fill is None:
                    continue
                px, liquidity = fill
                used[perm] = used.get(perm, 0.0) + cap
                self._execute(order, cap, px, liquidity)
                progressed = True
            self._arrivals &= self._open
            if not progressed and not self._arrivals:
                return

    def _fill_price(self, order: SimOrder, arrival: bool) -> tuple[float, int] | None:
        """(price, liquidity) if `order` fills now, else None. Records stop triggers."""
        if order.order_type in trailing.TRAIL_TYPES:
            return trailing.fill_price(self, order, arrival)
        contract = order.contract
        px = self.price(contract.con_id)
        bid, ask = self._bid_ask(contract)
        buy = order.action == "BUY"
        kind = order.order_type
        if kind in ("STP", "STP LMT") and order.perm_id not in self._triggered:
            aux = order.aux_price or 0.0
            if not (px >= aux - EPS if buy else px <= aux + EPS):
                return None
            self._triggered.add(order.perm_id)
            log.info("stop_triggered", perm_id=order.perm_id, aux=aux, price=px)
            if kind == "STP":
                return ((ask if buy else bid), 2) if arrival else (px, 2)
            lmt = order.lmt_price or 0.0
            if not arrival:  # triggered by this move: trades at the price if within the limit
                within = px <= lmt + EPS if buy else px >= lmt - EPS
                return (px, 2) if within else None
            arrival = True  # through on arrival: a marketable limit
        if kind == "MKT":
            return (ask if buy else bid), 2
        if kind == "STP":  # triggered earlier, remainder works as a market order
            return px, 2
        lmt = order.lmt_price or 0.0
        if buy and px <= lmt + EPS:
            return (min(lmt, ask), 2) if arrival else (lmt, 1)
        if not buy and px >= lmt - EPS:
            return (max(lmt, bid), 2) if arrival else (lmt, 1)
        return None

    def _expected_fill_price(self, order: SimOrder, contract: SimContract) -> float:
        bid, ask = self._bid_ask(contract)
        px = self.price(contract.con_id)
        buy = order.action == "BUY"
        if order.order_type == "MKT":
            return ask if buy else bid
        if order.order_type == "STP":
            aux = order.aux_price or px
            through = px >= aux if buy else px <= aux
            return (ask if buy else bid) if through else aux
        lmt = order.lmt_price or px
        if buy:
            return min(lmt, ask) if px <= lmt else lmt
        return max(lmt, bid) if px >= lmt else lmt

    # ------------------------------------------------------------------ fills

    def _execute(self, order: SimOrder, qty: float, price: float, liquidity: int) -> None:
        contract = order.contract
        mult = contract.multiplier
        commission = self.commission_model.execution_commission(
            contract, order.filled, order.avg_fill_price * order.filled * mult, qty, price)
        order.avg_fill_price = ((order.avg_fill_price * order.filled + price * qty)
                                / (order.filled + qty))
        order.filled += qty
        order.last_fill_price = price
        sign = 1.0 if order.action == "BUY" else -1.0
        pos = self._positions.get(contract.con_id)
        if pos is None:
            pos = self._positions[contract.con_id] = SimPosition(contract=contract)
        realized, cash_delta = _apply_fill(pos, sign, qty, price, commission, contract)
        self.account.cash += cash_delta
        self.account.commissions_today += commission
        if realized is not None:
            self.account.realized_pnl_today += realized
            pos.realized_pnl += realized
        execution = SimExecution(
            exec_id=self._new_exec_id(order), time=self.clock(), client_id=order.client_id,
            order_id=order.order_id, perm_id=order.perm_id, contract=contract,
            side="BOT" if sign > 0 else "SLD", shares=qty, price=price, cum_qty=order.filled,
            avg_price=order.avg_fill_price, order_ref=order.order_ref, account=order.account,
            exchange=_exec_exchange(contract), commission=commission, realized_pnl=realized,
            liquidity=liquidity,
        )
        self.executions.append(execution)
        parent_perm = self._parent_of.get(order.perm_id)
        parent = self.orders[parent_perm] if parent_perm is not None else None
        if parent is not None:
            self._update_child(order, parent)  # Filled, or still working for the parent's fills
        elif order.remaining <= EPS:
            self._finish(order, "Filled", f"Filled Size: {_fmt_qty(order.filled)}")
        else:
            order.status = "Submitted"
        log.info("order_fill", client_id=order.client_id, order_id=order.order_id,
                 perm_id=order.perm_id, exec_id=execution.exec_id, qty=qty, price=price,
                 commission=commission, realized_pnl=realized, position=pos.quantity)
        self._order_changed(order)
        self._emit(ExecutionAdded(execution))
        self._emit(PositionChanged(copy.copy(pos)))
        self._emit(AccountChanged())
        if parent is not None:
            self._sync_children(parent)  # siblings: reduced, or cancelled once nothing is left
        else:
            self._oca_standalone(order, qty)
        oca.across(self, order, qty)  # named groups spanning brackets (sim/oca.py)
        self._sync_children(order)

    def _finish(self, order: SimOrder, status: str, text: str) -> None:
        order.status = status  # type: ignore[assignment]
        order.why_held = ""
        order.completed_at = self.clock()
        order.completed_status = text
        self._held.discard(order.perm_id)
        self._triggered.discard(order.perm_id)
        self._arrivals.discard(order.perm_id)
        self._open.discard(order.perm_id)
        self._open_by_con.get(order.contract.con_id, set()).discard(order.perm_id)

    # ------------------------------------------------------------------ cancelling

    def cancel(self, client_id: int, order_id: int) -> None:
        perm = self.by_client.get((client_id, order_id))
        if perm is None:
            raise OrderRejected(
                10147, f"OrderId {order_id} that needs to be cancelled is not found.")
        order = self.orders[perm]
        if order.is_terminal:
            raise OrderRejected(
                161,
                f"Cancel attempted when order is not in a cancellable state.  Order permId ={perm}")
        with self._batch():
            log.info("order_cancel", client_id=client_id, order_id=order_id, perm_id=perm)
            self._cancel(order, "Cancelled by Trader", notify=True)

    def global_cancel(self) -> None:
        with self._batch():
            for perm in sorted(self._open):
                self._cancel(self.orders[perm], "Cancelled by Trader", notify=True)

    def _cancel(self, order: SimOrder, reason: str, notify: bool) -> None:
        if order.is_terminal:
            return
        self._finish(order, "Cancelled", reason)
        self._order_changed(order)
        if notify:
            self._emit(OrderError(order.client_id, order.order_id, 202, MSG_CANCELED))
        self._sync_children(order, notify=notify, reason=reason)

    # ------------------------------------------------------------------ what-if

    def what_if(self, order: SimOrder) -> WhatIfResult:
        contract = self._check_order(order)
        return self._project(contract, order.action, order.total_quantity,
                             self._expected_fill_price(order, contract))

    def _project(self, contract: SimContract, action: str, qty: float,
                 fill_px: float) -> WhatIfResult:
        sign = 1.0 if action == "BUY" else -1.0
        before = self._margins()
        total_before = before[0] + before[1]
        elv_before = self._net_liquidation()
        commission = self.commission_model.order_commission(
            contract, qty, qty * fill_px * contract.multiplier)
        slippage = sign * (self.price(contract.con_id) - fill_px) * qty * contract.multiplier
        after = self._margins(extra=(contract, sign * qty))
        total_after = after[0] + after[1]
        elv_after = elv_before - commission + slippage
        return WhatIfResult(
            init_margin_before=total_before.initial,
            maint_margin_before=total_before.maintenance,
            equity_with_loan_before=elv_before,
            init_margin_change=total_after.initial - total_before.initial,
            maint_margin_change=total_after.maintenance - total_before.maintenance,
            equity_with_loan_change=elv_after - elv_before,
            init_margin_after=total_after.initial,
            maint_margin_after=total_after.maintenance,
            equity_with_loan_after=elv_after,
            commission=commission,
            currency=contract.currency,
        )

    # ------------------------------------------------------------------ accounting reads

    def _margins(self, extra: tuple[SimContract, float] | None = None
                 ) -> tuple[MarginRequirement, MarginRequirement]:
        """(securities, commodities) requirements, optionally with `extra` qty added."""
        quantities = {cid: (p.contract, p.quantity) for cid, p in self._positions.items()}
        if extra is not None:
            c, q = extra
            quantities[c.con_id] = (c, quantities.get(c.con_id, (c, 0.0))[1] + q)
        sec, com = ZERO_MARGIN, ZERO_MARGIN
        for contract, qty in quantities.values():
            if abs(qty) <= EPS:
                continue
            has_under = contract.sec_type == "OPT" and contract.under_con_id in self.universe
            under = self.price(contract.under_con_id) if has_under else None
            req = self.margin_model.position(contract, qty, self.price(contract.con_id), under)
            if contract.sec_type == "FUT":
                com = com + req
            else:
                sec = sec + req
        return sec, com

    def _values(self) -> dict[str, float]:
        stock_mv = option_mv = fut_pnl = gross = upnl = fut_upnl = 0.0
        for pos in self._positions.values():
            if abs(pos.quantity) <= EPS:
                continue
            c = pos.contract
            px = self.price(c.con_id)
            mv = pos.quantity * px * c.multiplier
            upnl += mv - pos.avg_cost * pos.quantity
            if c.sec_type == "STK":
                stock_mv += mv
                gross += abs(mv)
            elif c.sec_type == "OPT":
                option_mv += mv
                gross += abs(mv)
            else:
                fut_pnl += (px - pos.avg_price) * c.multiplier * pos.quantity
                fut_upnl += mv - pos.avg_cost * pos.quantity
        cash = self.account.cash
        netliq = cash + stock_mv + option_mv + fut_pnl
        sec, com = self._margins()
        return {
            "cash": cash, "stock_mv": stock_mv, "option_mv": option_mv, "fut_pnl": fut_pnl,
            "fut_upnl": fut_upnl, "gross": gross, "upnl": upnl, "netliq": netliq,
            "netliq_c": fut_pnl, "netliq_s": netliq - fut_pnl,
            "init_s": sec.initial, "maint_s": sec.maintenance,
            "init_c": com.initial, "maint_c": com.maintenance,
        }

    def _net_liquidation(self) -> float:
        return self._values()["netliq"]

    def account_value(self, tag: str, currency: str = "USD") -> float:
        """Numeric value of one account tag (e.g. "NetLiquidation", "AvailableFunds-S")."""
        for t, value, ccy in self.account_values():
            if t == tag and (ccy in (currency, "") or currency == ""):
                return float(value)
        raise KeyError(tag)

    def account_values(self) -> list[tuple[str, str, str]]:
        v = self._values()
        acct = self.account
        netliq = v["netliq"]
        init = v["init_s"] + v["init_c"]
        maint = v["maint_s"] + v["maint_c"]
        seg = {
            "NetLiquidation": (netliq, v["netliq_c"], v["netliq_s"]),
            "EquityWithLoanValue": (netliq, v["netliq_c"], v["netliq_s"]),
            "InitMarginReq": (init, v["init_c"], v["init_s"]),
            "MaintMarginReq": (maint, v["maint_c"], v["maint_s"]),
            "AvailableFunds": (netliq - init, v["netliq_c"] - v["init_c"],
                               v["netliq_s"] - v["init_s"]),
            "ExcessLiquidity": (netliq - maint, v["netliq_c"] - v["maint_c"],
                                v["netliq_s"] - v["maint_s"]),
            "TotalCashValue": (v["cash"], 0.0, v["cash"]),
        }
        for name in ("InitMarginReq", "MaintMarginReq", "AvailableFunds", "ExcessLiquidity"):
            seg[f"Full{name}"] = seg[name]
            seg[f"LookAhead{name}"] = seg[name]
        available = netliq - init
        money: dict[str, float] = {
            "BuyingPower": max(available, 0.0) * self.margin_model.buying_power_multiplier,
            "CashBalance": v["cash"], "TotalCashBalance": v["cash"],
            "GrossPositionValue": v["gross"], "GrossPositionValue-S": v["gross"],
            "FuturesPNL": v["fut_upnl"], "NetLiquidationByCurrency": netliq,
            "OptionMarketValue": v["option_mv"], "StockMarketValue": v["stock_mv"],
            "PreviousDayEquityWithLoanValue": acct.start_of_day_net_liq,
            "PreviousDayEquityWithLoanValue-S": acct.start_of_day_net_liq,
            "RealizedPnL": acct.realized_pnl_today, "UnrealizedPnL": v["upnl"],
            "RegTEquity": v["netliq_s"], "RegTEquity-S": v["netliq_s"],
            "RegTMargin": v["init_s"], "RegTMargin-S": v["init_s"],
            "SMA": max(v["netliq_s"] - v["init_s"], 0.0),
            "SMA-S": max(v["netliq_s"] - v["init_s"], 0.0),
            "ExchangeRate": 1.0,
        }
        for name, (total, c_part, s_part) in seg.items():
            money[name], money[f"{name}-C"], money[f"{name}-S"] = total, c_part, s_part
        money.update({k: float(val) for k, val in acct.extra.items()})
        cushion = (netliq - maint) / netliq if netliq else 0.0
        text: dict[str, str] = {
            "AccountCode": acct.account_id, "AccountOrGroup": acct.account_id,
            "AccountReady": "true", "AccountType": "INDIVIDUAL",
            "ColumnPrio-C": "2", "ColumnPrio-S": "1",
            "Cushion": "1" if abs(cushion - 1.0) < 1e-12 else f"{cushion:.6f}",
            "DayTradesRemaining": "-1", "DayTradesRemainingT+1": "-1",
            "DayTradesRemainingT+2": "-1", "DayTradesRemainingT+3": "-1",
            "DayTradesRemainingT+4": "-1",
            "DayTradingStatus-S": f"::false:{netliq:.2f}:",
            "Leverage-S": f"{(v['gross'] / netliq if netliq else 0.0):.2f}",
            "LookAheadNextChange": "0", "NLVAndMarginInReview": "false",
            "SegmentTitle-C": "US Commodities", "SegmentTitle-S": "US Securities",
            "TradingType-S": "STKNOPT", "WhatIfPMEnabled": "true",
        }
        base = acct.base_currency
        out: list[tuple[str, str, str]] = []
        for tag, kind in _ACCOUNT_TAGS:
            if kind == "":
                out.append((tag, text[tag], ""))
                continue
            currencies = ("BASE", base) if kind == "B" else (base,)
            for ccy in currencies:
                if tag in ("Currency", "RealCurrency"):
                    value = ccy
                elif tag in text:
                    value = text[tag]
                else:
                    value = f"{money.get(tag, 0.0):.2f}"
                out.append((tag, value, ccy))
        return out

    def positions(self) -> list[SimPosition]:
        return list(self._positions.values())

    def position(self, con_id: int) -> SimPosition | None:
        """(extension) the position in one contract, or None."""
        return self._positions.get(con_id)

    def portfolio(self) -> list[tuple[SimPosition, float, float, float, float]]:
        out = []
        for pos in self._positions.values():
            c = pos.contract
            px = self.price(c.con_id)
            mv = pos.quantity * px * c.multiplier
            upnl = mv - pos.avg_cost * pos.quantity
            out.append((pos, px, mv, upnl, pos.realized_pnl))
        return out

    def pnl(self) -> tuple[float, float, float]:
        v = self._values()
        return (v["netliq"] - self.account.start_of_day_net_liq, v["upnl"],
                self.account.realized_pnl_today)

    def pnl_single(self, con_id: int) -> tuple[int, float, float, float, float]:
        pos = self._positions.get(con_id)
        if pos is None:
            return (0, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE)
        c = pos.contract
        mv = pos.quantity * self.price(con_id) * c.multiplier
        upnl = mv - pos.avg_cost * pos.quantity
        daily = pos.realized_pnl + upnl - self._sod_unrealized.get(con_id, 0.0)
        return (int(round(pos.quantity)), daily, upnl, pos.realized_pnl, mv)

    def orders_for(self, client_id: int) -> list[SimOrder]:
        return [self.orders[p] for p in sorted(self._open)
                if client_id == 0 or self.orders[p].client_id == client_id]

    def order(self, client_id: int, order_id: int) -> SimOrder | None:
        """(extension) the order a client placed under `order_id`, any status."""
        perm = self.by_client.get((client_id, order_id))
        return self.orders.get(perm) if perm is not None else None

    def completed_orders(self) -> list[SimOrder]:
        done = [o for o in self.orders.values() if o.is_terminal]
        return sorted(done, key=lambda o: (o.completed_at or 0.0, o.perm_id))

    def executions_since(self, client_id: int | None = None, since: float | None = None,
                         symbol: str = "", sec_type: str = "", exchange: str = "",
                         side: str = "", account: str = "") -> list[SimExecution]:
        side_code = {"BUY": "BOT", "SELL": "SLD"}.get(side.upper(), side.upper()) if side else ""
        out = []
        for e in self.executions:
            if client_id and e.client_id != client_id:
                continue
            if since is not None and e.time < since:
                continue
            if symbol and e.contract.symbol != symbol.upper():
                continue
            if sec_type and e.contract.sec_type != sec_type.upper():
                continue
            if exchange and exchange.upper() not in (e.exchange, e.contract.exchange):
                continue
            if side_code and e.side != side_code:
                continue
            if account and e.account != account:
                continue
            out.append(e)
        return out

    def max_order_id(self, client_id: int) -> int:
        """(extension) highest order id the client used (0 if none): nextValidId is this + 1."""
        return self._max_order_id.get(client_id, 0)

    # ------------------------------------------------------------------ day, reset, persistence

    def reset(self) -> None:
        self._pending.clear()
        self._init_state()

    def roll_day(self) -> None:
        with self._batch():
            for order in [self.orders[p] for p in sorted(self._open)]:
                if not order.is_terminal and order.tif.upper() != "GTC":
                    self._cancel(order, "Cancelled by System:", notify=False)
            v = self._values()
            self.account.start_of_day_net_liq = v["netliq"]
            self.account.realized_pnl_today = 0.0
            self.account.commissions_today = 0.0
            self._positions = {cid: p for cid, p in self._positions.items()
                               if abs(p.quantity) > EPS}
            self._sod_unrealized = {}
            for cid, pos in self._positions.items():
                pos.realized_pnl = 0.0
                mv = pos.quantity * self.price(cid) * pos.contract.multiplier
                self._sod_unrealized[cid] = mv - pos.avg_cost * pos.quantity
            for perm in [p for p, o in self.orders.items() if o.is_terminal]:
                order = self.orders.pop(perm)
                self.by_client.pop((order.client_id, order.order_id), None)
                self._parent_of.pop(perm, None)
                self._child_target.pop(perm, None)
            self.executions.clear()
            self._derive_indexes()
            self._emit(AccountChanged())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "account": dataclasses.asdict(self.account),
            "initial_account": dataclasses.asdict(self._initial_account),
            "orders": [_order_to_dict(self.orders[p]) for p in sorted(self.orders)],
            "by_client": [[cid, oid, perm] for (cid, oid), perm in sorted(self.by_client.items())],
            "max_order_id": {str(k): v for k, v in sorted(self._max_order_id.items())},
            "next_perm": self._next_perm,
            "positions": [{**dataclasses.asdict(p), "contract": dataclasses.asdict(p.contract)}
                          for p in self._positions.values()],
            "executions": [dataclasses.asdict(e) for e in self.executions],
            "prices": {str(k): v for k, v in sorted(self.prices.items())},
            "held": sorted(self._held),
            "triggered": sorted(self._triggered),
            "parent_of": {str(k): v for k, v in sorted(self._parent_of.items())},
            "child_target": {str(k): v for k, v in sorted(self._child_target.items())},
            "sod_unrealized": {str(k): v for k, v in sorted(self._sod_unrealized.items())},
            "fill_cap": self._fill_cap,
            "exec_base": self._exec_base,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], universe: Universe, clock: Any = time.time,
                  margin_model: MarginModel | None = None,
                  commission_model: CommissionModel | None = None) -> Brokerage:
        if d.get("version") != 1:
            raise ValueError(f"unsupported brokerage state version {d.get('version')!r}")
        eng = cls(universe, _account_from_dict(d["initial_account"]), clock, margin_model,
                  commission_model)
        eng.account = _account_from_dict(d["account"])
        for od in d["orders"]:
            order = SimOrder(**{**od, "contract": SimContract(**od["contract"])})
            eng.orders[order.perm_id] = order
        eng.by_client = {(cid, oid): perm for cid, oid, perm in d["by_client"]}
        eng._max_order_id = {int(k): v for k, v in d["max_order_id"].items()}
        eng._next_perm = d["next_perm"]
        for pd in d["positions"]:
            pos = SimPosition(**{**pd, "contract": SimContract(**pd["contract"])})
            eng._positions[pos.contract.con_id] = pos
        eng.executions = [SimExecution(**{**ed, "contract": SimContract(**ed["contract"])})
                          for ed in d["executions"]]
        eng.prices = {int(k): v for k, v in d["prices"].items()}
        eng._held = set(d["held"])
        eng._triggered = set(d["triggered"])
        eng._parent_of = {int(k): v for k, v in d["parent_of"].items()}
        eng._child_target = {int(k): v for k, v in d["child_target"].items()}
        eng._sod_unrealized = {int(k): v for k, v in d["sod_unrealized"].items()}
        eng._fill_cap = d["fill_cap"]
        eng._exec_base = d["exec_base"]
        eng._derive_indexes()
        return eng


# ---------------------------------------------------------------------- helpers


def _apply_fill(pos: SimPosition, sign: float, qty: float, price: float, commission: float,
                contract: SimContract) -> tuple[float | None, float]:
    """Update `pos` for a fill of `qty` (sign +1 buy, -1 sell). Returns (realized or None,
    cash delta). avg_cost includes multiplier and commission as IB reports it; avg_price is the
    plain average fill price (used to mark futures)."""
    mult = contract.multiplier
    old = pos.quantity
    close_qty = min(qty, abs(old)) if old * sign < 0 else 0.0
    open_qty = qty - close_qty
    comm_close = commission * close_qty / qty
    comm_open = commission - comm_close
    realized: float | None = None
    cash = 0.0
    if close_qty > 0:
        direction = 1.0 if old > 0 else -1.0      # closing a long sells, a short buys back
        realized = round(direction * (price * mult - pos.avg_cost) * close_qty - comm_close, 8)
        price_pnl = direction * (price - pos.avg_price) * mult * close_qty
        pos.quantity = old + sign * close_qty
        if abs(pos.quantity) <= EPS:
            pos.quantity, pos.avg_cost, pos.avg_price = 0.0, 0.0, 0.0
        if contract.sec_type == "FUT":
            cash += price_pnl - comm_close
    if open_qty > 0:
        held = abs(pos.quantity)
        unit_cost = price * mult + sign * comm_open / open_qty
        pos.avg_cost = (pos.avg_cost * held + unit_cost * open_qty) / (held + open_qty)
        pos.avg_price = (pos.avg_price * held + price * open_qty) / (held + open_qty)
        pos.quantity += sign * open_qty
        if contract.sec_type == "FUT":
            cash -= comm_open
    if contract.sec_type != "FUT":
        cash = -sign * price * mult * qty - commission
    return realized, cash


def _exec_exchange(contract: SimContract) -> str:
    if contract.sec_type == "STK":
        return contract.primary_exchange or contract.exchange
    if contract.sec_type == "OPT":
        return "CBOE"
    return contract.exchange


def _copy_account(account: AccountState) -> AccountState:
    return dataclasses.replace(account, extra=dict(account.extra))


def _account_from_dict(d: dict[str, Any]) -> AccountState:
    return AccountState(**{**d, "extra": dict(d.get("extra", {}))})


def _order_to_dict(order: SimOrder) -> dict[str, Any]:
    d = dataclasses.asdict(order)
    d["contract"] = dataclasses.asdict(order.contract)
    return d
