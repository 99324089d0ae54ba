"""ExecutionAgent: places approved brackets at IB and follows every leg to a terminal state.

It serves `execution.place` on the bus (the RiskGovernor asks it to place an ApprovedBracket),
writes the order intent to the journal BEFORE anything is sent, and turns the broker's
order updates and executions into agent-level OrderEvent / Fill messages (proposal_id and
agent_id come from its book, keyed by orderRef = proposal_id, so a restart can rebuild it).

State (one line each):
  _brackets: proposal_id -> Bracket          (every bracket placed or adopted this run)
  _by_order: order_id -> (proposal_id, Leg)   (this client's order ids)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from bus.messages import (
    ApprovedBracket,
    BracketOrderIds,
    BrokerExecution,
    BrokerOrderUpdate,
    Fill,
    Leg,
    OrderEvent,
    PlacementResult,
    Side,
)
from bus.errors import BrokerError
from core.clock import SYSTEM_CLOCK, Clock
from core.logs import get_logger
from structlog.contextvars import bound_contextvars

log = get_logger("agents.execution")

TERMINAL = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})


def _int_code(code: object) -> int | None:
    return code if isinstance(code, int) else None


class BrokerPort(Protocol):
    def allocate_bracket_ids(self) -> BracketOrderIds: ...
    async def place_bracket(self, bracket: ApprovedBracket, ids: BracketOrderIds | None = None) -> BracketOrderIds: ...
    async def cancel_order(self, order_id: int) -> bool: ...
    def existing_bracket(self, order_ref: str) -> BracketOrderIds | None: ...


class JournalPort(Protocol):
    async def record(self, kind: str, *, proposal_id: str | None = None, agent_id: str | None = None,
                     order_id: int | None = None, payload: Any = None) -> Any: ...
    async def record_intent(self, bracket: Any, order_ids: Any) -> Any: ...
    async def mark_intent(self, proposal_id: str, state: str, order_ids: Any = None) -> Any: ...


@dataclass
class Bracket:
    proposal_id: str
    agent_id: str
    symbol: str
    side: Side
    ids: BracketOrderIds
    status: dict[Leg, str] = field(default_factory=dict)
    filled: dict[Leg, float] = field(default_factory=dict)
    expiry_handle: asyncio.TimerHandle | None = None
    placed: bool = False               # IB acknowledged the placement (intent acked)

    def leg_of(self, order_id: int) -> Leg | None:
        if order_id == self.ids.entry:
            return Leg.ENTRY
        if order_id == self.ids.take_profit:
            return Leg.TAKE_PROFIT
        if order_id == self.ids.stop_loss:
            return Leg.STOP_LOSS
        return None

    @property
    def closed(self) -> bool:
        """Every leg terminal: the bracket no longer carries risk at IB."""
        return all(self.status.get(leg) in TERMINAL for leg in Leg)


class ExecutionAgent:
    def __init__(self, bus, broker: BrokerPort, *, journal: JournalPort | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._bus = bus
        self._broker = broker
        self._journal = journal
        self._clock = clock
        self._brackets: dict[str, Bracket] = {}
        self._by_order: dict[int, tuple[str, Leg]] = {}
        self._inflight: set[asyncio.Task] = set()
        self._placing = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def attach(self) -> None:
        self._bus.serve("execution.place", self.place)
        self._bus.subscribe(BrokerOrderUpdate, self._on_order_update, name="execution.orders")
        self._bus.subscribe(BrokerExecution, self._on_execution, name="execution.fills")

    # ------------------------------------------------------------------ placing

    async def place(self, bracket: ApprovedBracket) -> PlacementResult:
        p = bracket.proposal
        self._placing += 1
        self._idle.clear()
        try:
            with bound_contextvars(proposal_id=p.proposal_id, agent_id=p.agent_id):
                return await self._place(bracket)
        finally:
            self._placing -= 1
            if self._placing == 0:
                self._idle.set()

    async def _place(self, bracket: ApprovedBracket) -> PlacementResult:
        p = bracket.proposal
        existing = self._brackets.get(p.proposal_id)
        if existing is not None:  # already placed in this run: same ids, no second order
            return PlacementResult(proposal_id=p.proposal_id, ok=True, order_ids=existing.ids)
        try:
            ids = self._broker.allocate_bracket_ids()
        except BrokerError as e:
            log.warning("placement_failed", code=e.code, error=e.message)
            return PlacementResult(proposal_id=p.proposal_id, ok=False, error=e.message,
                                   code=_int_code(e.code))
        book = Bracket(p.proposal_id, p.agent_id, p.symbol, p.side, ids)
        self._track(book)
        if self._journal is not None:  # the intent is durable before anything is sent
            await self._journal.record_intent(bracket, ids)
        try:
            ids = await self._broker.place_bracket(bracket, ids)
        except BrokerError as e:
            return await self._placement_failed(book, e)
        book.placed = True
        await self._mark(p.proposal_id, "acked", ids)
        log.info("bracket_placed", order_id=ids.entry, take_profit_id=ids.take_profit,
                 stop_loss_id=ids.stop_loss, symbol=p.symbol, side=p.side.value, quantity=p.quantity)
        if p.cancel_entry_after_s:
            loop = asyncio.get_running_loop()
            book.expiry_handle = loop.call_later(p.cancel_entry_after_s, self._expire_entry, p.proposal_id)
        return PlacementResult(proposal_id=p.proposal_id, ok=True, order_ids=ids)

    async def _placement_failed(self, book: Bracket, e: BrokerError) -> PlacementResult:
        pid = book.proposal_id
        found: BracketOrderIds | None = getattr(e, "order_ids", None)
        if e.code == "DUPLICATE_ORDER_REF" and found is not None:
            # IB already has this proposal's orders (placed before a crash): adopt, never resend
            log.error("placement_duplicate_order_ref", order_id=found.entry)
            self._untrack(book)
            book.ids = found
            self._track(book)
            book.placed = True
            await self._mark(pid, "acked", found)
            return PlacementResult(proposal_id=pid, ok=True, order_ids=found)
        log.warning("placement_failed", code=e.code, error=e.message, order_id=book.ids.entry)
        await self._mark(pid, "failed")
        return PlacementResult(proposal_id=pid, ok=False, order_ids=book.ids, error=e.message,
                               code=_int_code(e.code))

    async def _mark(self, proposal_id: str, state: str, ids: BracketOrderIds | None = None) -> None:
        if self._journal is not None:
            await self._journal.mark_intent(proposal_id, state, ids)

    def _track(self, book: Bracket) -> None:
        self._brackets[book.proposal_id] = book
        for leg, oid in ((Leg.ENTRY, book.ids.entry), (Leg.TAKE_PROFIT, book.ids.take_profit),
                         (Leg.STOP_LOSS, book.ids.stop_loss)):
            if oid:
                self._by_order[oid] = (book.proposal_id, leg)

    def _untrack(self, book: Bracket) -> None:
        for oid in (book.ids.entry, book.ids.take_profit, book.ids.stop_loss):
            self._by_order.pop(oid, None)

    def adopt(self, proposal_id: str, agent_id: str, symbol: str, side: Side, ids: BracketOrderIds) -> None:
        """Take over a bracket placed by an earlier run (found at IB by orderRef)."""
        if proposal_id not in self._brackets:
            self._track(Bracket(proposal_id, agent_id, symbol, side, ids))

    def _expire_entry(self, proposal_id: str) -> None:
        book = self._brackets.get(proposal_id)
        if book is None or book.filled.get(Leg.ENTRY, 0) > 0 or book.status.get(Leg.ENTRY) in TERMINAL:
            return
        task = asyncio.get_running_loop().create_task(self._cancel_entry(book))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _cancel_entry(self, book: Bracket) -> None:
        with bound_contextvars(proposal_id=book.proposal_id, agent_id=book.agent_id):
            try:
                sent = await self._broker.cancel_order(book.ids.entry)
                log.info("entry_expired_cancel", order_id=book.ids.entry, sent=sent)
            except BrokerError as e:
                log.warning("entry_expired_cancel_failed", order_id=book.ids.entry, code=e.code,
                            error=e.message)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no placement is in flight (used on shutdown)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ following

    def _resolve(self, order_id: int, order_ref: str, parent_id: int | None) -> tuple[Bracket, Leg] | None:
        hit = self._by_order.get(order_id)
        if hit is not None:
            return self._brackets[hit[0]], hit[1]
        book = self._brackets.get(order_ref) if order_ref else None
        if book is not None:
            leg = book.leg_of(order_id)
            if leg is not None:
                return book, leg
        return None

    async def _on_order_update(self, u: BrokerOrderUpdate) -> None:
        found = self._resolve(u.order_id, u.order_ref, u.parent_id)
        if found is None:
            return  # not one of ours (manual order, another client)
        book, leg = found
        prev = book.status.get(leg)
        if prev == u.status and u.code is None and book.filled.get(leg, 0.0) == u.filled:
            return  # openOrder + orderStatus repeat the same state
        book.status[leg] = u.status
        book.filled[leg] = u.filled
        ev = OrderEvent(
            proposal_id=book.proposal_id, agent_id=book.agent_id, order_id=u.order_id, leg=leg,
            symbol=book.symbol, status=u.status, filled=u.filled, remaining=u.remaining,
            avg_fill_price=u.avg_fill_price, perm_id=u.perm_id, parent_id=u.parent_id,
            code=u.code, message=u.message, ts=self._clock.now(),
        )
        with bound_contextvars(proposal_id=book.proposal_id, agent_id=book.agent_id):
            log.info("order_event", order_id=u.order_id, leg=leg.value, status=u.status,
                     filled=u.filled, remaining=u.remaining, code=u.code)
            if self._journal is not None:
                await self._journal.record("order_status", proposal_id=book.proposal_id,
                                           agent_id=book.agent_id, order_id=u.order_id, payload=ev)
            await self._bus.publish(ev)
            if book.closed:
                if book.expiry_handle:
                    book.expiry_handle.cancel()
                log.info("bracket_closed", statuses={k.value: v for k, v in book.status.items()})
                if self._journal is not None and book.placed:
                    await self._journal.mark_intent(book.proposal_id, "done")

    async def _on_execution(self, ex: BrokerExecution) -> None:
        found = self._resolve(ex.order_id, ex.order_ref, None)
        if found is None:
            log.info("execution_not_ours", order_id=ex.order_id, exec_id=ex.exec_id)
            return
        book, leg = found
        fill = Fill(
            proposal_id=book.proposal_id, agent_id=book.agent_id, order_id=ex.order_id, leg=leg,
            exec_id=ex.exec_id, symbol=ex.symbol, side=ex.side, quantity=ex.quantity, price=ex.price,
            commission=ex.commission, realized_pnl=ex.realized_pnl, exec_time=ex.exec_time,
            ts=self._clock.now(),
        )
        with bound_contextvars(proposal_id=book.proposal_id, agent_id=book.agent_id):
            log.info("fill", order_id=ex.order_id, leg=leg.value, exec_id=ex.exec_id,
                     side=ex.side.value, quantity=ex.quantity, price=ex.price, commission=ex.commission)
            if self._journal is not None:
                await self._journal.record("fill", proposal_id=book.proposal_id, agent_id=book.agent_id,
                                           order_id=ex.order_id, payload=fill)
            await self._bus.publish(fill)
