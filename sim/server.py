"""Paper TWS: an asyncio TCP server speaking the TWS API to unmodified IB client libraries.

The brokerage (orders, fills, positions, account) lives in the engine (`sim.engine.Brokerage`);
this room only owns client sessions: the handshake, per-client dispatch, pacing, subscriptions,
and the fan-out of the engine's events to the clients that should see them. A gateway restart
drops every session and keeps the engine untouched, as IB's servers keep the account.

Shapes (one line each):
  PaperTWS._sessions:    clientId -> Session            (API clients past startApi)
  PaperTWS._conns:       {Session}                       (every open socket, also mid-handshake)
  Session.mkt_data:      reqId -> (conId, snapshot)      (streaming ticks per request)
  Session.pnl_single:    reqId -> conId
  Session.sent_values:   (subscription key, tag, currency) -> value last sent (diffs only)
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.logs import get_logger
from bracketgate.sim import codec, combos, md_lines
from bracketgate.sim.codec import (
    CancelOrder,
    ContractSpec,
    PlaceOrder,
    ReqAccountSummary,
    ReqAccountUpdates,
    ReqContractDetails,
    ReqExecutions,
    ReqFlag,
    ReqId,
    ReqMktData,
    ReqMulti,
    ReqPnL,
    ReqSecDefOptParams,
    Simple,
    StartApi,
    Unsupported,
)
from bracketgate.sim.model import (
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
)
from bracketgate.sim.holds import AnswerHolds
from bracketgate.sim.market import PriceFeed
from bracketgate.sim.order_rules import unsupported_attribute
from bracketgate.sim.universe import Universe, UnknownContract
from bracketgate.sim.wire import (
    API_PREFIX,
    MAX_SERVER_VERSION,
    FrameDecoder,
    WireError,
    pack,
    parse_version_offer,
    split_fields,
)

log = get_logger("sim.server")

CONNECTIVITY_MESSAGES = {
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: ("Connectivity between IB and Trader Workstation has been restored - data maintained. "
           "All data farms are connected: usfarm.nj; usfarm; euhmds; fundfarm; ushmds; secdefil."),
    1300: ("TWS socket port has been reset and this connection is being dropped. "
           "Please reconnect on the new port."),
    2103: "Market data farm connection is broken:usfarm",
    2104: "Market data farm connection is OK:usfarm",
    2105: "HMDS data farm connection is broken:ushmds",
    2106: "HMDS data farm connection is OK:ushmds",
    2110: ("Connectivity between Trader Workstation and server is broken. "
           "It will be restored automatically."),
}
NO_SECURITY = "No security definition has been found for the request"
MAX_WRITE_BUFFER = 32 * 1024 * 1024  # bytes queued for one client before it is dropped
# historical / real-time-bar style requests answered with 162 (ends the client's request)
_HMDS_REQUESTS = frozenset({20, 50, 87, 88, 96, 97})


@dataclass(eq=False)
class Session:
    """One API socket. `client_id` is None until startApi arrives."""

    writer: asyncio.StreamWriter
    peer: str
    version: int = 0
    client_id: int | None = None
    pacing: deque[float] = field(default_factory=deque)
    paced_window_start: float = -1.0
    dropped: int = 0
    pacing_errors: int = 0         # error 100 sent to this client
    peak_window: int = 0           # most messages admitted in one pacing window
    positions_sub: bool = False
    account_sub: bool = False
    account_multi: dict[int, str] = field(default_factory=dict)    # reqId -> model code
    positions_multi: set[int] = field(default_factory=set)
    account_summary: dict[int, frozenset[str] | None] = field(default_factory=dict)
    mkt_data: dict[int, tuple[int, bool]] = field(default_factory=dict)
    combo_quotes: dict[int, SimContract] = field(default_factory=dict)  # reqId -> BAG
    pnl: set[int] = field(default_factory=set)
    pnl_single: dict[int, int] = field(default_factory=dict)
    sent_values: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    closed: bool = False

    def send(self, fields: list[str]) -> None:
        if self.closed or self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("paper_tws_slow_client_dropped", client_id=self.client_id, peer=self.peer)
            self.close()  # a client that stopped reading; TWS drops it too
            return
        self.writer.write(pack(fields))

    def send_all(self, messages: list[list[str]]) -> None:
        """Several messages in one write (a long answer: one system call, not one each)."""
        if self.closed or self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("paper_tws_slow_client_dropped", client_id=self.client_id, peer=self.peer)
            self.close()
            return
        self.writer.write(b"".join(pack(fields) for fields in messages))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


class PaperTWS:
    """The paper TWS: listen on `host:port`, serve API clients from one `Brokerage`.

    `port=0` picks a free port (read `.port` after `start()`). `pacing_limit` messages per
    `pacing_window` seconds per client; beyond it error 100 and the message is dropped.
    `tick_interval > 0` moves the seeded price paths (`feed`) every that many seconds.
    Without `engine`/`universe`/`feed` a fresh default universe, engine and feed (`seed`) are
    built; with `control_port` (0 = any free port) the HTTP control port starts and stops
    with the server (read `.control_port` after `start()`).
    """

    def __init__(
        self,
        engine: Any = None,
        universe: Universe | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        feed: Any = None,
        seed: int = 7,
        control_port: int | None = None,
        max_clients: int = 32,
        pacing_limit: int = 50,
        pacing_window: float = 1.0,
        tick_interval: float = 0.0,
        state_file: str | Path | None = None,
        save_delay: float = 0.2,
        server_version: int = MAX_SERVER_VERSION,
        clock: Clock = SYSTEM_CLOCK,
        max_market_data_lines: int = md_lines.DEFAULT_LINES,
    ) -> None:
        if universe is None:
            universe = engine.universe if engine is not None else Universe()
        if engine is None:
            from bracketgate.sim.engine import Brokerage

            engine = Brokerage(universe)
        self.engine = engine
        self.universe = universe
        self.feed = feed if feed is not None else PriceFeed(universe, seed=seed)
        self.control_port = control_port
        self._control: Any = None
        self.host = host
        self.port = port
        self.max_clients = max_clients
        self.pacing_limit = pacing_limit
        self.pacing_window = pacing_window
        self.tick_interval = tick_interval
        self.state_file = Path(state_file) if state_file else None
        self.save_delay = save_delay
        self.server_version = server_version
        self.clock = clock
        self._server: asyncio.base_events.Server | None = None
        self._sessions: dict[int, Session] = {}
        self._conns: set[Session] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reopen: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._save_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commission: dict[int, float] = {}          # permId -> commission so far
        self._up = asyncio.Event()
        self.saved = asyncio.Event()  # set after every state-file write (tests wait on it)
        self.restarts = 0
        self.down_until: float | None = None
        self._subscribed = False
        # pacing counters over the server's life (sessions come and go); test switches
        self.pacing_errors = 0
        self.pacing_dropped = 0
        self.ack_holds: dict[tuple[str, str], str] = {}   # (orderRef, orderType) -> lose | mute
        self._muted: set[tuple[int, int]] = set()         # (clientId, orderId) never pushed
        self.answer_holds = AnswerHolds()                 # answers lost or late (sim/holds.py)
        self.lost_orders = 0
        # concurrent reqMktData lines over all clients; past them error 101 (sim/md_lines.py)
        self.max_market_data_lines = max_market_data_lines
        self.md_line_refusals = 0
        # benchmarks: called with each placeOrder the session handles (what-if ones too), before
        # the engine sees it (bench/bench_latency.py takes its receive time)
        self.on_place_order: Callable[[PlaceOrder], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def client_ids(self) -> list[int]:
        return sorted(self._sessions)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._subscribed:
            self.engine.subscribe(self._on_event)
            self._subscribed = True
        self._rebuild_commissions()
        await self._listen()
        if self.control_port is not None:
            from bracketgate.sim.control import ControlServer

            self._control = ControlServer(self, host=self.host, port=self.control_port)
            await self._control.start()
            self.control_port = self._control.port
        if self.tick_interval > 0 and self.feed is not None:
            self._ticker = asyncio.create_task(self._tick_loop(), name="paper-tws-ticker")
        log.info("paper_tws_started", host=self.host, port=self.port,
                 server_version=self.server_version, state_file=str(self.state_file or ""))

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.down_until = None
        self._up.set()

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        self._up.clear()
        if server is not None:
            server.close()

    def _drop_all(self) -> None:
        for s in list(self._conns):
            s.close()
        self._conns.clear()
        self._sessions.clear()

    async def stop(self) -> None:
        """Close the listener and every session; save the state if a state file is set."""
        for task in (self._reopen, self._ticker):
            if task is not None:
                task.cancel()
        self._reopen = self._ticker = None
        if self._control is not None:
            await self._control.stop()
            self._control = None
        await self._close_listener()
        self._drop_all()
        tasks = list(self._tasks)
        if tasks:  # closed sockets end their handlers; cancel only one that hangs
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for t in pending:
                t.cancel()
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        self.save_state()
        if self._subscribed:  # the engine may outlive this server (tests reuse engines)
            self.engine.unsubscribe(self._on_event)
            self._subscribed = False
        log.info("paper_tws_stopped", port=self.port)

    async def restart(self, downtime: float = 0.0) -> None:
        """A gateway restart: drop every connection, refuse connects for `downtime` seconds,
        keep the brokerage state."""
        self.restarts += 1
        await self._close_listener()
        n = len(self._sessions)
        self._drop_all()
        self.down_until = self.clock.monotonic() + downtime
        log.warning("paper_tws_restart", downtime=downtime, dropped_clients=n)
        if self._reopen is not None:
            self._reopen.cancel()
        self._reopen = asyncio.create_task(self._reopen_after(downtime), name="paper-tws-reopen")

    async def _reopen_after(self, downtime: float) -> None:
        if downtime > 0:
            await asyncio.sleep(downtime)  # the downtime itself, not a synchronisation
        await self._listen()
        log.info("paper_tws_up_again", port=self.port)

    async def wait_up(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._up.wait(), timeout)

    def inject(self, code: int, message: str | None = None) -> int:
        """Send a connectivity (or any) error with reqId -1 to every API client; returns how
        many got it."""
        text = message or CONNECTIVITY_MESSAGES.get(code, f"Injected message {code}")
        sessions = list(self._sessions.values())
        for s in sessions:
            s.send(codec.error(-1, code, text, s.version))
        log.info("paper_tws_inject", code=code, clients=len(sessions))
        return len(sessions)

    def reset(self) -> None:
        """Back to a fresh day: the engine resets, prices return to the start, sessions stay."""
        self.engine.reset()
        if self.feed is not None:
            self.feed.reset()
        self._commission.clear()
        self.ack_holds.clear()
        self._muted.clear()
        self.answer_holds.clear()
        for s in self._sessions.values():
            s.sent_values.clear()
        self._schedule_flush()
        self._schedule_save()
        log.info("paper_tws_reset")

    # ------------------------------------------------------------------ connections

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        if self._server is None:  # accepted in the instant the listener closed
            writer.close()
            return
        session = Session(writer=writer, peer=peer)
        self._conns.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await self._serve(session, reader)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            log.debug("paper_tws_peer_gone", peer=peer, client_id=session.client_id, reason=repr(e))
        except WireError as e:
            log.warning("paper_tws_protocol_error", peer=peer, client_id=session.client_id,
                        error=str(e))
        finally:
            self._conns.discard(session)
            if session.client_id is not None and self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]
                log.info("paper_tws_client_disconnected", client_id=session.client_id)
            session.close()

    async def _serve(self, s: Session, reader: asyncio.StreamReader) -> None:
        prefix = await reader.readexactly(4)
        if prefix != API_PREFIX:
            raise WireError(f"bad handshake prefix {prefix!r}")
        size = int.from_bytes(await reader.readexactly(4), "big")
        if size > 1024:
            raise WireError(f"handshake frame of {size} bytes")
        offer = parse_version_offer(await reader.readexactly(size))
        s.version = offer.negotiate(self.server_version)
        s.send([str(s.version), codec.conn_time(self.clock.now())])
        decoder = FrameDecoder()
        while not s.closed:
            data = await reader.read(65536)
            if not data:
                return
            for payload in decoder.feed(data):
                fields = split_fields(payload)
                if s.client_id is None:
                    self._start_api(s, fields)
                    if s.closed:
                        return
                    continue
                if not self._admit(s):
                    continue
                self._dispatch(s, fields)

    def _start_api(self, s: Session, fields: list[str]) -> None:
        msg = codec.decode_client(fields, s.version)
        if not isinstance(msg, StartApi):
            raise WireError(f"expected startApi, got message {fields[:1]}")
        if msg.client_id in self._sessions:
            log.warning("paper_tws_client_id_in_use", client_id=msg.client_id, peer=s.peer)
            s.send(codec.error(-1, 326, "Unable to connect as the client id is already in use. "
                                        "Retry with a unique client id.", s.version))
            s.close()
            return
        if len(self._sessions) >= self.max_clients:
            log.warning("paper_tws_too_many_clients", client_id=msg.client_id, peer=s.peer)
            s.send(codec.error(-1, 502, f"Couldn't connect to TWS. The maximum number of API "
                                        f"clients ({self.max_clients}) is connected.", s.version))
            s.close()
            return
        s.client_id = msg.client_id
        self._sessions[msg.client_id] = s
        account = self._account_id()
        s.send(codec.managed_accounts([account]))
        s.send(codec.next_valid_id(self._next_valid_id(msg.client_id)))
        for frame in codec.farm_status(s.version):
            s.send(frame)
        log.info("paper_tws_client_connected", client_id=msg.client_id, version=s.version,
                 peer=s.peer, clients=len(self._sessions))

    def _admit(self, s: Session) -> bool:
        """Pacing: at most `pacing_limit` messages per `pacing_window` seconds, else error 100."""
        if self.pacing_limit <= 0:
            return True
        now = self.clock.monotonic()
        q = s.pacing
        while q and now - q[0] >= self.pacing_window:
            q.popleft()
        if len(q) < self.pacing_limit:
            q.append(now)
            s.peak_window = max(s.peak_window, len(q))
            return True
        s.dropped += 1
        self.pacing_dropped += 1
        if q[0] != s.paced_window_start:  # one error per window, as TWS does not flood either
            s.paced_window_start = q[0]
            s.pacing_errors += 1
            self.pacing_errors += 1
            s.send(codec.error(-1, 100, f"Max rate of messages per second has been exceeded:"
                                        f"max={self.pacing_limit} rec={len(q) + 1} (1)", s.version))
            log.warning("paper_tws_pacing", client_id=s.client_id, limit=self.pacing_limit)
        return False

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, s: Session, fields: list[str]) -> None:
        try:
            msg = codec.decode_client(fields, s.version)
        except WireError as e:
            log.warning("paper_tws_bad_message", client_id=s.client_id, error=str(e),
                        msg_id=fields[0] if fields else "")
            s.send(codec.error(-1, 320, f"Error reading request. {e}", s.version))
            return
        handler = self._handlers.get(type(msg))
        if handler is None:  # pragma: no cover - every decoded type has a handler
            return
        try:
            handler(self, s, msg)
        except Exception as e:  # a bug in one request must not kill the session: log, answer
            log.exception("paper_tws_handler_failed", client_id=s.client_id,
                          request=type(msg).__name__)
            s.send(codec.error(getattr(msg, "req_id", getattr(msg, "order_id", -1)), 320,
                               f"Error reading request: {type(e).__name__} in the paper TWS",
                               s.version))

    def _h_place(self, s: Session, m: PlaceOrder) -> None:
        if self.on_place_order is not None:
            self.on_place_order(m)
        cid = s.client_id or 0
        if not m.contract.exchange:  # TWS wants the routing exchange even with a conId
            self._reject(s, m, 321, "Error validating request.-'bN' : cause - Missing order "
                                    "exchange.", modify=self._live_order(cid, m.order_id)
                         is not None or m.what_if)
            return
        refusal = unsupported_attribute(m)
        if refusal is not None:
            self._reject(s, m, *refusal, modify=self._live_order(cid, m.order_id) is not None
                         or m.what_if)
            return
        try:
            contract = (combos.bag_contract(self.universe, m.contract.symbol,
                                            m.contract.currency, m.contract.exchange,
                                            m.combo_legs)
                        if m.contract.sec_type.upper() == "BAG" else self._resolve(m.contract))
        except UnknownContract:
            s.send(codec.error(m.order_id, 200, NO_SECURITY, s.version))
            return
        except OrderRejected as e:  # a BAG's legs refused (sim/combos.py)
            self._reject(s, m, e.code, e.message, modify=self._live_order(cid, m.order_id)
                         is not None or m.what_if)
            return
        if m.n_conditions:
            self._reject(s, m, 321, "Error validating request.-'bN' : cause - The paper TWS "
                                    "does not support order conditions", modify=False)
            return
        if m.trail.adjusted_order_type:  # adjustable stops: refused, never silently dropped
            self._reject(s, m, 321, "Error validating request.-'bN' : cause - The paper TWS "
                                    "does not support adjustable stops", modify=False)
            return
        hold = self.ack_holds.pop((m.order_ref, m.order_type), None) \
            if self.ack_holds and not m.what_if else None
        if hold == "lose":  # test switch: the message is lost on its way, IB never sees it
            self.lost_orders += 1
            log.info("paper_tws_order_lost", client_id=cid, order_id=m.order_id,
                     order_ref=m.order_ref, order_type=m.order_type)
            return
        if hold == "mute":  # test switch: IB takes it but never pushes its status
            self._muted.add((cid, m.order_id))
        existing = self._live_order(cid, m.order_id)
        order = SimOrder(
            client_id=cid, order_id=m.order_id,
            perm_id=existing.perm_id if existing is not None else 0,
            contract=contract, action=m.action.upper(),  # type: ignore[arg-type]
            total_quantity=m.total_quantity, order_type=m.order_type,  # type: ignore[arg-type]
            lmt_price=m.lmt_price, aux_price=m.aux_price, tif=m.tif.upper(),
            account=self._account_id(), order_ref=m.order_ref, parent_id=m.parent_id,
            oca_group=m.oca_group, oca_type=m.oca_type, transmit=m.transmit,
            outside_rth=m.outside_rth, trailing_percent=m.trail.trailing_percent,
            trail_stop_price=m.trail.trail_stop_price, lmt_price_offset=m.trail.lmt_price_offset,
        )
        if m.what_if:
            try:
                result = self.engine.what_if(order)
            except OrderRejected as e:
                s.send(codec.error(m.order_id, e.code, e.message, s.version))
                return
            s.send(codec.open_order(order, s.version, what_if=result))
            return
        if existing is None:
            order.perm_id = self.engine.next_perm_id()
        try:
            self.engine.place(order)
        except OrderRejected as e:
            self._reject(s, m, e.code, e.message, modify=existing is not None,
                         perm_id=order.perm_id)
            return
        log.info("paper_tws_order", client_id=cid, order_id=m.order_id, perm_id=order.perm_id,
                 action=order.action, qty=order.total_quantity, order_type=order.order_type,
                 symbol=contract.local_symbol, order_ref=order.order_ref,
                 modify=existing is not None, transmit=order.transmit, parent_id=order.parent_id)

    def _reject(self, s: Session, m: PlaceOrder, code: int, message: str, *, modify: bool,
                perm_id: int = 0) -> None:
        """TWS answers a refused order with the error (reqId = orderId); a refused NEW order
        then also gets its final orderStatus (Inactive for 201, Cancelled otherwise).
        103 names an id that belongs to another order, so it gets no status."""
        s.send(codec.error(m.order_id, code, message, s.version))
        log.info("paper_tws_order_rejected", client_id=s.client_id, order_id=m.order_id,
                 code=code, message=message, modify=modify)
        if modify or code in (103, 104):  # 104: the id's order is Filled, it stays so
            return
        status = "Inactive" if code == 201 else "Cancelled"
        s.send(codec.rejected_status(m.order_id, s.client_id or 0, status, m.total_quantity,
                                     perm_id, m.parent_id))

    def _h_cancel(self, s: Session, m: CancelOrder) -> None:
        if self.answer_holds and self.answer_holds.intercept(
                "cancel", lambda: self._h_cancel_now(s, m), self._order_ref_of(s, m.order_id)):
            return
        self._h_cancel_now(s, m)

    def _order_ref_of(self, s: Session, order_id: int) -> str:
        o = self._live_order(s.client_id or 0, order_id)
        return o.order_ref if o is not None else ""

    def _h_cancel_now(self, s: Session, m: CancelOrder) -> None:
        try:
            self.engine.cancel(s.client_id or 0, m.order_id)
        except OrderRejected as e:
            s.send(codec.error(m.order_id, e.code, e.message, s.version))

    def _h_mkt_data(self, s: Session, m: ReqMktData) -> None:
        if md_lines.refused(self, s, m.req_id):
            return
        if m.contract.sec_type.upper() == "BAG":
            combos.start_quotes(self, s, m)
            return
        try:
            contract = self._resolve(m.contract)
        except UnknownContract:
            s.send(codec.error(m.req_id, 200, NO_SECURITY, s.version))
            return
        s.send(codec.market_data_type(m.req_id, 1))
        self._send_quote(s, m.req_id, contract, first=True)
        if m.snapshot or m.regulatory_snapshot:
            s.send(codec.tick_snapshot_end(m.req_id))
        else:
            s.mkt_data[m.req_id] = (contract.con_id, False)

    def _send_quote(self, s: Session, req_id: int, c: SimContract, first: bool = False) -> None:
        bid, ask, last, bid_size, ask_size, last_size = self._quote(c)
        s.send(codec.tick_price(req_id, codec.BID, bid, bid_size))
        s.send(codec.tick_price(req_id, codec.ASK, ask, ask_size))
        s.send(codec.tick_price(req_id, codec.LAST, last, last_size))
        if first:
            s.send(codec.tick_price(req_id, codec.CLOSE, self._close_price(c), 0))

    def _h_req_id(self, s: Session, m: ReqId) -> None:
        if m.msg_id == codec.CANCEL_MKT_DATA:
            s.mkt_data.pop(m.req_id, None)
            s.combo_quotes.pop(m.req_id, None)
        elif m.msg_id == codec.CANCEL_ACCOUNT_SUMMARY:
            s.account_summary.pop(m.req_id, None)
        elif m.msg_id == codec.CANCEL_POSITIONS_MULTI:
            s.positions_multi.discard(m.req_id)
        elif m.msg_id == codec.CANCEL_ACCOUNT_UPDATES_MULTI:
            s.account_multi.pop(m.req_id, None)
        elif m.msg_id == codec.CANCEL_PNL:
            s.pnl.discard(m.req_id)
        elif m.msg_id == codec.CANCEL_PNL_SINGLE:
            s.pnl_single.pop(m.req_id, None)
        elif m.msg_id == codec.REQ_MARKET_RULE:
            tick = codec.market_rule_tick(m.req_id)
            if tick is not None:
                s.send(codec.market_rule(m.req_id, tick))
        self._forget_sent(s, m.req_id)

    def _h_simple(self, s: Session, m: Simple) -> None:
        cid = s.client_id or 0
        if m.msg_id in (codec.REQ_OPEN_ORDERS, codec.REQ_ALL_OPEN_ORDERS):
            which = cid if m.msg_id == codec.REQ_OPEN_ORDERS else 0
            if not (self.answer_holds and self.answer_holds.intercept(
                    "open_orders", lambda: self._send_open_orders(s, which))):
                self._send_open_orders(s, which)
        elif m.msg_id == codec.REQ_MANAGED_ACCTS:
            s.send(codec.managed_accounts([self._account_id()]))
        elif m.msg_id == codec.REQ_CURRENT_TIME:
            s.send(codec.current_time(self.clock.now().timestamp()))
        elif m.msg_id == codec.REQ_GLOBAL_CANCEL:
            log.info("paper_tws_global_cancel", client_id=cid)
            self.engine.global_cancel()
        elif m.msg_id == codec.REQ_POSITIONS:
            s.positions_sub = True
            account = self._account_id()
            for p in self.engine.positions():
                s.send(codec.position(account, p))
            s.send(codec.position_end())
        elif m.msg_id == codec.CANCEL_POSITIONS:
            s.positions_sub = False

    def _send_open_orders(self, s: Session, client_id: int) -> None:
        for o in self.engine.orders_for(client_id):
            s.send(self._open_order(o, s.version))
            s.send(codec.order_status(o))
        s.send(codec.open_order_end())

    def _h_flag(self, s: Session, m: ReqFlag) -> None:
        if m.msg_id == codec.REQ_IDS:
            s.send(codec.next_valid_id(self._next_valid_id(s.client_id or 0)))
        elif m.msg_id == codec.REQ_COMPLETED_ORDERS:
            if not (self.answer_holds and self.answer_holds.intercept(
                    "completed_orders", lambda: self._send_completed_orders(s))):
                self._send_completed_orders(s)
        # reqAutoOpenOrders / reqMarketDataType: accepted, nothing to answer

    def _send_completed_orders(self, s: Session) -> None:
        for o in self.engine.completed_orders():
            s.send(codec.completed_order(o, s.version, self._parent_perm_id(o)))
        s.send(codec.completed_orders_end())

    def _h_account_updates(self, s: Session, m: ReqAccountUpdates) -> None:
        s.account_sub = m.subscribe
        if not m.subscribe:
            self._forget_sent(s, "acct")
            self._forget_sent(s, "portfolio")
            return
        self._forget_sent(s, "acct")
        self._forget_sent(s, "portfolio")
        self._send_account_updates(s)
        s.send(codec.account_download_end(self._account_id()))

    def _h_executions(self, s: Session, m: ReqExecutions) -> None:
        execs = self._filtered_executions(m.filter)
        reports = {e.exec_id: codec.commission_report(e) for e in execs
                   if not combos.is_bag(e.contract)}

        def send_reports() -> None:   # a held answer: after the end, or never (sim/holds.py)
            s.send_all(list(reports.values()))

        held = bool(self.answer_holds) and self.answer_holds.intercept(
            "commission_reports", send_reports)
        out = []
        for e in execs:
            out.append(codec.exec_details(m.req_id, e, s.version))
            if not held and e.exec_id in reports:
                out.append(reports[e.exec_id])
        out.append(codec.exec_details_end(m.req_id))
        s.send_all(out)

    def _h_contract_details(self, s: Session, m: ReqContractDetails) -> None:
        spec = m.contract
        sec_type = spec.sec_type.upper()
        override = ""
        if sec_type == "BAG":  # as TWS: combos have no contract details
            s.send(codec.error(m.req_id, 321, combos.MSG_BAG_DETAILS, s.version))
            return
        if m.sec_id_type or m.sec_id:
            matches: list[SimContract] = []
        elif sec_type == "CONTFUT":
            futs = self._find(replace(spec, sec_type="FUT", last_trade=""))
            matches, override = futs[:1], "CONTFUT"
        else:
            matches = self._find(spec)
        if not matches:
            s.send(codec.error(m.req_id, 200, NO_SECURITY, s.version))
            return
        today = self.clock.now()
        for c in matches:
            s.send(codec.contract_details(m.req_id, c, s.version, today=today,
                                          extras=_extras(c), sec_type_override=override))
        s.send(codec.contract_details_end(m.req_id))

    def _h_account_summary(self, s: Session, m: ReqAccountSummary) -> None:
        tags = frozenset(t.strip() for t in m.tags.split(",") if t.strip())
        wanted = None if not tags or "$LEDGER:ALL" in tags else tags
        s.account_summary[m.req_id] = wanted
        self._send_account_summary(s, m.req_id, wanted)
        s.send(codec.account_summary_end(m.req_id))

    def _h_multi(self, s: Session, m: ReqMulti) -> None:
        account = self._account_id()
        if m.msg_id == codec.REQ_POSITIONS_MULTI:
            s.positions_multi.add(m.req_id)
            for p in self.engine.positions():
                s.send(codec.position_multi(m.req_id, account, p, m.model_code))
            s.send(codec.position_multi_end(m.req_id))
        else:
            s.account_multi[m.req_id] = m.model_code
            self._send_account_multi(s, m.req_id, m.model_code)
            s.send(codec.account_update_multi_end(m.req_id))

    def _h_sec_def(self, s: Session, m: ReqSecDefOptParams) -> None:
        rows = self.universe.sec_def_opt_params(m.underlying_symbol, m.underlying_con_id,
                                                exchange=m.fut_fop_exchange)
        for r in rows:
            s.send(codec.sec_def_opt_params(m.req_id, r.exchange, r.underlying_con_id,
                                            r.trading_class, float(r.multiplier or 1),
                                            r.expirations, r.strikes))
        s.send(codec.sec_def_opt_params_end(m.req_id))

    def _h_pnl(self, s: Session, m: ReqPnL) -> None:
        if m.con_id:
            if m.con_id not in self.universe:
                s.send(codec.error(m.req_id, 200, NO_SECURITY, s.version))
                return
            s.pnl_single[m.req_id] = m.con_id
            self._send_pnl_single(s, m.req_id, m.con_id, force=True)
        else:
            s.pnl.add(m.req_id)
            self._send_pnl(s, m.req_id, force=True)

    def _h_unsupported(self, s: Session, m: Unsupported) -> None:
        if m.msg_id == 81 and m.req_id is not None and len(m.fields) > 2:  # reqMatchingSymbols
            pattern = m.fields[2].upper()
            found = [c for c in self.universe.underlyings() if c.symbol.startswith(pattern)]
            seen, unique = set(), []
            for c in found:  # one row per (symbol, secType): the front future stands for all
                if (c.symbol, c.sec_type) not in seen:
                    seen.add((c.symbol, c.sec_type))
                    unique.append(c)
            s.send(codec.symbol_samples(m.req_id, unique[:16], s.version))
            return
        empty = {24: codec.scanner_parameters, 80: codec.family_codes,
                 82: codec.mkt_depth_exchanges, 85: codec.news_providers}.get(m.msg_id)
        if empty is not None:  # the client waits for this list: an empty one ends the wait
            s.send(empty())
            return
        if m.msg_id == 79 and m.req_id is not None:
            s.send(codec.soft_dollar_tiers(m.req_id))
            return
        log.info("paper_tws_unsupported", client_id=s.client_id, msg_id=m.msg_id, req_id=m.req_id)
        if m.req_id is None:
            return
        if m.msg_id in _HMDS_REQUESTS:
            s.send(codec.error(m.req_id, 162, "Historical Market Data Service error message:"
                                              "not available in the paper TWS", s.version))
        else:  # a non-warning code, so the client's request ends instead of timing out
            s.send(codec.error(m.req_id, 10089, f"Requested market data requires additional "
                                                f"subscription for API. Request {m.msg_id} is "
                                                f"not offered by the paper TWS.", s.version))

    _handlers: dict[type, Callable[..., None]] = {
        PlaceOrder: _h_place, CancelOrder: _h_cancel, ReqMktData: _h_mkt_data, ReqId: _h_req_id,
        Simple: _h_simple, ReqFlag: _h_flag, ReqAccountUpdates: _h_account_updates,
        ReqExecutions: _h_executions, ReqContractDetails: _h_contract_details,
        ReqAccountSummary: _h_account_summary, ReqMulti: _h_multi, ReqSecDefOptParams: _h_sec_def,
        ReqPnL: _h_pnl, Unsupported: _h_unsupported,
        StartApi: lambda self, s, m: s.send(codec.error(-1, 10000, "startApi sent twice",
                                                        s.version)),
    }

    # ------------------------------------------------------------------ engine events

    def _on_event(self, event: BrokerEvent) -> None:
        if isinstance(event, OrderChanged):
            o = event.order
            if self._muted and (o.client_id, o.order_id) in self._muted:
                return
            for s in self._order_audience(o.client_id):
                s.send(self._open_order(o, s.version))
                s.send(codec.order_status(o))
        elif isinstance(event, ExecutionAdded):
            e = event.execution
            self._commission[e.perm_id] = self._commission.get(e.perm_id, 0.0) + e.commission
            for s in self._order_audience(e.client_id):
                s.send(codec.exec_details(-1, e, s.version))
                if not combos.is_bag(e.contract):  # a combo's commission is on its legs
                    s.send(codec.commission_report(e))
        elif isinstance(event, PositionChanged):
            account = self._account_id()
            for s in self._sessions.values():
                if s.positions_sub:
                    s.send(codec.position(account, event.position))
                for req_id in s.positions_multi:
                    s.send(codec.position_multi(req_id, account, event.position))
        elif isinstance(event, PriceChanged):
            c = self.universe.get(event.con_id)
            if c is not None:
                for s in self._sessions.values():
                    for req_id, (con_id, _) in s.mkt_data.items():
                        if con_id == event.con_id:
                            self._send_quote(s, req_id, c)
                combos.on_price(self, event.con_id)
        elif isinstance(event, OrderError):
            s = self._sessions.get(event.client_id)
            if s is not None:
                s.send(codec.error(event.order_id, event.code, event.message, s.version))
        if not isinstance(event, OrderError):
            self._schedule_flush()
        self._schedule_save()

    def _order_audience(self, client_id: int) -> list[Session]:
        """The placing client and every client 0 (which sees all orders)."""
        out = []
        s = self._sessions.get(client_id)
        if s is not None:
            out.append(s)
        if client_id != 0:
            s0 = self._sessions.get(0)
            if s0 is not None:
                out.append(s0)
        return out

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self._loop is None:
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what changed since the last flush to every subscription (values, portfolio, P&L)."""
        self._flush_scheduled = False
        for s in list(self._sessions.values()):
            if s.closed:
                continue
            if s.account_sub:
                self._send_account_updates(s)
            for req_id, model in s.account_multi.items():
                self._send_account_multi(s, req_id, model)
            for req_id, tags in s.account_summary.items():
                if self._send_account_summary(s, req_id, tags):
                    s.send(codec.account_summary_end(req_id))
            for req_id in s.pnl:
                self._send_pnl(s, req_id)
            for req_id, con_id in s.pnl_single.items():
                self._send_pnl_single(s, req_id, con_id)

    # ------------------------------------------------------------------ subscription senders

    def _send_account_updates(self, s: Session) -> None:
        account = self._account_id()
        changed = False
        for tag, value, ccy in self.engine.account_values():
            key = ("acct", tag, ccy)
            if s.sent_values.get(key) != value:
                s.sent_values[key] = value
                s.send(codec.account_value(tag, value, ccy, account))
                changed = True
        for pos, mkt_price, mkt_value, upnl, rpnl in self.engine.portfolio():
            key = ("portfolio", pos.contract.con_id)
            row = (pos.quantity, mkt_price, mkt_value, pos.avg_cost, upnl, rpnl)
            if s.sent_values.get(key) != row:
                s.sent_values[key] = row
                s.send(codec.portfolio_value(pos, mkt_price, mkt_value, upnl, rpnl, account))
                changed = True
        if changed:
            s.send(codec.account_update_time(self.clock.now().strftime("%H:%M")))

    def _send_account_multi(self, s: Session, req_id: int, model: str) -> None:
        account = self._account_id()
        for tag, value, ccy in self.engine.account_values():
            key = (req_id, "multi", tag, ccy)
            if s.sent_values.get(key) != value:
                s.sent_values[key] = value
                s.send(codec.account_update_multi(req_id, account, model, tag, value, ccy))

    def _send_account_summary(self, s: Session, req_id: int, tags: frozenset[str] | None) -> bool:
        account = self._account_id()
        sent = False
        for tag, value, ccy in self.engine.account_values():
            if ccy == "BASE" or (tags is not None and tag not in tags):
                continue
            key = (req_id, "summary", tag, ccy)
            if s.sent_values.get(key) != value:
                s.sent_values[key] = value
                s.send(codec.account_summary(req_id, account, tag, value, ccy))
                sent = True
        return sent

    def _send_pnl(self, s: Session, req_id: int, force: bool = False) -> None:
        row = tuple(self.engine.pnl())
        key = (req_id, "pnl")
        if force or s.sent_values.get(key) != row:
            s.sent_values[key] = row
            s.send(codec.pnl(req_id, *row))

    def _send_pnl_single(self, s: Session, req_id: int, con_id: int, force: bool = False) -> None:
        row = tuple(self.engine.pnl_single(con_id))
        key = (req_id, "pnl_single")
        if force or s.sent_values.get(key) != row:
            s.sent_values[key] = row
            s.send(codec.pnl_single(req_id, *row))

    @staticmethod
    def _forget_sent(s: Session, first: Any) -> None:
        for key in [k for k in s.sent_values if k[0] == first]:
            del s.sent_values[key]

    # ------------------------------------------------------------------ engine reads

    def _account_id(self) -> str:
        return self.engine.account.account_id

    def _next_valid_id(self, client_id: int) -> int:
        return int(self.engine.max_order_id(client_id)) + 1

    def _live_order(self, client_id: int, order_id: int) -> SimOrder | None:
        perm = self.engine.by_client.get((client_id, order_id))
        if perm is None:
            return None
        o = self.engine.orders.get(perm)
        return o if o is not None and not o.is_terminal else None

    def _parent_perm_id(self, o: SimOrder) -> int | None:
        if not o.parent_id:
            return None
        return self.engine.by_client.get((o.client_id, o.parent_id))

    def _open_order(self, o: SimOrder, version: int) -> list[str]:
        commission = self._commission.get(o.perm_id)
        return codec.open_order(o, version, commission=commission,
                                commission_currency=o.contract.currency if commission else "")

    def _rebuild_commissions(self) -> None:
        self._commission.clear()
        for e in self.engine.executions:
            self._commission[e.perm_id] = self._commission.get(e.perm_id, 0.0) + e.commission

    def _filtered_executions(self, f: codec.ExecFilter) -> list[SimExecution]:
        return self.engine.executions_since(
            client_id=f.client_id or None, since=_parse_filter_time(f.time), symbol=f.symbol,
            sec_type=f.sec_type, exchange=f.exchange, side=f.side, account=f.account)

    def _quote(self, c: SimContract) -> tuple[float, float, float, float, float, float]:
        last = self.engine.price(c.con_id)
        q = self.feed.quote(c.con_id, last=last)
        return q.bid, q.ask, q.last, q.bid_size, q.ask_size, q.last_size

    def _close_price(self, c: SimContract) -> float:
        try:
            return self.universe.start_price(c.con_id)
        except KeyError:
            return self.engine.price(c.con_id)

    # ------------------------------------------------------------------ contracts

    def _find(self, spec: ContractSpec) -> list[SimContract]:
        if spec.con_id:
            c = self.universe.get(spec.con_id)
            return [c] if c is not None else []
        if not spec.symbol and not spec.local_symbol:
            return []
        return self.universe.find(
            symbol=spec.symbol, sec_type=spec.sec_type, exchange=spec.exchange,
            currency=spec.currency, expiry=spec.last_trade, strike=spec.strike, right=spec.right,
            local_symbol=spec.local_symbol, trading_class=spec.trading_class,
            multiplier=spec.multiplier,
        )

    def _resolve(self, spec: ContractSpec) -> SimContract:
        matches = self._find(spec)
        if len(matches) != 1:
            raise UnknownContract(f"{len(matches)} contracts match {spec.describe()}", matches)
        return matches[0]

    def resolve_for_control(self, symbol: str = "", con_id: int = 0, sec_type: str = "",
                            local_symbol: str = "") -> SimContract:
        """The contract a control command names: conId, localSymbol, or a stock's symbol."""
        if con_id:
            c = self.universe.get(con_id)
            if c is None:
                raise UnknownContract(f"unknown conId {con_id}")
            return c
        spec = ContractSpec(symbol=symbol.upper(), sec_type=(sec_type or ("" if local_symbol
                                                                         else "STK")).upper(),
                            local_symbol=local_symbol)
        return self._resolve(spec)

    # ------------------------------------------------------------------ prices

    async def _tick_loop(self) -> None:
        """Move the seeded price paths every `tick_interval` seconds (off in tests)."""
        while True:
            await asyncio.sleep(self.tick_interval)  # the market's clock, not a synchronisation
            self.step_prices()

    def step_prices(self) -> int:
        """One step of every price path, handed to the engine; returns the number of moves."""
        if self.feed is None:
            return 0
        for c in self.universe.underlyings():  # a control-port move is the path's new start
            self.feed.prices[c.con_id] = self.engine.price(c.con_id)
        moves = self.feed.step()
        for con_id, price in moves:
            self.engine.set_price(con_id, price)
        return len(moves)

    # ------------------------------------------------------------------ state file

    def _schedule_save(self) -> None:
        if self.state_file is None or self._loop is None or self._save_handle is not None:
            return
        self._save_handle = self._loop.call_later(self.save_delay, self._save_now)

    def _save_now(self) -> None:
        self._save_handle = None
        self.save_state()

    def save_state(self) -> None:
        """Write the engine state atomically to the state file (if any)."""
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(self.engine.to_dict(), sort_keys=True))
        os.replace(tmp, self.state_file)
        self.saved.set()
        log.debug("paper_tws_state_saved", path=str(self.state_file))

    # ------------------------------------------------------------------ control views

    def down_for(self) -> float:
        """Seconds left of a restart's downtime (0 when up)."""
        if self.is_up or self.down_until is None:
            return 0.0
        return max(self.down_until - self.clock.monotonic(), 0.0)

    def sessions_view(self) -> list[dict[str, Any]]:
        return [{"clientId": cid, "version": s.version, "peer": s.peer, "dropped": s.dropped,
                 "pacingErrors": s.pacing_errors, "peakPerWindow": s.peak_window}
                for cid, s in sorted(self._sessions.items())]


def _parse_filter_time(text: str) -> float | None:
    """ExecutionFilter.time: `yyyymmdd hh:mm:ss` (optionally with a zone) -> epoch, UTC."""
    text = text.strip()
    if not text:
        return None
    parts = text.replace("-", " ").split()
    try:
        dt = datetime.strptime(" ".join(parts[:2]), "%Y%m%d %H:%M:%S")
    except ValueError:
        log.warning("paper_tws_bad_exec_filter_time", time=text)
        return None
    return dt.replace(tzinfo=timezone.utc).timestamp()


def _extras(c: SimContract) -> codec.ContractExtras:
    if c.sec_type == "OPT":
        return codec.ContractExtras(under_symbol=c.symbol, under_sec_type="STK")
    if c.sec_type == "FUT":
        return codec.ContractExtras(under_symbol=c.symbol, under_sec_type="IND",
                                    time_zone="US/Central")
    industry, category, subcategory = _STOCK_CLASSIFICATION.get(c.symbol, ("", "", ""))
    isin = _ISIN.get(c.symbol)
    return codec.ContractExtras(industry=industry, category=category, subcategory=subcategory,
                                sec_ids=(("ISIN", isin),) if isin else ())


_ISIN = {"AAPL": "US0378331005", "MSFT": "US5949181045", "TSLA": "US88160R1014",
         "SPY": "US78462F1030", "NVDA": "US67066G1040", "AMZN": "US0231351067"}
_STOCK_CLASSIFICATION = {
    "AAPL": ("Technology", "Computers", "Computers"),
    "MSFT": ("Technology", "Software", "Applications Software"),
    "TSLA": ("Consumer, Cyclical", "Auto Manufacturers", "Auto-Cars/Light Trucks"),
    "NVDA": ("Technology", "Semiconductors", "Electronic Components-Semicon"),
    "AMZN": ("Communications", "Internet", "E-Commerce/Products"),
}


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The JSON state a previous run saved, or None when the file does not exist."""
    p = Path(path)
    if not p.exists():
        return None
    return json.loads(p.read_text())
