"""The ONE IB connection. The only module that imports the IB client library.

`IBBroker` owns one ib_async `IB` (ib_insync 0.9.86 works as a drop-in), keeps it connected
(jittered exponential backoff), classifies IB's error codes, turns IB objects into the bus
models of bus/messages.py at this boundary, and offers the rest of the daemon a small port:
resolve a contract, place / cancel a bracket, what-if, read the converted account state.

Connection lifecycle (published as BrokerConnection on the bus):
  DISCONNECTED -> CONNECTING -> CONNECTED (socket up, syncing) -> READY (synced + reconciled)
  READY -> CONNECTIVITY_LOST (1100) -> READY (1101/1102 + fresh sync) ; any -> DISCONNECTED

State kept here (one line each):
  _contracts:     proposal contract key -> ResolvedContract   (qualified once, cached; a combo's
                  key holds its legs, each leg is cached under its single-leg key too)
  _ib_contracts:  conId -> ib Contract                         (for orders and market data; a
                  combo's BAG under the daemon's combo key, bus/combos.py combo_con_id)
  _tickers:       conId -> ib Ticker                           (streaming quotes; at most the
                  line budget's, adapters/md_lines.py: pinned or least recently used kept)
  _pnl_single:    conId -> ib PnLSingle                        (one reqPnLSingle per position)
  _pnl_waiting:   conIds whose reqPnLSingle waits its pacer turn (one task each: a DATA turn
                  waits behind every ORDER one, and a saturated pacer had one task per fill pile up)
  _pending_execs: execId -> (BrokerExecution, deadline handle) (waiting for commissionReport)
  _seen_execs:    execIds already published, the newest SEEN_EXECS_MAX (dedupes a live repeat;
                  a reqExecutions sync, which reports the day's, also skips the journal's
                  exec_ids, looked up then: adapters/ib_execs.py; the journal keeps every fill
                  unique by exec_id)
  _settled:       orderIds a placement check found dead or absent at IB (never cancelled again;
                  the newest SETTLED_MAX, adapters/ib_truth.py; an unknown answer adds none)
  _absent:        orderIds a placement check found IB does not have (lost on the way; as _settled)
  queries:        reqOpenOrders / reqCompletedOrders one at a time (ib_truth.py OrderQueries)
  cancels:        cancels IB has not confirmed yet, checked and re-sent (ib_truth.py CancelWatch)
  retention:      the client library's finished trades dropped after a grace period, and the
                  bounded tombstones of their orderRefs (adapters/ib_prune.py); _outbox coalesces
                  an order's queued status updates (adapters/ib_outbox.py)

Every message to IB goes through `pacer` (adapters/pacer.py): the adapter awaits its turn
right before each request, and a hook on the client's sendMsg counts what really leaves (the
library's own 45/s throttle is switched off: one pacer, one count).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Container
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, TypeVar

try:  # ib_async is the chosen library; ib_insync 0.9.86 has the same API
    import ib_async as ibl

    IB_LIBRARY = "ib_async"
except ImportError:  # pragma: no cover - exercised in the ib_insync virtualenv
    import ib_insync as ibl  # type: ignore[no-redef]

    IB_LIBRARY = "ib_insync"

from bracketgate.adapters import ib_repr
from bracketgate.bus.messages import (
    Alert,
    ApprovedBracket,
    BracketOrderIds,
    BrokerConnection,
    BrokerDataChanged,
    BrokerExecution,
    BrokerOrderUpdate,
    ConnectionState,
    OrderType,
    PnL,
    Position,
    Quote,
    ResolvedContract,
    Right,
    SecType,
    Side,
    TradeProposal,
    WorkingOrder,
)
from bracketgate.adapters.md_lines import DEFAULT_LINES, MAX_TICKERS, LineBudget
from bracketgate.adapters.ib_execs import (
    COMMISSION_WAIT_S,
    Known,
    only_new,
    report_of,
    reports_for,
    reports_watched,
)
from bracketgate.adapters.ib_outbox import Outbox
from bracketgate.adapters.ib_quotes import QuoteLines
from bracketgate.adapters.ib_refs import RefIndex
from bracketgate.adapters.ib_startup import (
    StartupOrders,
    connect_kwargs,
    followed_updates,
    without_startup_fetches,
)
from bracketgate.adapters.ib_truth import (
    SETTLED_MAX,
    BoundedSet,
    CancelWatch,
    OrderQueries,
    placement_truth,
)
from bracketgate.adapters.ib_working import WorkingOrders
from bracketgate.adapters.ib_prune import (
    DEFAULT_RETENTION_S,
    TradeRetention,
    pruned_bracket,
    pruned_updates,
)
from bracketgate.adapters.pacer import DEFAULT_RATE, Pacer, Priority
from bracketgate.bus.combos import combo_con_id, leg_query
from bracketgate.bus.errors import BrokerConnectError, BrokerError, BrokerNotConnected, BrokerTimeout, PlacementError
from bracketgate.core import stamps
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.crashpoints import crash_point
from bracketgate.core.logs import get_logger

log = get_logger("adapters.ib")

UNSET_DOUBLE = 1.7976931348623157e308
LIVE_PORTS = frozenset({4001, 7496})


# --------------------------------------------------------------------------- errors


class DuplicateOrderRefError(PlacementError):
    """IB already has orders with this orderRef: never send a second bracket for a proposal."""

    def __init__(self, order_ref: str, order_ids: BracketOrderIds | None) -> None:
        super().__init__(f"IB already has orders with orderRef {order_ref!r}", code="DUPLICATE_ORDER_REF")
        self.order_ref = order_ref
        self.order_ids = order_ids


class PlacementUncertain(PlacementError):
    """The connection dropped after the bracket was written and before IB acknowledged it:
    IB may have all, some (untransmitted: the transmit flag rides on the last leg) or none of
    the legs. Only the next connect's reconcile can tell; never report such a bracket placed."""

    def __init__(self, order_ref: str, message: str) -> None:
        super().__init__(message, code="PLACEMENT_UNCERTAIN")
        self.order_ref = order_ref


# --------------------------------------------------------------------------- error codes


class ErrorClass(StrEnum):
    INFO = "info"                  # farm status and other notices
    CONNECTIVITY = "connectivity"  # 1100/1101/1102/1300
    ORDER = "order"                # an order was rejected, cancelled or warned about
    REQUEST = "request"            # a request (contract details, what-if, market data) failed
    CONNECTION = "connection"      # 326, 502, 504, 507...
    WARNING = "warning"
    ERROR = "error"


INFO_CODES = frozenset({2104, 2106, 2107, 2108, 2119, 2158, 2100, 2150, 2169})
CONNECTIVITY_CODES = frozenset({1100, 1101, 1102, 1300})
CONNECTION_CODES = frozenset({326, 502, 504, 507, 509, 1300})
ORDER_CODES = frozenset({
    103, 104, 105, 106, 107, 109, 110, 111, 113, 116, 117, 118, 119, 120, 121, 122, 123, 124,
    125, 126, 129, 131, 132, 133, 134, 135, 136, 137, 140, 141, 146, 147, 148, 151, 152, 153,
    154, 155, 156, 157, 158, 159, 160, 161, 163, 164, 166, 167, 168, 200, 201, 202, 203, 313,
    314, 315, 321, 325, 328, 329, 383, 387, 388, 399, 404, 434, 435, 436, 437, 10147, 10148,
    10149, 10187, 10289, 10290,
})


def classify_error(code: int) -> ErrorClass:
    if code in CONNECTIVITY_CODES:
        return ErrorClass.CONNECTIVITY
    if code in CONNECTION_CODES:
        return ErrorClass.CONNECTION
    if code in INFO_CODES:
        return ErrorClass.INFO
    if 2100 <= code < 2200:
        return ErrorClass.WARNING
    if code in ORDER_CODES:
        return ErrorClass.ORDER
    if code in (162, 165, 300, 309, 310, 322, 354, 10090, 10167, 10168, 10197):
        return ErrorClass.REQUEST
    return ErrorClass.ERROR


# --------------------------------------------------------------------------- conversions


def ib_number(value: Any) -> float | None:
    """An IB double as float, or None for nan / IB's unset value / not a number."""
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(f) or math.isinf(f) or f >= UNSET_DOUBLE * 0.5:
        return None
    return f


def _side(action: str) -> Side | None:
    a = (action or "").upper()
    if a in ("BUY", "BOT"):
        return Side.BUY
    if a in ("SELL", "SLD", "SSHORT"):
        return Side.SELL
    return None


def _multiplier(contract: Any) -> float:
    m = ib_number(getattr(contract, "multiplier", "") or None)
    return m if m else 1.0


def contract_key(p: TradeProposal) -> tuple:
    legs = getattr(p, "legs", None)   # a combo's legs; a leg's own query (LegQuery) has none
    key = (p.symbol, p.sec_type, p.exchange, p.currency, p.expiry, p.strike, p.right)
    return key if legs is None else (*key, tuple((leg.identity(), leg.ratio, leg.action)
                                                 for leg in legs))


def _bag(p: TradeProposal, legs: list[ResolvedContract]) -> Any:
    """IB's combo contract: secType BAG on the underlying, one ComboLeg (conId, ratio, action,
    exchange) per leg, routed SMART."""
    return ibl.Contract(
        symbol=p.symbol, secType="BAG", currency=p.currency, exchange="SMART",
        comboLegs=[ibl.ComboLeg(conId=r.con_id, ratio=leg.ratio, action=leg.action,
                                exchange=leg.exchange)
                   for leg, r in zip(p.legs or [], legs)])


def _to_ib_contract(p: TradeProposal) -> Any:
    if p.sec_type is SecType.STK:
        return ibl.Stock(p.symbol, p.exchange, p.currency)
    if p.sec_type is SecType.OPT:
        return ibl.Option(p.symbol, p.expiry or "", p.strike or 0.0, p.right.value if p.right else "",
                          p.exchange, currency=p.currency)
    # futures: SMART is not a futures venue; an empty exchange lets IB match any
    exchange = "" if p.exchange == "SMART" else p.exchange
    expiry = "" if p.expiry in (None, "front") else p.expiry
    return ibl.Future(p.symbol, expiry, exchange, currency=p.currency)


def _resolved(c: Any, min_tick: float) -> ResolvedContract:
    right = getattr(c, "right", "") or None
    return ResolvedContract(
        con_id=c.conId, symbol=c.symbol, sec_type=SecType(c.secType), exchange=c.exchange or "",
        currency=c.currency or "USD", multiplier=_multiplier(c), min_tick=min_tick or 0.01,
        expiry=c.lastTradeDateOrContractMonth or None, strike=c.strike or None,
        right=Right(right) if right in ("C", "P") else None,
        local_symbol=c.localSymbol or None, trading_class=c.tradingClass or None,
    )


def order_update_from_trade(trade: Any, ts: datetime, code: int | None = None,
                            message: str | None = None) -> BrokerOrderUpdate:
    o, s, c = trade.order, trade.orderStatus, trade.contract
    return BrokerOrderUpdate(
        order_id=o.orderId, perm_id=o.permId or None, client_id=o.clientId, parent_id=o.parentId or None,
        order_ref=o.orderRef or "", symbol=c.symbol or "", side=_side(o.action),
        order_type=o.orderType or "", quantity=float(o.totalQuantity or 0),
        limit_price=ib_number(o.lmtPrice), stop_price=ib_number(o.auxPrice),
        # completed orders (reqCompletedOrders) carry no orderStatus: their fill is on the order
        status=s.status or "", filled=float(s.filled or ib_number(getattr(o, "filledQuantity", None)) or 0),
        remaining=float(s.remaining or 0),
        avg_fill_price=ib_number(s.avgFillPrice) or None, code=code, message=message, ts=ts,
    )


def oca_group(order_ref: str) -> str:
    """The named OCA group of a bracket's children (take-profit, stop, a replacing stop)."""
    return f"bg-{order_ref}"


def _describe(legs: dict[str, Any]) -> str:
    return ", ".join(f"{name} {t.order.orderId} {t.orderStatus.status or '?'}" for name, t in legs.items())


# --------------------------------------------------------------------------- the broker


Publish = Callable[[Any], Awaitable[None]]
ReconcileHook = Callable[[], Awaitable[None]]


SEEN_EXECS_MAX = 10_000     # execIds published this run, the newest (a live repeat comes
                            # within seconds; a reqExecutions sync also looks up the journal)
ORDER_ERRORS_MAX = 4096     # orderIds whose last error is kept (read when a placement fails)
DIRTY_HOLD_S = 0.05         # longest a data-changed notice waits for a placement's acks
WHATIF_SLOW_S = 1.0         # a what-if slower than this (turn + answer) is logged, both apart

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Bounded(dict[_K, _V]):
    """A dict that forgets its oldest insertions past `cap` (insertion order)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def __setitem__(self, key: _K, value: _V) -> None:
        super().__setitem__(key, value)
        if len(self) > self.cap:
            del self[next(iter(self))]


def account_guard(configured: str, managed: list[str], *, paper: bool) -> str:
    """The account to trade, checked against what this IB login manages (`managedAccounts`).

    IB_ACCOUNT (`configured`), when set, must be one of them; in paper mode (paper ports, or the
    embedded TWS) the account must be a paper one: IB paper account ids start with "D". Else
    BrokerConnectError code ACCOUNT_GUARD: the daemon exits 3 with that one line, trading nothing."""
    account = configured or (managed[0] if managed else "")
    if configured and configured not in managed:
        raise BrokerConnectError(
            f"IB_ACCOUNT={configured} is not among the accounts this IB login manages "
            f"({', '.join(managed) or 'none'}): refusing to trade", code="ACCOUNT_GUARD")
    if paper and account and not account.startswith("D"):
        raise BrokerConnectError(
            f"paper mode, but IB account {account} is not a paper account (IB paper accounts "
            "start with D): refusing to trade; use a paper login, or a live port with IB_LIVE=true",
            code="ACCOUNT_GUARD")
    return account


class IBBroker(QuoteLines):
    """The one IB connection, as an async context manager.

    `publish` is the bus's publish (agents meet the broker's events on the bus). Events are
    queued by IB's synchronous callbacks and published in order by one pump task.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: int,
        account: str = "",
        publish: Publish,
        clock: Clock = SYSTEM_CLOCK,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        ack_timeout: float = 3.0,
        heartbeat_s: float = 2.0,
        reconnect: bool = True,
        backoff_base: float = 0.1,
        backoff_cap: float = 0.5,
        live_ok: bool = False,
        max_msgs_per_s: float = DEFAULT_RATE,
        max_market_data_lines: int = DEFAULT_LINES,
        trade_retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        if port in LIVE_PORTS and not live_ok:
            raise BrokerConnectError(f"port {port} is a LIVE trading port; refusing without explicit live opt-in")
        self.host, self.port, self.client_id, self.account = host, port, client_id, account
        self.live_ok = live_ok
        self._publish = publish
        self._clock = clock
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.ack_timeout = ack_timeout
        self.heartbeat_s = heartbeat_s
        self.reconnect = reconnect
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap

        self.ib = ibl.IB()
        self.ib.RaiseRequestErrors = True
        self.pacer = Pacer(max_msgs_per_s)
        self._count_sends()
        self.state = ConnectionState.DISCONNECTED
        self.reconciled = False
        self.reconnects = 0                       # reconnects that succeeded (metrics, status)
        self.heartbeat_rtt_s: float | None = None  # the last heartbeat's round trip
        self._closing = False
        self._outbox = Outbox()   # an order's queued status updates coalesced (ib_outbox.py)
        self.retention = TradeRetention(trade_retention_s)   # finished trades dropped (ib_prune.py)
        self.refs = RefIndex(self.ib.wrapper)   # orderRef -> the library's trades (ib_refs.py)
        self.startup = StartupOrders()   # the completed orders a connect reads (ib_startup.py)
        self._working = WorkingOrders()          # the snapshot's models, per change (ib_working.py)
        self._prune_task: asyncio.Task | None = None
        self._pump_task: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._heartbeat_task: asyncio.Task | None = None
        self._disconnected = asyncio.Event()
        self._ready = asyncio.Event()
        self._pnl_event = asyncio.Event()   # set by the first known reqPnL value
        self._refused = asyncio.Event()     # IB refused our client id (326) while connecting
        self._reconcile_hooks: list[ReconcileHook] = []
        self._connect_errors: list[tuple[int, str]] = []
        self._order_errors: _Bounded[int, tuple[int, str]] = _Bounded(ORDER_ERRORS_MAX)  # orderId -> last (code, message)
        self._ack_waiters: set[Callable[[], None]] = set()      # placements waiting for IB's ack
        self._max_order_id = 0
        self._settled = BoundedSet(SETTLED_MAX)
        self._absent = BoundedSet(SETTLED_MAX)
        self.queries = OrderQueries(self)   # open / completed orders asked one at a time
        self.cancels = CancelWatch(self)    # unconfirmed cancels checked and re-sent
        self._tasks: set[asyncio.Task[Any]] = set()

        self._contracts: dict[tuple, ResolvedContract] = {}
        self._ib_contracts: dict[int, Any] = {}
        self._tickers: dict[int, Any] = {}
        self._quote_waiters: dict[int, asyncio.Event] = {}
        self.lines = LineBudget(max_market_data_lines)   # which conIds may stream (md_lines.py)
        self._subscribing: set[int] = set()              # conIds whose reqMktData waits its turn
        self._pnl: Any = None
        self._pnl_single: dict[int, Any] = {}
        self._pnl_waiting: set[int] = set()
        self._pending_execs: dict[str, tuple[BrokerExecution, asyncio.TimerHandle]] = {}
        self._seen_execs: _Bounded[str, bool] = _Bounded(SEEN_EXECS_MAX)
        # the journal's exec_ids, looked up at each executions sync (core/app.py sets it)
        self.journaled_execs: Callable[[], Awaitable[Container[str]]] | None = None
        # freshness: when each part was last updated or confirmed current by a heartbeat
        self._ts: dict[str, datetime | None] = {"account": None, "positions": None, "pnl": None}
        self._synced: set[str] = set()
        self._dirty: set[str] = set()
        self._dirty_hold: asyncio.TimerHandle | None = None   # notices held for acks
        ib_repr.install(ibl)   # the library's log f-strings format each Trade: a short str

        ib = self.ib
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected
        ib.orderStatusEvent += self._on_order_status
        ib.openOrderEvent += self._on_order_status
        ib.execDetailsEvent += self._on_exec_details
        ib.commissionReportEvent += self._on_commission
        ib.positionEvent += lambda *_: self._touch("positions")
        ib.updatePortfolioEvent += lambda *_: self._touch("positions")
        ib.accountValueEvent += lambda *_: self._touch("account")
        ib.pnlEvent += self._on_pnl
        ib.pnlSingleEvent += lambda *_: self._touch("pnl")
        ib.pendingTickersEvent += self._on_tickers

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> IBBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect once (raising BrokerConnectError with a clear message), then keep connected."""
        self._pump_task = asyncio.create_task(self._pump(), name="ib-event-pump")
        # a restart right after a crash may find IB still holding our client id (326) for a
        # moment, until it notices the dead socket: retry that, bounded by the connect timeout
        deadline = asyncio.get_running_loop().time() + self.connect_timeout
        while True:
            try:
                await self._connect_once()
                break
            except BrokerConnectError as e:
                if e.code != 326 or asyncio.get_running_loop().time() + 0.5 > deadline:
                    raise
                log.warning("ib_client_id_in_use_retry", client_id=self.client_id, code=326)
                if self.ib.isConnected():
                    self.ib.disconnect()
                await asyncio.sleep(0.5)  # backoff: the one legitimate sleep
        self._supervisor = asyncio.create_task(self._supervise(), name="ib-supervisor")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="ib-heartbeat")
        if self.retention.enabled:
            self._prune_task = asyncio.create_task(self._prune_loop(), name="ib-trade-retention")

    async def close(self) -> None:
        self._closing = True
        self.cancels.close()
        self.pacer.close()   # waiting requests fail with PacerClosed: nothing more is sent
        for task in list(self._tasks):
            task.cancel()
        for task in (self._supervisor, self._heartbeat_task, self._prune_task):
            if task:
                task.cancel()
        for task in (self._supervisor, self._heartbeat_task, self._prune_task):
            if task:
                await asyncio.gather(task, return_exceptions=True)
        if self.ib.isConnected():
            self.ib.disconnect()
        for _, handle in self._pending_execs.values():
            handle.cancel()
        self._flush_pending_execs()
        self._set_state(ConnectionState.DISCONNECTED, message="closed")
        await self._drain_outbox()
        if self._pump_task:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)

    def _count_sends(self) -> None:
        """Every message the client writes is counted by the pacer (what connectAsync sends on
        its own included); the library's burst throttle is off so the count is the send."""
        client = self.ib.client
        client.MaxRequests = 0
        send = client.sendMsg
        pacer = self.pacer

        def counted(msg: Any) -> None:
            if msg:
                pacer.note_sent()
            send(msg)

        client.sendMsg = counted

    async def _turn(self, priority: Priority, n: int = 1, key: str | None = None) -> None:
        """Wait for the pacer's turn for `n` messages sent right after (same step); `key`: the
        proposal whose promise they use (the governor promised its what-if and legs)."""
        await self.pacer.acquire(priority, n, key)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def add_reconcile_hook(self, hook: ReconcileHook) -> None:
        """Awaited after every (re)connect sync, before the broker is READY again."""
        self._reconcile_hooks.append(hook)

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            return True
        except TimeoutError:
            return False

    @property
    def is_ready(self) -> bool:
        return self.state is ConnectionState.READY

    async def _connect_once(self) -> None:
        self._set_state(ConnectionState.CONNECTING)
        self._connect_errors.clear()
        self._disconnected.clear()
        self.reconciled = False
        self._synced.clear()
        self._refused.clear()
        try:
            connecting = asyncio.ensure_future(self.ib.connectAsync(
                self.host, self.port, clientId=self.client_id, timeout=self.connect_timeout,
                account=self.account, **connect_kwargs(ibl)))
            refused = asyncio.ensure_future(self._refused.wait())
            try:   # completed orders and executions are read after (ib_startup.py, ib_execs.py)
                with without_startup_fetches(self.ib, ibl):
                    await asyncio.wait([connecting, refused], return_when=asyncio.FIRST_COMPLETED)
            finally:
                refused.cancel()
            if not connecting.done():  # 326: IB closed the handshake; do not wait out the timeout
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
                if self.ib.isConnected():
                    self.ib.disconnect()
                raise TimeoutError("client id in use")
            connecting.result()
        except ConnectionRefusedError as e:
            self._set_state(ConnectionState.DISCONNECTED, code=502, message="connection refused")
            raise BrokerConnectError(
                f"cannot connect to IB at {self.host}:{self.port}: nothing is listening "
                "(is TWS / IB Gateway running with the API enabled on this port?)", code=502) from e
        except (TimeoutError, asyncio.TimeoutError) as e:
            code, msg = self._connect_error_detail()
            self._set_state(ConnectionState.DISCONNECTED, code=code, message="timeout")
            raise BrokerConnectError(
                msg or f"timed out after {self.connect_timeout}s connecting to IB at {self.host}:{self.port}",
                code=code) from e
        except (ConnectionError, OSError) as e:
            code, msg = self._connect_error_detail()
            self._set_state(ConnectionState.DISCONNECTED, code=code, message=str(e))
            raise BrokerConnectError(msg or f"IB closed the connection during the handshake: {e}", code=code) from e
        try:
            self.account = account_guard(self.account, self.ib.client.getAccounts(), paper=not self.live_ok)
        except BrokerConnectError as e:
            log.error("ib_account_refused", code=e.code, error=e.message)
            self.ib.disconnect()   # before any order or reconcile: nothing is traded
            raise
        self._set_state(ConnectionState.CONNECTED)
        await self._after_connect()

    def _connect_error_detail(self) -> tuple[int | None, str]:
        for code, msg in self._connect_errors:
            if code == 326:
                return 326, (f"IB refused client id {self.client_id}: it is already in use "
                             "(set IB_CLIENT_ID to another id or stop the other client)")
        if self._connect_errors:
            code, msg = self._connect_errors[-1]
            return code, f"IB error {code} while connecting: {msg}"
        return None, ""

    async def _after_connect(self) -> None:
        """Sync what risk needs, renew subscriptions, run reconcile hooks, then READY."""
        # subscriptions are per connection: forget the old ones before the first await, so one
        # made meanwhile (a fill's P&L, a proposal's quote) is this connection's and kept
        self._pnl_single.clear()
        old_tickers = [c for c in self.lines.held() if c in self._tickers]  # LRU first
        self._tickers.clear()
        self.lines.new_connection()
        now = self._clock.now()
        # connectAsync has loaded positions, open orders, account values; completed orders only
        # as recovery needs them (self.startup.sync below, adapters/ib_startup.py), executions
        # once after the reconcile (_sync_executions, adapters/ib_execs.py)
        self._ts["positions"] = now
        self._ts["account"] = now
        self._synced.update({"positions", "account"})
        self._check_next_valid_id()
        self.refs.book()   # this connection's book, indexed by orderRef (ib_refs.py)
        await self.startup.sync(self, max(20.0, 4 * self.connect_timeout))
        # reconcile first (the book must know every orderRef IB has), then the executions of
        # the day that we have not seen: fills that happened while we were away
        for hook in self._reconcile_hooks:
            await hook()
        await self.startup.settled()   # a review's outcome kept in the journal (ib_startup.py)
        await self._sync_executions()
        # P&L subscriptions (renewed on every connect: a reconnect has none)
        await self._turn(Priority.DATA)
        self._pnl = self.ib.reqPnL(self.account)
        for pos in self.ib.positions(self.account):
            await self._subscribe_pnl_single(pos.contract.conId)
        # market data subscriptions are per connection too
        for con_id in old_tickers:
            await self._subscribe_quote(con_id)
        await self._wait_pnl()
        self.reconciled = True
        self._set_state(ConnectionState.READY)
        self._ready.set()

    def _check_next_valid_id(self) -> None:
        """IB's nextValidId must exceed every id this client has used (journal included); a
        lower one (a reset Gateway, a different account) must never make us reuse an id."""
        server_next = int(getattr(self.ib.client, "_reqIdSeq", 0) or 0)
        used = max([self._max_order_id] + [t.order.orderId for t in self.ib.trades()
                                           if t.order.clientId in (self.client_id, 0)])
        if used and server_next <= used:
            log.error("ib_next_valid_id_regressed", next_valid_id=server_next, max_used=used,
                      code="NEXT_VALID_ID_REGRESSED")
            self._emit(Alert(code="NEXT_VALID_ID_REGRESSED",
                             message=f"IB's nextValidId {server_next} is not above the highest id "
                                     f"used ({used}); continuing from {used + 1}",
                             ts=self._clock.now()))
        self._max_order_id = used
        self.ib.client.updateReqId(used + 1)

    def note_order_ids(self, max_used: int) -> None:
        """Order ids used by earlier runs (from the journal): never hand them out again."""
        self._max_order_id = max(self._max_order_id, max_used)
        if self.ib.isConnected():
            self.ib.client.updateReqId(self._max_order_id + 1)

    def orders_at_ib(self) -> list[BrokerOrderUpdate]:
        """Every order IB told this connection about (open and completed), as bus models."""
        now = self._clock.now()
        return [order_update_from_trade(t, now) for t in self.ib.trades()
                if not getattr(t.order, "whatIf", False)]

    def orders_followed(self, refs: set[str], ids: set[int]) -> list[BrokerOrderUpdate]:
        """The orders IB told this connection about for these orderRefs or order ids (the
        reconcile's: O(followed), adapters/ib_startup.py), as bus models."""
        return followed_updates(self, refs, ids, self._clock.now())

    async def place_protective(self, entry_order_id: int, *, action: Side, quantity: float,
                               order_ref: str, stop_price: float | None,
                               order_id: int | None = None, oca_group: str | None = None) -> int:
        """A standalone order on the entry's contract: a STP at `stop_price`, or a MKT order
        (flatten) when stop_price is None. Returns its order id (`order_id`: one allocated
        before, so the caller follows it before IB's first word about it; `oca_group`: it
        joins the bracket children's named OCA group, reduce, so its fills shrink them)."""
        self._require_ready()
        # the contract: the entry's, or (a filled entry is a completed order without its id
        # after a reconnect) any order of the bracket's orderRef
        entry = self._trade_for(entry_order_id) or next(
            (t for t in self.refs.trades(order_ref) if t.contract.conId), None)
        if entry is None:
            raise PlacementError(f"entry order {entry_order_id} unknown to IB", code="UNKNOWN_ENTRY")
        order_id = order_id or self.allocate_order_id()
        kind = "STP" if stop_price is not None else "MKT"
        order = ibl.Order(orderId=order_id, action=action.value, totalQuantity=quantity, orderType=kind,
                          tif="GTC", orderRef=order_ref, account=self.account, transmit=True)
        if stop_price is not None:
            order.auxPrice = stop_price
        if oca_group:
            order.ocaGroup, order.ocaType = oca_group, 3
        await self._turn(Priority.PROTECT)
        self._require_ready()
        try:
            trade = self.ib.placeOrder(entry.contract, order)
        except ConnectionError as e:
            raise BrokerNotConnected(f"IB connection lost before the protective order: {e}") from e
        log.warning("ib_protective_order_sent", proposal_id=order_ref, order_id=order_id,
                    order_type=kind, quantity=quantity, stop_price=stop_price,
                    oca_group=oca_group)
        await self._wait_ack([trade], order_ref, ("protective",))
        return order_id

    def allocate_order_id(self) -> int:
        self._require_ready()
        self.ib.client.updateReqId(self._max_order_id + 1)
        oid = self.ib.client.getReqId()
        self._max_order_id = max(self._max_order_id, oid)
        return oid

    @property
    def max_order_id(self) -> int:
        """The highest order id this client handed out or IB reported (agents/staging.py)."""
        return self._max_order_id

    async def _wait_pnl(self) -> None:
        """Wait (bounded) for the first reqPnL value: until it comes, P&L is a placeholder."""
        if "pnl" not in self._synced:
            self._pnl_event.clear()
            try:
                await asyncio.wait_for(self._pnl_event.wait(), self.request_timeout)
            except TimeoutError:
                pass
        if "pnl" not in self._synced:
            log.warning("ib_pnl_not_received", timeout_s=self.request_timeout)

    async def _supervise(self) -> None:
        """Reconnect loop: jittered exponential backoff, visible in one place."""
        while not self._closing:
            await self._disconnected.wait()
            if self._closing or not self.reconnect:
                return
            attempt = 0
            while not self._closing:
                delay = min(self.backoff_cap, self.backoff_base * (2 ** attempt))
                delay = delay * (0.5 + random.random() / 2)
                await asyncio.sleep(delay)  # backoff is the one legitimate sleep
                attempt += 1
                try:
                    log.info("ib_reconnecting", attempt=attempt, host=self.host, port=self.port)
                    await self._connect_once()
                    self.reconnects += 1
                    log.info("ib_reconnected", attempt=attempt)
                    break
                except BrokerConnectError as e:
                    log.warning("ib_reconnect_failed", attempt=attempt, code=e.code, error=e.message)
                    if self.ib.isConnected():
                        self.ib.disconnect()
                except Exception as e:  # the loop must outlive anything (e.g. a drop mid-sync)
                    log.warning("ib_reconnect_failed", attempt=attempt, error=repr(e),
                                code=getattr(e, "code", None), exc_info=True)
                    if self.ib.isConnected():
                        self.ib.disconnect()
                    self._set_state(ConnectionState.DISCONNECTED, message="sync failed")

    async def _heartbeat(self) -> None:
        """A currentTime round trip proves every earlier server message has been processed
        (TCP keeps order), so the parts we hold subscriptions for are current as of the reply."""
        while not self._closing:
            await asyncio.sleep(self.heartbeat_s)
            if self.state not in (ConnectionState.READY, ConnectionState.CONNECTED):
                continue
            try:
                # one message every heartbeat_s, and the proof that the snapshot is current:
                # never starved behind a placement backlog (the gate would fail closed, stale)
                await self._turn(Priority.PROTECT)
                sent = time.monotonic()
                await asyncio.wait_for(self.ib.reqCurrentTimeAsync(), self.request_timeout)
                self.heartbeat_rtt_s = time.monotonic() - sent
            except (TimeoutError, ConnectionError, OSError, BrokerNotConnected) as e:
                log.warning("ib_heartbeat_failed", error=repr(e))
                continue
            if self.state is ConnectionState.READY:
                now = self._clock.now()
                for part in self._synced:
                    self._ts[part] = now
                self._mark_dirty("connection")

    # ------------------------------------------------------------------ events from IB

    def _emit(self, msg: Any) -> None:
        self._outbox.put_nowait(msg)

    async def _pump(self) -> None:
        while True:
            msg = await self._outbox.get()
            try:
                await self._publish(msg)
            except Exception:  # a bus failure must not kill the pump; the bus logs its own
                log.exception("ib_publish_failed", message_type=type(msg).__name__)
            finally:
                self._outbox.task_done()

    async def _drain_outbox(self) -> None:
        if self._pump_task and not self._pump_task.done():
            try:
                await asyncio.wait_for(self._outbox.join(), 2.0)
            except TimeoutError:
                log.warning("ib_outbox_not_drained", left=self._outbox.qsize())

    def _set_state(self, state: ConnectionState, code: int | None = None, message: str = "") -> None:
        if state is self.state and code is None:
            return
        old, self.state = self.state, state
        if state is not ConnectionState.READY:
            self._ready.clear()
        log.info("ib_connection_state", old=old.value, new=state.value, code=code, detail=message,
                 host=self.host, port=self.port, client_id=self.client_id)
        self._emit(BrokerConnection(state=state, code=code, message=message, ts=self._clock.now()))

    def _touch(self, part: str) -> None:
        self._ts[part] = self._clock.now()
        self._synced.add(part)
        self._mark_dirty(part)

    def _mark_dirty(self, kind: str) -> None:
        """Coalesce bursts (155 account values at once) into one notification per loop tick."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_dirty)
        self._dirty.add(kind)

    def _flush_dirty(self, force: bool = False) -> None:
        if not self._dirty:
            return
        if self._ack_waiters and not force:
            # a placement is reading IB's acks: the snapshot this notice triggers (every working
            # order and position read again) would run between them; it goes once they are read
            # (then while the decision's journal commit is on the disk), DIRTY_HOLD_S at most
            if self._dirty_hold is None:
                self._dirty_hold = asyncio.get_running_loop().call_later(
                    DIRTY_HOLD_S, self._flush_dirty, True)
            return
        if self._dirty_hold is not None:
            self._dirty_hold.cancel()
            self._dirty_hold = None
        now = self._clock.now()
        for kind in sorted(self._dirty):
            self._emit(BrokerDataChanged(kind=kind, ts=now))  # type: ignore[arg-type]
        self._dirty.clear()

    def _on_pnl(self, pnl: Any) -> None:
        if ib_number(pnl.dailyPnL) is not None:
            self._touch("pnl")
            self._pnl_event.set()

    def _on_tickers(self, tickers: Any) -> None:
        for t in tickers:
            con_id = t.contract.conId
            waiter = self._quote_waiters.get(con_id)
            if waiter and any(ib_number(x) for x in (t.bid, t.ask, t.last)):
                waiter.set()
        self._mark_dirty("quotes")

    def _on_disconnected(self) -> None:
        self.reconciled = False
        self._synced.clear()
        self._set_state(ConnectionState.DISCONNECTED, message="socket closed")
        self._disconnected.set()
        for lost in list(self._ack_waiters):  # their acks died with the socket
            lost()

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        kind = classify_error(code)
        if self.state is ConnectionState.CONNECTING:
            self._connect_errors.append((code, message))
            if code == 326:
                self._refused.set()
        bound = {"code": code, "req_id": req_id, "error_class": kind.value}
        if code == 100:   # IB dropped a message (pacing): the pacer backs off (pacer.py)
            self.pacer.violation()
        if kind is ErrorClass.INFO:
            log.info("ib_info", message=message, **bound)
            return
        if kind is ErrorClass.CONNECTIVITY:
            log.warning("ib_connectivity", message=message, **bound)
            if code == 1100:
                self._synced.clear()
                self._set_state(ConnectionState.CONNECTIVITY_LOST, code=code, message=message)
            elif code in (1101, 1102) and self.ib.isConnected():
                # restored: re-sync before READY (1101 = data lost, subscriptions must be renewed)
                self._set_state(ConnectionState.CONNECTED, code=code, message=message)
                asyncio.get_running_loop().create_task(self._resync(code))
            return
        if code == MAX_TICKERS and self._line_refused(req_id):
            log.warning("ib_error", message=message, **bound)
            return
        trade = self._trade_for(req_id) if req_id and req_id > 0 else None
        if req_id and req_id > 0:
            # the libraries differ on which codes they record on the trade (ib_insync treats
            # 110 as a warning): keep the last one per order id for placement results
            self._order_errors[req_id] = (code, message)
        if trade is not None:
            log.warning("ib_order_error", order_id=req_id, proposal_id=trade.order.orderRef or None,
                        message=message, **bound)
            self._emit(order_update_from_trade(trade, self._clock.now(), code=code, message=message))
            return
        log.warning("ib_error", message=message, **bound)

    async def _resync(self, code: int) -> None:
        try:
            await self._turn(Priority.DATA)
            await asyncio.wait_for(self.ib.reqPositionsAsync(), self.request_timeout)
            if await self.queries.open_orders() is None:   # one at a time (ib_truth.py)
                raise BrokerTimeout("IB did not list its open orders in time")
            if self.account:
                await self._turn(Priority.DATA)
                await asyncio.wait_for(self.ib.reqAccountUpdatesAsync(self.account), self.request_timeout)
            if code == 1101:  # data lost: subscriptions are gone
                if self._pnl is not None:
                    await self._turn(Priority.DATA)
                    self.ib.cancelPnL(self.account)
                for con_id in list(self._pnl_single):
                    await self._turn(Priority.DATA)
                    self.ib.cancelPnLSingle(self.account, "", con_id)
                self._pnl_single.clear()
                self._synced.discard("pnl")
                await self._turn(Priority.DATA)
                self._pnl = self.ib.reqPnL(self.account)
                for pos in self.ib.positions(self.account):
                    await self._subscribe_pnl_single(pos.contract.conId)
                await self._renew_quotes()
                await self._wait_pnl()
            for hook in self._reconcile_hooks:
                await hook()
            await self._sync_executions()
            now = self._clock.now()
            self._ts["positions"] = self._ts["account"] = now
            self._synced.update({"positions", "account"})
            if code == 1102 and self.pnl().known:
                # data maintained: the reqPnL subscription lives on; the heartbeat may vouch for it again
                self._synced.add("pnl")
                self._ts["pnl"] = now
            self.reconciled = True
            self._set_state(ConnectionState.READY, code=code, message="resynced")
            self._ready.set()
        except Exception as e:  # never left CONNECTED-but-unreconciled: start over
            log.warning("ib_resync_failed", code=code, error=repr(e), action="reconnect")
            if self.ib.isConnected() and not self._closing:
                self.ib.disconnect()   # the supervisor reconnects and syncs from scratch

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retention.interval)
            if self.state is ConnectionState.READY:
                self.prune_trades()

    def prune_trades(self) -> int:
        """Drop the finished trades past their grace from the library's books (ib_prune.py)."""
        n = self.retention.sweep(self.ib.wrapper, busy=self._pending_execs.__contains__)
        if n:
            log.info("ib_trades_pruned", trades=n, **self.retention.stats())
        return n

    def _trade_for(self, order_id: int) -> Any:
        trades = self.ib.wrapper.trades   # keyed (clientId, orderId) for an orderId > 0
        for cid in (self.client_id, 0):
            if (t := trades.get((cid, order_id))) is not None:
                return t
        for t in self.ib.trades():
            if t.order.orderId == order_id and t.order.clientId in (self.client_id, 0):
                return t
        return None

    def _on_order_status(self, trade: Any) -> None:
        o = trade.order
        if getattr(o, "whatIf", False):
            return
        self._max_order_id = max(self._max_order_id, o.orderId)
        self.refs.note(trade)
        self.cancels.seen(trade)
        self._emit(order_update_from_trade(trade, self._clock.now()))
        self._mark_dirty("orders")
        # a new position may need its P&L subscription
        con_id = trade.contract.conId
        if (trade.orderStatus.status == "Filled" and self.state is ConnectionState.READY
                and trade.contract.secType != "BAG"     # a combo's legs are the positions
                and con_id not in self._pnl_single and con_id not in self._pnl_waiting
                and self.account):
            self._pnl_waiting.add(con_id)
            task = self._spawn(self._subscribe_pnl_single(con_id), f"ib-pnl-single:{con_id}")
            task.add_done_callback(lambda _t: self._pnl_waiting.discard(con_id))

    def _execution(self, trade: Any, fill: Any) -> BrokerExecution:
        e, c = fill.execution, fill.contract
        return BrokerExecution(
            exec_id=e.execId, order_id=e.orderId, perm_id=e.permId or None,
            order_ref=e.orderRef or (trade.order.orderRef if trade else "") or "",
            con_id=c.conId, symbol=c.symbol, sec_type=c.secType or "STK",
            side=_side(e.side) or Side.BUY, quantity=float(e.shares), price=float(e.price),
            cum_qty=float(e.cumQty or 0), avg_price=float(e.avgPrice or 0),
            exec_time=e.time if isinstance(e.time, datetime) else None,
            commission=None, realized_pnl=None, ts=self._clock.now(),
        )

    def _on_exec_details(self, trade: Any, fill: Any) -> None:
        exec_id = fill.execution.execId
        if exec_id in self._seen_execs or exec_id in self._pending_execs:
            return
        ex = self._execution(trade, fill)
        if ex.sec_type == "BAG":   # a combo's own execution: its legs' reports carry commission
            self._publish_exec(ex)
            return
        # publish once, with the commission: wait for commissionReport (bounded)
        handle = asyncio.get_running_loop().call_later(COMMISSION_WAIT_S, self._release_exec, exec_id)
        self._pending_execs[exec_id] = (ex, handle)

    def _on_commission(self, trade: Any, fill: Any, report: Any) -> None:
        exec_id = report.execId
        pending = self._pending_execs.pop(exec_id, None)
        if pending is None:
            return
        ex, handle = pending
        handle.cancel()
        self._publish_exec(ex.model_copy(update={
            "commission": ib_number(report.commission),
            "realized_pnl": ib_number(report.realizedPNL),
        }))

    def _release_exec(self, exec_id: str) -> None:
        pending = self._pending_execs.pop(exec_id, None)
        if pending:
            log.warning("ib_commission_missing", exec_id=exec_id)
            self._publish_exec(pending[0])

    def _flush_pending_execs(self) -> None:
        for exec_id in list(self._pending_execs):
            self._release_exec(exec_id)

    def _publish_exec(self, ex: BrokerExecution) -> None:
        if ex.exec_id in self._seen_execs:
            return
        self._seen_execs[ex.exec_id] = True
        log.info("ib_execution", order_id=ex.order_id, proposal_id=ex.order_ref or None,
                 exec_id=ex.exec_id, side=ex.side.value, quantity=ex.quantity, price=ex.price,
                 commission=ex.commission)
        self._emit(ex)

    async def _sync_executions(self) -> None:
        """Publish the day's executions not seen yet (fills that happened while disconnected):
        one reqExecutions per connect, the ones journaled or published skipped undecoded, each
        new one with its commission (adapters/ib_execs.py)."""
        t0 = time.perf_counter()
        try:
            journaled = await self.journaled_execs() if self.journaled_execs is not None else set()
            known = Known(self._seen_execs, self._pending_execs, journaled)
            await self._turn(Priority.DATA)
            with only_new(self.ib, known) as skipped, reports_watched(self.ib) as reported:
                fills = await asyncio.wait_for(self.ib.reqExecutionsAsync(), self.request_timeout)
                new = [f for f in fills if f.execution.execId not in known]
                missing = await reports_for(self.ib, new, reported)
        except (TimeoutError, ConnectionError, BrokerNotConnected) as e:
            log.warning("ib_executions_sync_failed", error=repr(e))
            return
        except Exception as e:   # the journal's look-up: without it nothing can be told new
            log.error("ib_executions_sync_failed", error=repr(e), code="EXECUTIONS_SYNC_FAILED")
            return
        for fill in missing:
            log.warning("ib_commission_missing", exec_id=fill.execution.execId)
        for fill in new:
            trade = self._trade_for(fill.execution.orderId)
            ex = self._execution(trade, fill)
            rep = report_of(self.ib, fill)
            if rep is not None:
                ex = ex.model_copy(update={"commission": ib_number(rep.commission),
                                           "realized_pnl": ib_number(rep.realizedPNL)})
            self._publish_exec(ex)
        log.info("ib_executions_synced", new=len(new), skipped=skipped["skipped"],
                 decoded=len(fills), ms=round((time.perf_counter() - t0) * 1000, 1))

    # ------------------------------------------------------------------ commands

    def _require_ready(self) -> None:
        if self.state is not ConnectionState.READY:
            raise BrokerNotConnected(f"IB connection is {self.state.value}, not ready")

    async def resolve_contract(self, proposal: TradeProposal) -> ResolvedContract | None:
        """IB's contract for a proposal (cached). None when IB has no such contract (200)."""
        key = contract_key(proposal)
        hit = self._contracts.get(key)
        if hit is not None:
            return hit
        if proposal.legs is not None:
            return await self._resolve_combo(proposal, key)
        if not self.ib.isConnected():
            raise BrokerNotConnected("IB is not connected")
        query = _to_ib_contract(proposal)
        await self._turn(Priority.DATA)
        hit = self._contracts.get(key)   # resolved by another request while this one waited
        if hit is not None:
            return hit
        try:
            details = await asyncio.wait_for(self.ib.reqContractDetailsAsync(query), self.request_timeout)
        except TimeoutError as e:
            raise BrokerTimeout(f"contract details for {proposal.symbol} timed out") from e
        except Exception as e:  # RequestError (200 no security definition) and friends
            code = getattr(e, "code", None)
            if code == 200:
                return None
            raise BrokerError(f"contract details for {proposal.symbol} failed: {e}", code=code) from e
        if not details:
            return None
        if proposal.sec_type is SecType.FUT and proposal.expiry in (None, "front"):
            today = self._clock.now().strftime("%Y%m%d")
            live = [d for d in details if (d.contract.lastTradeDateOrContractMonth or "") >= today]
            live.sort(key=lambda d: d.contract.lastTradeDateOrContractMonth)
            details = live[:1]
            if not details:
                return None
        elif len(details) > 1:
            log.warning("ib_contract_ambiguous", symbol=proposal.symbol, matches=len(details))
            return None
        d = details[0]
        resolved = _resolved(d.contract, d.minTick)
        self._contracts[key] = resolved
        self._ib_contracts[resolved.con_id] = d.contract
        return resolved

    async def _resolve_combo(self, p: TradeProposal, key: tuple) -> ResolvedContract | None:
        """Every leg resolved to its conId (contract details, paced and cached like any contract),
        then the BAG built from them and cached. None when IB lacks a leg: the governor names it
        (the legs resolved are cached, the missing one is not)."""
        legs: list[ResolvedContract] = []
        for leg in p.legs or []:
            r = await self.resolve_contract(leg_query(p, leg))  # type: ignore[arg-type]
            if r is None:
                log.warning("ib_combo_leg_unknown", proposal_id=p.proposal_id, symbol=p.symbol,
                            leg=leg.describe(), code="UNKNOWN_CONTRACT")
                return None
            legs.append(r)
        con_id = combo_con_id(p.symbol, p.currency,
                              [(r.con_id, leg.ratio, leg.action) for leg, r in zip(p.legs or [], legs)])
        resolved = ResolvedContract(
            con_id=con_id, symbol=p.symbol, sec_type=SecType.BAG, exchange="SMART",
            currency=p.currency, multiplier=max(r.multiplier for r in legs),
            min_tick=min(r.min_tick for r in legs), legs=legs)
        self._contracts[key] = resolved
        self._ib_contracts[con_id] = _bag(p, legs)
        return resolved

    def cached_contract(self, proposal: TradeProposal) -> ResolvedContract | None:
        return self._contracts.get(contract_key(proposal))

    def _bag_multiplier(self, c: Any) -> float:
        """A BAG's price multiplier: its legs' (IB's BAG contract carries none)."""
        mults = [_multiplier(self._ib_contracts[leg.conId]) for leg in (c.comboLegs or [])
                 if leg.conId in self._ib_contracts]
        return max(mults) if mults else 100.0

    def _bracket_orders(self, b: ApprovedBracket, ids: tuple[int, int, int]) -> list[Any]:
        p = b.proposal
        ref = p.proposal_id
        exit_action = p.side.opposite.value
        common = {"tif": p.tif.value, "orderRef": ref, "account": self.account}
        parent = ibl.Order(orderId=ids[0], action=p.side.value, totalQuantity=p.quantity,
                           orderType=p.order_type.value, transmit=False, **common)
        if p.order_type is OrderType.LMT:
            parent.lmtPrice = p.limit_price
        # the children's OCA group is named (reduce, no block): a stop that replaces the stop
        # after the entry filled (a trailing stop, agents/commands.py) can join it standalone
        oca = {"ocaGroup": oca_group(ref), "ocaType": 3}
        take = ibl.Order(orderId=ids[1], action=exit_action, totalQuantity=p.quantity,
                         orderType="LMT", lmtPrice=p.take_profit, parentId=ids[0], transmit=False,
                         **common, **oca)
        stop = ibl.Order(orderId=ids[2], action=exit_action, totalQuantity=p.quantity,
                         orderType="STP", auxPrice=p.stop_loss, parentId=ids[0], transmit=True,
                         **common, **oca)
        return [parent, take, stop]

    def bracket_legs(self, order_ref: str) -> dict[str, Any]:
        """The legs IB told us about for this orderRef, by name (entry / take_profit /
        stop_loss), each an ib Trade; a leg IB does not have is absent, never an id 0."""
        legs = [t for t in self.refs.trades(order_ref)
                if t.order.orderId and t.order.orderId not in self._absent]
        parent = next((t for t in legs if not t.order.parentId), None)
        if parent is None:
            return {}
        kids = [t for t in legs if t.order.parentId == parent.order.orderId]
        out = {"entry": parent}
        take = next((t for t in kids if t.order.orderType == "LMT"), None)
        stop = next((t for t in kids if t.order.orderType in ("STP", "STP LMT")), None)
        if take is not None:
            out["take_profit"] = take
        if stop is not None:
            out["stop_loss"] = stop
        return out

    def existing_bracket(self, order_ref: str) -> BracketOrderIds | None:
        """The three legs IB already has for this orderRef (any status), or None when it has
        fewer than three (never an id 0: `bracket_legs` tells which legs there are)."""
        legs = self.bracket_legs(order_ref) or pruned_bracket(self.retention.legs(order_ref))
        if len(legs) < 3:
            if legs:
                log.warning("ib_bracket_incomplete", proposal_id=order_ref,
                            legs=_describe(legs), code="BRACKET_INCOMPLETE")
            return None
        return BracketOrderIds(entry=legs["entry"].order.orderId,
                               take_profit=legs["take_profit"].order.orderId,
                               stop_loss=legs["stop_loss"].order.orderId)

    def has_order_ref(self, order_ref: str) -> bool:
        return bool(self.retention.legs(order_ref)) or self.refs.has(order_ref)

    def orders_for_ref(self, order_ref: str) -> list[BrokerOrderUpdate]:
        """The orders IB told us about for this orderRef, pruned ones (ib_prune.py) included."""
        trades, pruned = self.refs.trades(order_ref), self.retention.legs(order_ref)
        if not trades and not pruned:
            return []
        now = self._clock.now()
        live = [order_update_from_trade(t, now) for t in trades]
        seen = {(u.order_id, u.perm_id) for u in live}
        return live + [u for u in pruned_updates(order_ref, pruned, now)
                       if (u.order_id, u.perm_id) not in seen]

    def allocate_bracket_ids(self) -> BracketOrderIds:
        """Three fresh order ids, each above every id this client has used."""
        self._require_ready()
        self.ib.client.updateReqId(self._max_order_id + 1)
        ids = [self.ib.client.getReqId() for _ in range(3)]
        self._max_order_id = max(self._max_order_id, *ids)
        return BracketOrderIds(entry=ids[0], take_profit=ids[1], stop_loss=ids[2])

    async def place_bracket(self, bracket: ApprovedBracket, ids: BracketOrderIds | None = None) -> BracketOrderIds:
        """Send entry + take-profit + stop (orderRef = proposal_id on every leg, transmit chain)
        and wait (bounded) for IB to acknowledge. Raises PlacementError if IB refuses a leg,
        DuplicateOrderRefError if IB already has this orderRef."""
        self._require_ready()
        ref = bracket.proposal.proposal_id
        if self.has_order_ref(ref):
            raise DuplicateOrderRefError(ref, self.existing_bracket(ref))
        contract = self._ib_contracts.get(bracket.contract.con_id) if bracket.contract else None
        if contract is None:
            resolved = await self.resolve_contract(bracket.proposal)
            if resolved is None:
                raise PlacementError(f"no contract for {bracket.proposal.symbol}", code=200)
            contract = self._ib_contracts[resolved.con_id]
        ids = ids or self.allocate_bracket_ids()
        orders = self._bracket_orders(bracket, (ids.entry, ids.take_profit, ids.stop_loss))
        # one turn for the three legs: the transmit chain is never split by a pacing wait
        await self._turn(Priority.ORDER, 3, ref)
        self._require_ready()
        trades = []
        try:
            for o in orders:
                trades.append(self.ib.placeOrder(contract, o))
                if stamps.ON:
                    stamps.stamp(ref, f"leg{len(trades) - 1}_sent")
                if len(trades) == 1:
                    crash_point("entry_sent")
        except ConnectionError as e:  # the socket closed under us (ib_async raises before sending)
            if not trades:
                raise BrokerNotConnected(f"IB connection lost before the bracket was sent: {e}") \
                    from e
            raise PlacementUncertain(ref, f"IB connection lost after {len(trades)} of 3 legs") \
                from e
        log.info("ib_bracket_sent", proposal_id=ref, order_id=ids.entry,
                 take_profit_id=ids.take_profit, stop_loss_id=ids.stop_loss)
        crash_point("legs_sent")
        await self._wait_ack(trades, ref, ("entry", "take_profit", "stop_loss"))
        return ids

    async def _wait_ack(self, trades: list[Any], ref: str, names: tuple[str, ...]) -> None:
        """Until IB acknowledges every leg (PlacementError if it refuses one). A leg that
        fills means IB took the bracket: done, whatever its siblings' states (a bracket can fill
        its entry and stop on arrival and cancel its take-profit before all acks are read). A
        connection that drops first makes the outcome unknown: PlacementUncertain (the orders
        may be at IB, partly or not at all). A timeout with the connection up is not success:
        IB is asked what it has (`_placement_truth`)."""
        # a future set by IB's status callback wakes this task in the loop's next step (an
        # Event under wait_for took three: wait_for's own task, its callback, this task; each
        # one behind whatever else the acks queued, the snapshot and the order events)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failure: list[Any] = []
        lost: list[bool] = []

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def on_lost() -> None:
            lost.append(True)
            finish()

        def traded() -> bool:
            return any(t.orderStatus.filled or t.orderStatus.status == "Filled" for t in trades)

        acked: set[int] = set()

        def check(*_: Any) -> None:
            if stamps.ON:
                for i, t in enumerate(trades):
                    if i not in acked and t.orderStatus.status not in ("PendingSubmit", ""):
                        acked.add(i)
                        stamps.stamp(ref, f"ack{i}_read")
            if done.done():
                return
            if traded():  # IB took the bracket and it trades: a cancelled leg is its OCA sibling
                finish()
                return
            for t in trades:
                if t.orderStatus.status in ("Cancelled", "ApiCancelled", "Inactive"):
                    failure.append(t)
                    finish()
                    return
            if all(t.orderStatus.status not in ("PendingSubmit", "") for t in trades):
                finish()

        for t in trades:
            t.statusEvent += check
        self._ack_waiters.add(on_lost)
        try:
            check()
            if not done.done():
                async with asyncio.timeout(self.ack_timeout):
                    await done
        except TimeoutError:
            log.warning("ib_bracket_ack_timeout", proposal_id=ref, timeout_s=self.ack_timeout,
                        statuses=[t.orderStatus.status for t in trades])
            if not lost:
                await self._placement_truth(trades, ref, names)
                return
        finally:
            self._ack_waiters.discard(on_lost)
            for t in trades:
                t.statusEvent -= check
            if not self._ack_waiters and self._dirty_hold is not None:
                asyncio.get_running_loop().call_soon(self._flush_dirty)   # the held notices
        if stamps.ON:
            stamps.stamp(ref, "acks_woke")
        if traded():
            return
        statuses = [t.orderStatus.status for t in trades]
        if lost and not failure and any(st in ("PendingSubmit", "") for st in statuses):
            log.warning("ib_bracket_ack_lost", proposal_id=ref, statuses=statuses,
                        code="PLACEMENT_UNCERTAIN")
            raise PlacementUncertain(ref, f"IB connection lost before the legs were acknowledged "
                                          f"({', '.join(statuses)})")
        if failure:
            # resolved after the wait: ib_async cancels the trade before it emits errorEvent
            t = failure[0]
            logged = next((e for e in reversed(t.log) if e.errorCode), None)
            code, msg = (self._order_errors.get(t.order.orderId)
                         or ((logged.errorCode, logged.message) if logged else None)
                         or (None, f"leg {t.order.orderId} {t.orderStatus.status}"))
            raise PlacementError(msg, code=code)

    async def _placement_truth(self, trades: list[Any], ref: str, names: tuple[str, ...]) -> None:
        """No ack in time, socket up: ask IB what it has for this orderRef (ib_truth.py). All
        there and alive or trading: success. Else PlacementError ACK_TIMEOUT, every leg not
        known dead cancelled (an unanswered query is unknown, never absent); connection lost
        meanwhile: PlacementUncertain (the reconcile settles it)."""
        await placement_truth(self, trades, ref, names)

    async def cancel_order(self, order_id: int) -> bool:
        """Cancel one order. Allowed as soon as the socket is up (a cancel only lowers risk, and
        the reconcile before READY cancels brackets that were never transmitted)."""
        if not self.ib.isConnected():
            raise BrokerNotConnected(
                f"IB connection is {self.state.value}: cannot cancel {order_id}")
        trade = self._trade_for(order_id)
        if trade is None or trade.isDone() or order_id in self._settled:
            return False
        await self._turn(Priority.PROTECT)
        if trade.isDone():
            return False
        try:
            self.ib.cancelOrder(trade.order)
        except ConnectionError as e:
            raise BrokerNotConnected(f"IB connection lost: cannot cancel {order_id}: {e}") from e
        self.cancels.sent(order_id)   # checked at IB if IB does not report its outcome
        return True

    async def what_if(self, bracket: ApprovedBracket) -> dict[str, float | None]:
        """IB what-if on the entry: margin before/change/after and commission. No order is created."""
        self._require_ready()
        p = bracket.proposal
        contract = self._ib_contracts.get(bracket.contract.con_id) if bracket.contract else None
        if contract is None:
            resolved = await self.resolve_contract(p)
            if resolved is None:
                raise PlacementError(f"no contract for {p.symbol}", code=200)
            contract = self._ib_contracts[resolved.con_id]
        order = ibl.Order(action=p.side.value, totalQuantity=p.quantity, orderType=p.order_type.value,
                          tif=p.tif.value, account=self.account)
        if p.order_type is OrderType.LMT:
            order.lmtPrice = p.limit_price
        asked = time.monotonic()
        if stamps.ON:
            stamps.stamp(p.proposal_id, "whatif_asked")
        await self._turn(Priority.ORDER, 1, p.proposal_id)
        self._require_ready()
        sent = time.monotonic()
        if stamps.ON:
            stamps.stamp(p.proposal_id, "whatif_sent")
        try:   # awaited in this task (wait_for woke it one loop step later, through a callback)
            async with asyncio.timeout(self.request_timeout):
                state = await self.ib.whatIfOrderAsync(contract, order)
        except TimeoutError as e:
            raise BrokerTimeout("what-if timed out") from e
        except Exception as e:
            raise BrokerError(f"what-if failed: {e}", code=getattr(e, "code", None)) from e
        finally:   # the pacer's turn and IB's answer apart, when slow (also when cancelled)
            if (done := time.monotonic()) - asked > WHATIF_SLOW_S:
                log.warning("ib_whatif_slow", proposal_id=p.proposal_id, turn_s=round(sent - asked, 3),
                            answer_s=round(done - sent, 3), queued=self.pacer.queued(Priority.ORDER))
        if stamps.ON:
            stamps.stamp(p.proposal_id, "whatif_answered")
        if isinstance(state, list):  # ib_insync returns [] on error
            raise BrokerError("what-if returned no order state")
        return {
            "init_margin_change": ib_number(state.initMarginChange),
            "maint_margin_change": ib_number(state.maintMarginChange),
            "equity_with_loan_change": ib_number(state.equityWithLoanChange),
            "init_margin_after": ib_number(state.initMarginAfter),
            "maint_margin_after": ib_number(state.maintMarginAfter),
            "commission": ib_number(state.commission),
        }

    async def _subscribe_pnl_single(self, con_id: int) -> None:
        try:
            if con_id in self._pnl_single or not self.account:
                return
            await self._turn(Priority.DATA)
            if con_id in self._pnl_single or not self.ib.isConnected():
                return
            self._pnl_single[con_id] = self.ib.reqPnLSingle(self.account, "", con_id)
        finally:   # in the same step as the subscription (the done callback comes a step later
            self._pnl_waiting.discard(con_id)   # and covers a task cancelled before it ran)

    # ------------------------------------------------------------------ state reads

    def account_values(self) -> dict[str, float]:
        """Numeric account values in the base currency (tag -> value)."""
        out: dict[str, float] = {}
        for v in self.ib.accountValues(self.account):
            if v.modelCode or v.currency not in ("", "USD", "BASE"):
                continue
            if v.currency == "BASE" and v.tag in out:
                continue
            num = ib_number(v.value)
            if num is not None:
                out[v.tag] = num
        return out

    def positions(self) -> list[Position]:
        items = {p.contract.conId: p for p in self.ib.portfolio(self.account)}
        out = []
        for pos in self.ib.positions(self.account):
            c = pos.contract
            item = items.get(c.conId)
            single = self._pnl_single.get(c.conId)
            # reqPnLSingle's figure when IB has sent one, else the portfolio update's
            unrealized = ib_number(single.unrealizedPnL) if single else None
            if unrealized is None and item is not None:
                unrealized = ib_number(item.unrealizedPNL)
            out.append(Position(
                con_id=c.conId, symbol=c.symbol, sec_type=c.secType, quantity=float(pos.position),
                avg_cost=float(pos.avgCost), multiplier=_multiplier(c),
                market_price=ib_number(item.marketPrice) if item else None,
                market_value=ib_number(item.marketValue) if item else None,
                unrealized_pnl=unrealized,
                realized_pnl=ib_number(item.realizedPNL) if item else None,
                expiry=c.lastTradeDateOrContractMonth or None, strike=c.strike or None,
                right=c.right or None,
            ))
        return out

    def pnl(self) -> PnL:
        p = self._pnl
        if p is None:
            return PnL()
        return PnL(daily=ib_number(p.dailyPnL), unrealized=ib_number(p.unrealizedPnL),
                   realized=ib_number(p.realizedPnL))

    def open_trades(self) -> list[Any]:
        """`IB.openTrades()`, read from the book's open-trade index (adapters/ib_refs.py)."""
        return self.refs.open_trades(ibl.OrderStatus.DoneStates, self.ib.openTrades)

    def working_orders(self) -> list[WorkingOrder]:
        return self._working.build(self.open_trades(), self._working_order)

    def _working_order(self, t: Any) -> WorkingOrder:
        o, s = t.order, t.orderStatus
        return WorkingOrder(
                order_id=o.orderId, perm_id=o.permId or None, parent_id=o.parentId or None,
                order_ref=o.orderRef or None, symbol=t.contract.symbol,
                con_id=t.contract.conId or 0,
                multiplier=(self._bag_multiplier(t.contract) if t.contract.secType == "BAG"
                            else _multiplier(t.contract)),
                side=_side(o.action) or Side.BUY,
                order_type=o.orderType, quantity=float(o.totalQuantity),
                remaining=float(s.remaining if s.remaining is not None else o.totalQuantity),
                limit_price=ib_number(o.lmtPrice), stop_price=ib_number(o.auxPrice), status=s.status,
        )

    def quotes(self) -> dict[int, Quote]:
        """conId -> the latest quote of every contract streamed (never keyed by symbol: a stock
        and its options share one)."""
        now = self._clock.now()
        out: dict[int, Quote] = {}
        for con_id, t in self._tickers.items():
            bid, ask, last = ib_number(t.bid), ib_number(t.ask), ib_number(t.last)
            if bid is None and ask is None and last is None:
                continue
            if bid is not None and bid <= 0:
                bid = None
            if ask is not None and ask <= 0:
                ask = None
            ts = t.time if isinstance(getattr(t, "time", None), datetime) else now
            out[con_id] = Quote(con_id=con_id, symbol=t.contract.symbol, bid=bid, ask=ask,
                                last=last, ts=ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc))
        return out

    def freshness(self) -> dict[str, datetime | None]:
        return dict(self._ts) if self.state is ConnectionState.READY else {k: None for k in self._ts}
