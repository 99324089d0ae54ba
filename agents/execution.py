"""ExecutionAgent: places approved brackets at IB and follows every leg to a terminal state.

It serves `execution.place` on the bus (the RiskGovernor asks it to place an ApprovedBracket),
writes the order intent to the journal BEFORE anything is sent, and turns the broker's order
updates and executions into agent-level OrderEvent / Fill messages. Its book is keyed by
orderRef = proposal_id, so after any reconnect or restart it is rebuilt from what IB has
(`reconcile`, run by the broker before it reports READY) plus the journal's attribution.

It also guards every filled entry: when the stop is no longer working at IB (rejected,
cancelled, lost) while a position from the entry is open, it places a protective stop or
flattens (configurable) and raises an Alert.

State (one line each):
  _brackets: proposal_id -> Bracket          (every bracket placed or adopted this run)
  _by_order: order_id -> (proposal_id, Leg)   (the legs' order ids, guard orders included)
  _intents:  proposal_id -> IntentRecord      (journal intents loaded at start + this run's)
  _settling: proposal_id -> Future[ids | None] (placements whose connection dropped before the
                                                ack: the next reconcile says what IB has)
  _closed:   proposal_id -> when it closed       (closed brackets, forgotten CLOSED_KEEP_S later)
  _answers:  proposal_id -> [Future[PlacementResult]] (the requesters of a placement in flight)

Bounded: a closed bracket (every leg terminal, nothing open) is dropped from _brackets,
_by_order and _intents CLOSED_KEEP_S after it closed (late commission reports and repeats still
find it meanwhile), sooner only past CLOSED_KEEP_MAX closed ones. `prior_placement` still asks
the broker for IB's orders of its orderRef (an O(1) index, adapters/ib_refs.py, and the
retention's tombstones for pruned ones); its id, intent and decision stay in the journal
(`first_seen`). Start-up loads only the intents still needed
(Journal.intents_to_load); the highest order id ever used is read from the journal.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bracketgate.bus.errors import BrokerError
from bracketgate.bus.messages import (
    Alert,
    ApprovedBracket,
    BracketOrderIds,
    BrokerExecution,
    BrokerOrderUpdate,
    Fill,
    Leg,
    OrderEvent,
    PlacementResult,
    PriorPlacement,
    Side,
)
from bracketgate.core import stamps
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.crashpoints import crash_point
from bracketgate.core.logs import get_logger
from bracketgate.agents.expiry import entry_expiry_left
from bracketgate.agents.staging import IntentStager
from structlog.contextvars import bound_contextvars

log = get_logger("agents.execution")

UNRESOLVED = frozenset({"pending", "sent", "unknown"})   # intent states reconcile must settle
FINISHED = frozenset({"done", "failed"})                  # intent states nothing moves back
TERMINAL = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})
DEAD = frozenset({"Cancelled", "ApiCancelled", "Inactive"})   # terminal without a full fill

CLOSED_KEEP_S = 30.0       # a closed bracket is forgotten this long after it closed (60 before)
CLOSED_KEEP_MAX = 10_000   # ... or sooner, past this many closed brackets remembered
INTENT_LOOKBACK_S = 36 * 3600.0   # finished intents updated this recently are loaded at start

GuardAction = Literal["protect", "flatten", "alert"]


def _with_state(rec: Any, state: str) -> Any:
    """A journal IntentRecord (frozen) with a new state."""
    import dataclasses

    return dataclasses.replace(rec, state=state) if dataclasses.is_dataclass(rec) else rec


def _int_code(code: object) -> int | None:
    return code if isinstance(code, int) else None


@dataclass(frozen=True)
class RunIntent:
    """An intent recorded by this run, in the shape of the journal's IntentRecord (the fields
    reconcile reads), so a reconnect settles this run's placements like an earlier run's."""

    proposal_id: str
    agent_id: str | None
    state: str
    order_ids: dict[str, int] | None
    payload: dict[str, Any]


class BrokerPort(Protocol):
    def allocate_bracket_ids(self) -> BracketOrderIds: ...
    async def place_bracket(self, bracket: ApprovedBracket, ids: BracketOrderIds | None = None) -> BracketOrderIds: ...
    async def cancel_order(self, order_id: int) -> bool: ...
    def existing_bracket(self, order_ref: str) -> BracketOrderIds | None: ...
    def orders_at_ib(self) -> list[BrokerOrderUpdate]: ...
    async def place_protective(self, entry_order_id: int, *, action: Side, quantity: float,
                               order_ref: str, stop_price: float | None) -> int: ...


class JournalPort(Protocol):
    async def record(self, kind: str, *, proposal_id: str | None = None, agent_id: str | None = None,
                     order_id: int | None = None, payload: Any = None) -> Any: ...
    async def record_intent(self, bracket: Any, order_ids: Any) -> Any: ...
    async def mark_intent(self, proposal_id: str, state: str, order_ids: Any = None, *,
                          durable: bool = True) -> Any: ...
    async def intents(self, states: Any = None) -> list[Any]: ...


@dataclass
class Bracket:
    proposal_id: str
    agent_id: str
    symbol: str
    side: Side
    ids: BracketOrderIds
    stop_price: float | None = None
    status: dict[Leg, str] = field(default_factory=dict)
    filled: dict[Leg, float] = field(default_factory=dict)
    expiry_handle: asyncio.TimerHandle | None = None
    placed: bool = False               # IB acknowledged the placement (intent acked)
    guards: dict[int, str] = field(default_factory=dict)   # guard order id -> status
    guard_filled: float = 0.0
    guard_check: asyncio.TimerHandle | None = None
    realized: float | None = None      # realized P&L of its fills so far (every leg of a combo)
    guard_fills: dict[int, float] = field(default_factory=dict)   # guard order id -> filled
    # legs whose terminal status came with an error code (202 aside): may be the client
    # library's after a refused modify, so IB's next non-terminal word for them is taken
    revivable: set[Leg] = field(default_factory=set)

    def leg_of(self, order_id: int) -> Leg | None:
        if order_id == self.ids.entry:
            return Leg.ENTRY
        if order_id == self.ids.take_profit:
            return Leg.TAKE_PROFIT
        if order_id == self.ids.stop_loss or order_id in self.guards:
            return Leg.STOP_LOSS
        return None

    @property
    def open_quantity(self) -> float:
        """Units the entry bought/sold that no exit has closed yet."""
        exits = self.filled.get(Leg.TAKE_PROFIT, 0.0) + self.filled.get(Leg.STOP_LOSS, 0.0) + self.guard_filled
        return max(0.0, self.filled.get(Leg.ENTRY, 0.0) - exits)

    @property
    def protected(self) -> bool:
        """A stop (the bracket's or a guard) is still working at IB."""
        if self.status.get(Leg.STOP_LOSS) not in TERMINAL:
            return True
        return any(st not in TERMINAL for st in self.guards.values())

    @property
    def closed(self) -> bool:
        """Every leg terminal and nothing open: the bracket no longer carries risk at IB."""
        legs_done = all(self.status.get(leg) in TERMINAL for leg in Leg)
        guards_done = all(st in TERMINAL for st in self.guards.values())
        return legs_done and guards_done and self.open_quantity == 0


class ExecutionAgent:
    def __init__(self, bus, broker: BrokerPort, *, journal: JournalPort | None = None,
                 clock: Clock = SYSTEM_CLOCK, guard_action: GuardAction = "protect",
                 guard_grace_s: float = 1.0, settle_timeout_s: float = 5.0) -> None:
        self._bus = bus
        self._broker = broker
        self._journal = journal
        self._clock = clock
        self.guard_action = guard_action
        self.guard_grace_s = guard_grace_s
        self.settle_timeout_s = settle_timeout_s
        self._brackets: dict[str, Bracket] = {}
        self._by_order: dict[int, tuple[str, Leg]] = {}
        self._intents: dict[str, Any] = {}
        self._settling: dict[str, asyncio.Future[BracketOrderIds | None]] = {}
        self._sending: set[str] = set()          # placements between intent and IB's answer
        self._closed: OrderedDict[str, float] = OrderedDict()   # closed brackets, oldest first
        self._max_order_id_journal = 0
        self._placements: dict[str, asyncio.Task[PlacementResult]] = {}   # in flight, by proposal_id
        self._answers: dict[str, list[asyncio.Future[PlacementResult]]] = {}   # their requesters
        self._tasks: set[asyncio.Task] = set()
        self._placing = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # intents written while the what-if is in flight (agents/staging.py)
        self._stager = IntentStager(broker, journal, self._spawn)

    def stage(self, bracket: ApprovedBracket) -> bool:
        """Write this approval's intent now, while its what-if is asked (agents/staging.py);
        False when it is not staged (the placement writes it as before)."""
        pid = bracket.proposal.proposal_id
        if self.has_intent(pid) or pid in self._placements:
            return False
        return self._stager.stage(bracket)

    def unstage(self, proposal_id: str) -> None:
        """The approval never reached its placement: its staged intent (if any) is voided."""
        self._stager.void(proposal_id)

    def attach(self) -> None:
        self._bus.serve("execution.place", self.place)
        self._bus.serve("execution.outcome", self.outcome)
        self._bus.subscribe(BrokerOrderUpdate, self._on_order_update, name="execution.orders")
        self._bus.subscribe(BrokerExecution, self._on_execution, name="execution.fills")

    async def load_journal(self) -> int:
        """Attribution of earlier runs' brackets (agent, ids, stop price), before the first connect."""
        if self._journal is None:
            return 0
        if hasattr(self._journal, "intents_to_load"):   # only the intents still needed
            from datetime import timedelta

            recs = await self._journal.intents_to_load(
                self._clock.now() - timedelta(seconds=INTENT_LOOKBACK_S))
            self._max_order_id_journal = await self._journal.max_order_id()
        else:
            recs = await self._journal.intents()
        for rec in recs:
            self._intents[rec.proposal_id] = rec
        return len(self._intents)

    def expected_at_ib(self) -> dict[str, tuple[int, ...]]:
        """orderRef -> the order ids recovery expects IB to know: each intent loaded from the
        journal and each bracket followed, guards included (the IB adapter reads IB's completed
        orders at start-up only when one of them is not open: adapters/ib_startup.py)."""
        out = {pid: tuple(int(v or 0) for v in (rec.order_ids or {}).values())
               for pid, rec in self._intents.items()}
        for pid, book in self._brackets.items():
            out[pid] = (book.ids.entry, book.ids.take_profit, book.ids.stop_loss, *book.guards)
        return out

    def placed_ids(self, proposal_id: str) -> BracketOrderIds | None:
        """The order ids of a bracket IB has (placed this run or adopted), else None."""
        book = self._brackets.get(proposal_id)
        return book.ids if book is not None and book.placed else None

    def open_brackets(self) -> list[Bracket]:
        """The brackets placed or adopted this run that still carry risk (dashboard, metrics)."""
        return [b for b in self._brackets.values() if b.placed and not b.closed]

    # ---- for the command desk (agents/commands.py)
    def book(self, proposal_id: str) -> Bracket | None:
        """The bracket this run follows for proposal_id (placed, adopted), else None."""
        return self._brackets.get(proposal_id)

    def books(self) -> list[Bracket]:
        """Every bracket this run follows (the operator's flatten walks them)."""
        return list(self._brackets.values())

    def proposal_of(self, proposal_id: str) -> Any:
        """The proposal a bracket was placed for (from its intent), else None."""
        from bracketgate.bus.messages import TradeProposal

        rec = self._intents.get(proposal_id)
        data = ((rec.payload or {}).get("proposal") if rec is not None else None)
        return TradeProposal.model_validate(data) if data else None

    def add_exit(self, proposal_id: str, order_id: int) -> None:
        """Follow a market exit of this bracket (a close) like a protective order: its fills
        count against the bracket's open quantity, and it is cancelled once nothing is open."""
        book = self._brackets[proposal_id]
        book.guards[order_id] = "PendingSubmit"
        self._by_order[order_id] = (proposal_id, Leg.STOP_LOSS)

    def exit_not_at_ib(self, proposal_id: str, order_id: int) -> None:
        """A market exit / replacing stop IB never acknowledged nor listed after a reconnect:
        it is not at IB (ended, for the book)."""
        book = self._brackets.get(proposal_id)
        if book is not None and order_id in book.guards and book.guards[order_id] not in TERMINAL:
            book.guards[order_id] = "Inactive"
            log.warning("exit_not_at_ib", proposal_id=proposal_id, order_id=order_id)

    def replace_stop(self, proposal_id: str, order_id: int) -> None:
        """A new stop order (a trailing stop replacing the stop: TWS changes no order's type) is
        the bracket's stop from now on; the old one is followed as a guard until it ends."""
        book = self._brackets[proposal_id]
        old = book.ids.stop_loss
        was = book.guards.pop(order_id, None)      # back from a guard (a replace undone)
        filled = book.guard_fills.pop(order_id, 0.0)
        if old:
            book.guards[old] = book.status.get(Leg.STOP_LOSS, "")
            if book.filled.get(Leg.STOP_LOSS):
                book.guard_fills[old] = book.filled[Leg.STOP_LOSS]
                book.guard_filled = sum(book.guard_fills.values())
        book.ids = book.ids.model_copy(update={"stop_loss": order_id})
        book.status[Leg.STOP_LOSS] = was or "PendingSubmit"
        book.filled[Leg.STOP_LOSS] = filled
        book.guard_filled = sum(book.guard_fills.values())
        self._by_order[order_id] = (proposal_id, Leg.STOP_LOSS)

    def has_intent(self, proposal_id: str) -> bool:
        return proposal_id in self._intents or proposal_id in self._brackets

    def prior_placement(self, proposal: Any) -> PriorPlacement | None:
        """What IB has (or had) for this proposal's orderRef, for a proposal the gate has no
        decision for: a restart between placing and journaling the decision, a lost journal, a
        decision memory that forgot. None when neither IB nor an intent knows it (decide it)."""
        pid = proposal.proposal_id
        if pid in self._sending:
            return None  # this run's placement in flight: the gate has its decision
        book = self._brackets.get(pid)
        if book is not None and book.placed:
            return PriorPlacement(proposal_id=pid, outcome="placed", order_ids=book.ids,
                                  detail="the bracket is at IB (placed before a restart)")
        rec = self._intents.get(pid)
        by_ref = getattr(self._broker, "orders_for_ref", None)   # pruned brackets too (ib_prune.py)
        legs = (by_ref(pid) if by_ref is not None else
                [u for u in self._broker.orders_at_ib() if u.order_ref == pid])
        if not legs:
            if rec is None:
                return None
            return PriorPlacement(
                proposal_id=pid, outcome="not_at_ib",
                detail=f"an order intent was recorded ({rec.state}) but the bracket never reached "
                       "IB (daemon restart); not re-sent")
        found = "; ".join(sorted(f"{u.order_type} {u.status}"
                                 + (f" filled {u.filled:g}" if u.filled else "") for u in legs))
        live = [u for u in legs if u.status not in TERMINAL]
        stops = [u for u in live if u.parent_id and u.order_type.startswith("STP")]
        if stops:  # transmitted (the stop carries the transmit flag) and still working: follow it
            ids = self._adopt_unjournaled(proposal, legs, stops[0].parent_id)
            if ids is not None:
                return PriorPlacement(proposal_id=pid, outcome="placed", order_ids=ids,
                                      detail=f"the bracket is at IB ({found}); adopted")
        if live:
            # live legs without a working stop that no journal explains: never left live
            # under a rejection (cancelling a parent cancels its children)
            for u in live:
                if u.order_id and not any(p.order_id == u.parent_id for p in live):
                    self._spawn(self._cancel_stray(u.order_id, pid), f"cancel-stray:{u.order_id}")
            return PriorPlacement(
                proposal_id=pid, outcome="cancelled",
                detail=f"IB held legs of this orderRef without a working stop ({found}); "
                       "cancelled, not placed again")
        if any(u.filled > 0 for u in legs):
            return PriorPlacement(proposal_id=pid, outcome="finished",
                                  detail=f"IB traded this bracket before: {found}")
        return PriorPlacement(proposal_id=pid, outcome="cancelled",
                              detail=f"IB has this bracket cancelled: {found}")

    def _adopt_unjournaled(self, proposal: Any, legs: list[BrokerOrderUpdate],
                           entry_id: int | None) -> BracketOrderIds | None:
        """Follow a working bracket IB has for an orderRef no intent explains (a lost journal):
        the entry may be a completed order (no orderId); its children name it as parent."""
        kids = [u for u in legs if entry_id and u.parent_id == entry_id]
        take = next((u for u in kids if u.order_type == "LMT"), None)
        stop = next((u for u in kids if u.order_type.startswith("STP")), None)
        if not entry_id or take is None or stop is None:
            return None
        ids = BracketOrderIds(entry=entry_id, take_profit=take.order_id, stop_loss=stop.order_id)
        book = Bracket(proposal.proposal_id, proposal.agent_id, proposal.symbol, proposal.side,
                       ids, stop_price=stop.stop_price or proposal.stop_loss, placed=True)
        entry = next((u for u in legs if u.order_id == entry_id), None)
        entry_filled = entry.filled if entry else max(
            (u.filled for u in legs if u.side is proposal.side and not u.parent_id), default=0.0)
        book.status[Leg.ENTRY] = entry.status if entry else ("Filled" if entry_filled else "")
        book.filled[Leg.ENTRY] = entry_filled
        for leg, u in ((Leg.TAKE_PROFIT, take), (Leg.STOP_LOSS, stop)):
            book.status[leg], book.filled[leg] = u.status, u.filled
        self._track(book)
        log.warning("bracket_adopted_without_intent", proposal_id=proposal.proposal_id,
                    agent_id=proposal.agent_id, order_id=entry_id, take_profit_id=ids.take_profit,
                    stop_loss_id=ids.stop_loss, code="BRACKET_ADOPTED")
        self._schedule_guard_check(book, self.guard_grace_s)
        return ids

    async def _cancel_stray(self, order_id: int, proposal_id: str) -> None:
        try:
            await self._broker.cancel_order(order_id)
            log.warning("stray_order_cancelled", proposal_id=proposal_id, order_id=order_id,
                        code="BRACKET_CANCELLED_AT_IB")
        except BrokerError as e:
            log.error("stray_order_cancel_failed", proposal_id=proposal_id, order_id=order_id,
                      code=e.code, error=e.message)

    def max_order_id_in_journal(self) -> int:
        ids = [v for rec in self._intents.values() for v in (rec.order_ids or {}).values() if isinstance(v, int)]
        return max(ids + [self._max_order_id_journal])

    # ------------------------------------------------------------------ placing

    async def place(self, bracket: ApprovedBracket) -> PlacementResult:
        """Place a bracket. The placement runs as its own task: a requester that stops waiting
        (the governor's placement deadline) does not cut it off between IB's legs; it can ask
        for the outcome with `execution.outcome` (what IB ends up having is the answer)."""
        p = bracket.proposal
        if stamps.ON:
            stamps.stamp(p.proposal_id, "place_requested")
        task = self._placements.get(p.proposal_id)
        if task is not None and task.done():
            return task.result()
        # answered from inside the placement as it ends: one loop step to the requester (a
        # shield of the task took two); cancelling the requester cancels only its own future
        answer: asyncio.Future[PlacementResult] = asyncio.get_running_loop().create_future()
        self._answers.setdefault(p.proposal_id, []).append(answer)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._run_placement(bracket), name=f"execution:place:{p.proposal_id}")
            self._placements[p.proposal_id] = task
            task.add_done_callback(lambda t, pid=p.proposal_id: self._placement_done(pid, t))
        return await answer

    async def outcome(self, proposal_id: str) -> PlacementResult | None:
        """The result of a placement still in flight (waits for it), else None."""
        task = self._placements.get(proposal_id)
        return None if task is None else await asyncio.shield(task)

    async def _run_placement(self, bracket: ApprovedBracket) -> PlacementResult:
        p = bracket.proposal
        self._placing += 1
        self._idle.clear()
        try:
            with bound_contextvars(proposal_id=p.proposal_id, agent_id=p.agent_id):
                result = await self._place(bracket)
        except BaseException as e:
            self._answer(p.proposal_id, None, e)
            raise
        else:
            if stamps.ON:
                stamps.stamp(p.proposal_id, "placement_answered")
            self._answer(p.proposal_id, result, None)
            return result
        finally:
            self._placing -= 1
            if self._placing == 0:
                self._idle.set()

    def _placement_done(self, proposal_id: str, task: asyncio.Task[PlacementResult]) -> None:
        self._placements.pop(proposal_id, None)
        # retrieved here (its requesters got it): never "Task exception was never retrieved"
        error: BaseException | None = (asyncio.CancelledError() if task.cancelled()
                                       else task.exception())
        if proposal_id in self._answers:   # ended without answering (cancelled before it ran)
            self._answer(proposal_id, None if error is not None else task.result(), error)

    def _answer(self, proposal_id: str, result: PlacementResult | None,
                error: BaseException | None) -> None:
        for fut in self._answers.pop(proposal_id, ()):
            if fut.done():
                continue   # its requester went away
            if isinstance(error, asyncio.CancelledError):
                fut.cancel()
            elif error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)  # type: ignore[arg-type]

    async def _place(self, bracket: ApprovedBracket) -> PlacementResult:
        p = bracket.proposal
        existing = self._brackets.get(p.proposal_id)
        if existing is not None and existing.placed:  # placed this run or adopted: no second order
            return PlacementResult(proposal_id=p.proposal_id, ok=True, order_ids=existing.ids)
        if p.proposal_id in self._intents or p.proposal_id in self._stager.voided:
            # an intent that never (verifiably) reached IB, or voided (agents/staging.py)
            rec = self._intents.get(p.proposal_id)
            log.error("placement_refused_old_intent", state=rec.state if rec else "voided")
            return PlacementResult(proposal_id=p.proposal_id, ok=False, code=None,
                                   error="an intent for this proposal is already recorded")
        staged = self._stager.take(p.proposal_id)   # written during the what-if: its commit
        try:
            ids = (await self._stager.ready(p.proposal_id, staged) if staged is not None
                   else self._broker.allocate_bracket_ids())
        except BrokerError as e:
            log.warning("placement_failed", code=e.code, error=e.message)
            return PlacementResult(proposal_id=p.proposal_id, ok=False, error=e.message,
                                   code=_int_code(e.code))
        book = Bracket(p.proposal_id, p.agent_id, p.symbol, p.side, ids, stop_price=p.stop_loss)
        self._track(book)
        if self._journal is not None:  # the intent is durable before anything is sent
            if staged is None:
                await self._journal.record_intent(bracket, ids)
            crash_point("intent_journaled")
            if stamps.ON:
                stamps.stamp(p.proposal_id, "intent_journaled")
        self._intents[p.proposal_id] = RunIntent(
            p.proposal_id, p.agent_id, "pending", ids.model_dump(),
            {"proposal": p.model_dump(mode="json")})
        if self._journal is not None and getattr(self._journal, "not_journaled", None) is not None \
                and self._journal.not_journaled(p.proposal_id):
            # the gate decides while the proposal commits (bus/mqtt.py); its write, queued
            # ahead of the intent's, failed: nothing is sent for a proposal not journaled
            log.error("placement_refused_not_journaled", code="NOT_DURABLE")
            await self._mark(p.proposal_id, "failed")
            return PlacementResult(proposal_id=p.proposal_id, ok=False, order_ids=ids,
                                   error="the proposal is not journaled")
        self._sending.add(p.proposal_id)
        try:
            ids = await self._broker.place_bracket(bracket, ids)
        except BrokerError as e:
            self._sending.discard(p.proposal_id)
            if e.code == "PLACEMENT_UNCERTAIN":
                return await self._placement_uncertain(book, e, p.cancel_entry_after_s)
            return await self._placement_failed(book, e)
        finally:
            self._sending.discard(p.proposal_id)
        book.placed = True
        crash_point("bracket_acked")
        # not FULL on its own, and not waited for: handed to the journal's writer now, ahead of
        # the approved decision's FULL commit (one writer, first in first out; the WAL is one
        # file: that commit makes this one durable too), which the decision's publication
        # waits for. A power cut in between leaves the intent pending, which start-up
        # reconciles from IB's orders.
        self._mark_soon(p.proposal_id, "acked", ids)
        log.info("bracket_placed", order_id=ids.entry, take_profit_id=ids.take_profit,
                 stop_loss_id=ids.stop_loss, symbol=p.symbol, side=p.side.value, quantity=p.quantity)
        self._schedule_expiry(book, p.cancel_entry_after_s)
        return PlacementResult(proposal_id=p.proposal_id, ok=True, order_ids=ids)

    def _schedule_expiry(self, book: Bracket, after_s: float | None) -> None:
        if after_s is not None:
            loop = asyncio.get_running_loop()
            book.expiry_handle = loop.call_later(after_s, self._expire_entry, book.proposal_id)

    async def _placement_failed(self, book: Bracket, e: BrokerError) -> PlacementResult:
        pid = book.proposal_id
        found: BracketOrderIds | None = getattr(e, "order_ids", None)
        if e.code == "DUPLICATE_ORDER_REF" and found is not None and all(
                (found.entry, found.take_profit, found.stop_loss)):
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
        # IB may have refused one leg and taken the others (e.g. a take-profit off tick while
        # entry and stop are working): a failed bracket keeps no live order. Cancelling the
        # entry cancels its children; an already-dead entry is a no-op.
        await self._cancel_leftovers(book)
        return PlacementResult(proposal_id=pid, ok=False, order_ids=book.ids, error=e.message,
                               code=_int_code(e.code))

    async def _cancel_leftovers(self, book: Bracket) -> None:
        for oid in (book.ids.entry, book.ids.take_profit, book.ids.stop_loss):
            if not oid:
                continue
            try:
                if await self._broker.cancel_order(oid):
                    log.warning("placement_leftover_cancelled", order_id=oid)
            except BrokerError as e:  # the next reconcile cancels live legs of a failed intent
                log.warning("placement_leftover_cancel_failed", order_id=oid, code=e.code,
                            error=e.message)

    async def _placement_uncertain(self, book: Bracket, e: BrokerError,
                                   expire_after_s: float | None) -> PlacementResult:
        """The connection dropped before IB acknowledged the legs: IB has all of them, some
        (never transmitted) or none. The next connect's reconcile settles it (adopt, or cancel
        and fail); wait for that, bounded, and answer what IB has — never a guess."""
        pid = book.proposal_id
        log.warning("placement_uncertain", code=e.code, error=e.message, order_id=book.ids.entry,
                    settle_timeout_s=self.settle_timeout_s)
        await self._mark(pid, "unknown")
        fut: asyncio.Future[BracketOrderIds | None] = asyncio.get_running_loop().create_future()
        self._settling[pid] = fut
        try:
            ids = await asyncio.wait_for(asyncio.shield(fut), self.settle_timeout_s)
        except TimeoutError:
            ids = None
        finally:
            self._settling.pop(pid, None)
        settled = self._brackets.get(pid)
        if ids is not None and settled is not None and settled.placed:
            log.info("bracket_placed", order_id=ids.entry, take_profit_id=ids.take_profit,
                     stop_loss_id=ids.stop_loss, settled_by="reconcile")
            self._schedule_expiry(settled, expire_after_s)
            return PlacementResult(proposal_id=pid, ok=True, order_ids=ids)
        if not fut.done():
            # not reconnected in time: answered failed, so a later reconcile cancels whatever
            # of it IB turns out to have (a failed intent never keeps live orders)
            log.warning("placement_unsettled", timeout_s=self.settle_timeout_s)
            await self._mark(pid, "failed")
        return PlacementResult(proposal_id=pid, ok=False, order_ids=book.ids, code=None,
                               error=f"IB connection lost while placing; {e.message}")

    async def _mark(self, proposal_id: str, state: str, ids: BracketOrderIds | None = None,
                    durable: bool = True) -> None:
        """Move the intent (journal, then memory). An intent already finished (done, failed)
        is not moved back (a reconcile that found its bracket closed at IB must not mark it
        acked): logged, the journal's state stands."""
        rec = self._intents.get(proposal_id)
        if rec is not None and rec.state in FINISHED and state not in FINISHED:
            log.info("intent_state_kept", proposal_id=proposal_id, state=rec.state, wanted=state)
            return
        if self._journal is not None:
            await self._journal.mark_intent(proposal_id, state, ids, durable=durable)
        rec = self._intents.get(proposal_id)
        if rec is not None and rec.state != state:
            self._intents[proposal_id] = _with_state(rec, state)

    def _mark_soon(self, proposal_id: str, state: str, ids: BracketOrderIds | None) -> None:
        """`_mark(..., durable=False)` without waiting for it: the memory moves now; the journal
        write is queued in the task's first step (Journal.mark_intent submits before it awaits),
        i.e. before anything that this step's caller does next can queue a write. A failure is
        logged (the next reconcile settles an intent left pending from IB's orders)."""
        rec = self._intents.get(proposal_id)
        if rec is not None and rec.state in FINISHED:
            log.info("intent_state_kept", proposal_id=proposal_id, state=rec.state, wanted=state)
            return
        if rec is not None and rec.state != state:
            self._intents[proposal_id] = _with_state(rec, state)
        if self._journal is None:
            return
        self._spawn(self._mark_journal(proposal_id, state, ids), f"intent:{state}:{proposal_id}")

    async def _mark_journal(self, proposal_id: str, state: str,
                            ids: BracketOrderIds | None) -> None:
        assert self._journal is not None
        try:
            await self._journal.mark_intent(proposal_id, state, ids, durable=False)
        except Exception as e:  # logged with its reason; the journal's state stands
            log.error("intent_mark_failed", proposal_id=proposal_id, state=state, error=repr(e),
                      code="NOT_DURABLE")
            return
        if state == "acked":
            crash_point("intent_acked")

    def _track(self, book: Bracket) -> None:
        self._brackets[book.proposal_id] = book
        for leg, oid in ((Leg.ENTRY, book.ids.entry), (Leg.TAKE_PROFIT, book.ids.take_profit),
                         (Leg.STOP_LOSS, book.ids.stop_loss)):
            if oid:
                self._by_order[oid] = (book.proposal_id, leg)

    def _untrack(self, book: Bracket) -> None:
        for oid in (book.ids.entry, book.ids.take_profit, book.ids.stop_loss):
            self._by_order.pop(oid, None)

    def _resume_expiry(self, ref: str) -> None:
        """An adopted bracket's entry expiry resumes from its intent (agents/expiry.py)."""
        book, rec = self._brackets.get(ref), self._intents.get(ref)
        if book is None or rec is None or book.expiry_handle is not None:
            return
        left = entry_expiry_left(rec, self._clock.now())
        if left is not None:
            log.info("entry_expiry_resumed", proposal_id=ref, order_id=book.ids.entry,
                     left_s=round(left, 3))
            self._schedule_expiry(book, left)

    def _expire_entry(self, proposal_id: str) -> None:
        book = self._brackets.get(proposal_id)
        if book is None or book.filled.get(Leg.ENTRY, 0) > 0 or book.status.get(Leg.ENTRY) in TERMINAL:
            return
        self._spawn(self._cancel_entry(book), f"expire:{proposal_id}")

    async def _cancel_entry(self, book: Bracket) -> None:
        with bound_contextvars(proposal_id=book.proposal_id, agent_id=book.agent_id):
            try:
                sent = await self._broker.cancel_order(book.ids.entry)
                log.info("entry_expired_cancel", order_id=book.ids.entry, sent=sent)
            except BrokerError as e:
                log.warning("entry_expired_cancel_failed", order_id=book.ids.entry, code=e.code,
                            error=e.message)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no placement (or guard action) is in flight (used on shutdown)."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
                if self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self) -> None:
        """Run by the broker after every (re)connect, before READY: rebuild the book from the
        orders IB has (matched by orderRef), cancel brackets that must not live (never
        transmitted, or answered failed), publish each leg's current state, report intents that
        never reached IB, settle placements the last disconnect left uncertain, and check every
        open position from an entry is protected."""
        followed = getattr(self._broker, "orders_followed", None)   # O(followed): ib_startup.py
        orders = (followed(set(self._intents) | set(self._brackets), set(self._by_order))
                  if followed is not None else self._broker.orders_at_ib())
        by_ref: dict[str, list[BrokerOrderUpdate]] = {}
        for u in orders:
            if u.order_ref:
                by_ref.setdefault(u.order_ref, []).append(u)
        revoked = 0
        adopted: list[str] = []   # their entry expiries resume once the legs' states are in
        for ref, legs in by_ref.items():
            rec = self._intents.get(ref)
            book = self._brackets.get(ref)
            if rec is None or ref in self._sending or (book is not None and book.placed):
                continue
            if rec.state == "failed" or self._never_transmitted(rec, legs):
                revoked += await self._revoke(rec, legs)
            elif self._adopt(ref, legs):
                adopted.append(ref)
        # leg states as IB has them now (fills that happened while we were away included)
        for u in sorted(orders, key=lambda x: x.order_id):
            book = self._brackets.get(u.order_ref)
            if u.order_id == 0 and book is not None:
                u = self._completed_as_leg(book, u)
            if u is not None and (u.order_ref in self._brackets or u.order_id in self._by_order):
                await self._on_order_update(u, check_guard=False)
        for ref in adopted:
            self._resume_expiry(ref)
        missing = 0
        for pid, rec in list(self._intents.items()):
            if pid in self._sending:
                continue
            book = self._brackets.get(pid)
            if book is not None and book.placed:
                if rec.state in UNRESOLVED and not book.closed:
                    await self._mark(pid, "acked")
                self._settle(pid, book.ids)
                continue
            if rec.state in UNRESOLVED:
                missing += 1
                await self._report_missing(rec)
            self._settle(pid, None)
        for book in list(self._brackets.values()):
            self._schedule_guard_check(book, 0.0)
        log.info("execution_reconciled", orders_at_ib=len(orders), adopted=len(adopted), revoked=revoked,
                 intents_missing_at_ib=missing, brackets=len(self._brackets))
        if self._journal is not None:
            await self._journal.record("reconcile", payload={
                "orders_at_ib": len(orders), "adopted": len(adopted), "revoked": revoked,
                "intents_missing_at_ib": missing})

    def _settle(self, proposal_id: str, ids: BracketOrderIds | None) -> None:
        """Answer a placement waiting on this reconcile (see _placement_uncertain)."""
        fut = self._settling.get(proposal_id)
        if fut is not None and not fut.done():
            fut.set_result(ids)

    @staticmethod
    def _never_transmitted(rec: Any, legs: list[BrokerOrderUpdate]) -> bool:
        """IB holds legs of this bracket but not its stop — the last leg, the one that carries
        the transmit flag — and nothing filled: the send was cut (crash, dropped socket) and the
        legs IB holds were never transmitted. They must not be adopted as a placed bracket."""
        stop = (rec.order_ids or {}).get("stop_loss")
        if not stop or any(u.filled > 0 for u in legs):
            return False
        return not any(u.order_id == stop or (u.order_id == 0 and u.order_type.startswith("STP"))
                       for u in legs)

    async def _revoke(self, rec: Any, legs: list[BrokerOrderUpdate]) -> int:
        """Cancel the live legs IB holds for an intent that must not have any (never
        transmitted, or its placement was answered failed), close the intent as failed and
        report it. A filled entry is adopted instead: its position needs its stop."""
        pid, agent = rec.proposal_id, rec.agent_id or "unknown"
        live = {u.order_id: u for u in legs if u.order_id and u.status not in TERMINAL}
        if not live and rec.state not in UNRESOLVED:
            return 0  # revoked before: IB shows only its cancelled legs
        with bound_contextvars(proposal_id=pid, agent_id=agent):
            if any(u.filled > 0 for u in legs):
                log.error("fill_after_failed_placement", state=rec.state,
                          code="FILL_AFTER_FAILED_PLACEMENT")
                await self._bus.publish(Alert(
                    code="FILL_AFTER_FAILED_PLACEMENT", proposal_id=pid, agent_id=agent,
                    message="IB filled a bracket whose placement was reported failed; following it",
                    ts=self._clock.now()))
                self._adopt(pid, legs)
                return 0
            for u in live.values():
                if u.parent_id in live:
                    continue  # cancelling its parent cancels it
                try:
                    await self._broker.cancel_order(u.order_id)
                except BrokerError as e:
                    log.warning("revoke_cancel_failed", order_id=u.order_id, code=e.code,
                                error=e.message)
            code = "PLACEMENT_FAILED" if rec.state == "failed" else "BRACKET_NOT_TRANSMITTED"
            log.error("bracket_revoked", order_ids=sorted(live), state=rec.state, code=code)
            if rec.state in UNRESOLVED:
                await self._report_missing(
                    rec, code="BRACKET_NOT_TRANSMITTED",
                    message="a bracket whose send was cut (its stop never reached IB) was "
                            "cancelled; not re-sent")
        return 1 if live else 0

    def _adopt(self, ref: str, legs: list[BrokerOrderUpdate]) -> bool:
        """Rebuild a bracket from the orders IB has for its orderRef. The journal's ids are the
        truth; completed orders come without an orderId (IB sends permId only)."""
        rec = self._intents.get(ref)
        ids_j = (rec.order_ids or {}) if rec is not None else {}
        payload = (rec.payload or {}) if rec is not None else {}
        proposal = payload.get("proposal") or {}
        side = Side(proposal["side"]) if proposal.get("side") else None
        if ids_j.get("entry"):
            entry, take, stop = ids_j["entry"], ids_j.get("take_profit", 0), ids_j.get("stop_loss", 0)
        else:  # no journal: the structure IB shows (parent with children)
            parents = [u for u in legs if u.order_id and not u.parent_id
                       and any(c.parent_id == u.order_id for c in legs)]
            if not parents:
                log.error("adopt_failed_no_entry", proposal_id=ref, order_ids=sorted(u.order_id for u in legs))
                return False
            entry = parents[0].order_id
            side = side or parents[0].side
            kids = [u for u in legs if u.parent_id == entry]
            take = next((u.order_id for u in kids if u.order_type == "LMT"), 0)
            stop = next((u.order_id for u in kids if u.order_type.startswith("STP")), 0)
        side = side or next((u.side for u in legs if u.order_id == entry and u.side), None) or Side.BUY
        stop_leg = next((u for u in legs if u.order_id == stop), None)
        book = Bracket(
            proposal_id=ref, agent_id=(rec.agent_id if rec and rec.agent_id else proposal.get("agent_id") or "unknown"),
            symbol=proposal.get("symbol") or legs[0].symbol, side=side,
            ids=BracketOrderIds(entry=entry, take_profit=take or 0, stop_loss=stop or 0),
            stop_price=proposal.get("stop_loss") or (stop_leg.stop_price if stop_leg else None),
            placed=True,
        )
        # standalone live orders with this ref (guards placed by an earlier run)
        for u in legs:   # (a trailing stop that replaced the stop may be a child of the entry)
            if u.order_id and u.order_id not in (entry, take, stop) \
                    and (not u.parent_id or u.parent_id == entry):
                book.guards[u.order_id] = ""
        self._track(book)
        for gid in book.guards:
            self._by_order[gid] = (ref, Leg.STOP_LOSS)
        log.info("bracket_adopted", proposal_id=ref, agent_id=book.agent_id, order_id=entry,
                 take_profit_id=take, stop_loss_id=stop, guards=sorted(book.guards))
        return True

    @staticmethod
    def _completed_as_leg(book: Bracket, u: BrokerOrderUpdate) -> BrokerOrderUpdate | None:
        """A completed order (no orderId at IB) mapped to its leg by role."""
        if u.side is book.side:
            oid = book.ids.entry
        elif u.order_type == "LMT":
            oid = book.ids.take_profit
        elif u.order_type.startswith("STP") and book.status.get(Leg.STOP_LOSS) not in TERMINAL:
            oid = book.ids.stop_loss
        else:
            return None
        return u.model_copy(update={"order_id": oid}) if oid else None

    async def _report_missing(self, rec: Any, code: str = "INTENT_NOT_AT_IB",
                              message: str = "an order intent recorded before a restart or a "
                                             "disconnect never reached IB; not re-sent") -> None:
        """An intent whose orders IB does not have (or holds untransmitted): it never reached IB.
        Reported (Alert + one Inactive OrderEvent per leg) and closed; never re-sent silently."""
        pid, agent = rec.proposal_id, rec.agent_id or "unknown"
        ids = rec.order_ids or {}
        with bound_contextvars(proposal_id=pid, agent_id=agent):
            log.error("intent_never_reached_ib", state=rec.state, code=code)
            await self._bus.publish(Alert(code=code, proposal_id=pid, agent_id=agent,
                                          message=message, ts=self._clock.now()))
            symbol = ((rec.payload or {}).get("proposal") or {}).get("symbol", "")
            for leg in Leg:
                oid = ids.get(leg.value)
                if not oid:
                    continue
                await self._bus.publish(OrderEvent(
                    proposal_id=pid, agent_id=agent, order_id=oid, leg=leg, symbol=symbol,
                    status="Inactive", code=None, message="never reached IB (daemon restart)",
                    ts=self._clock.now()))
            await self._mark(pid, "failed")

    # ------------------------------------------------------------------ following

    def _resolve(self, order_id: int, order_ref: str) -> tuple[Bracket, Leg] | None:
        hit = self._by_order.get(order_id)
        if hit is not None:
            return self._brackets[hit[0]], hit[1]
        book = self._brackets.get(order_ref) if order_ref else None
        if book is not None:
            leg = book.leg_of(order_id)
            if leg is not None:
                return book, leg
        return None

    async def _on_order_update(self, u: BrokerOrderUpdate, check_guard: bool = True) -> None:
        found = self._resolve(u.order_id, u.order_ref)
        if found is None:
            return  # not one of ours (manual order, another client)
        book, leg = found
        if u.order_id in book.guards:
            await self._on_guard_update(book, u)
            return
        prev = book.status.get(leg)
        if prev == u.status and u.code is None and book.filled.get(leg, 0.0) == u.filled:
            return  # openOrder + orderStatus repeat the same state
        if prev in TERMINAL and u.status not in TERMINAL and u.code is None:
            if leg not in book.revivable:
                return  # a late, stale update after the terminal one
            # the terminal status was the client library's after an error (a refused modify:
            # both libraries mark the Trade cancelled while IB works the order); IB's word wins
            book.revivable.discard(leg)
            log.info("leg_still_working", proposal_id=book.proposal_id, order_id=u.order_id,
                     leg=leg.value, status=u.status, was=prev)
        if u.status in TERMINAL and u.code is not None and u.code != 202:
            book.revivable.add(leg)
        elif u.status in TERMINAL:
            book.revivable.discard(leg)
        book.status[leg] = u.status
        book.filled[leg] = max(book.filled.get(leg, 0.0), u.filled)
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
            await self._after_change(book, check_guard)

    async def _after_change(self, book: Bracket, check_guard: bool) -> None:
        if book.guards and book.open_quantity == 0:
            # software OCA: an exit that closed the position makes the guard stop pointless (and risky)
            for gid, st in book.guards.items():
                if st not in TERMINAL:
                    book.guards[gid] = "PendingCancel"
                    self._spawn(self._cancel_guard(book, gid), f"guard-cancel:{gid}")
        if check_guard:
            self._schedule_guard_check(book, self.guard_grace_s)
        if book.closed:
            if book.expiry_handle:
                book.expiry_handle.cancel()
            log.info("bracket_closed", statuses={k.value: v for k, v in book.status.items()})
            if self._journal is not None and book.placed:
                await self._mark(book.proposal_id, "done")
            self._note_closed(book.proposal_id)

    def _note_closed(self, proposal_id: str) -> None:
        """Remember when a bracket closed; forget the ones closed long enough ago."""
        now = time.monotonic()
        self._closed[proposal_id] = now
        self._closed.move_to_end(proposal_id)
        while self._closed:
            pid, at = next(iter(self._closed.items()))
            if now - at < CLOSED_KEEP_S and len(self._closed) <= CLOSED_KEEP_MAX:
                break
            del self._closed[pid]
            self._forget(pid)

    def _forget(self, proposal_id: str) -> None:
        book = self._brackets.get(proposal_id)
        if book is None or not book.closed or proposal_id in self._sending \
                or proposal_id in self._settling or proposal_id in self._placements:
            return
        del self._brackets[proposal_id]
        for oid in (book.ids.entry, book.ids.take_profit, book.ids.stop_loss, *book.guards):
            if self._by_order.get(oid, (None,))[0] == proposal_id:
                del self._by_order[oid]
        rec = self._intents.pop(proposal_id, None)
        for v in ((rec.order_ids or {}).values() if rec is not None else ()):
            if isinstance(v, int) and v > self._max_order_id_journal:
                self._max_order_id_journal = v

    async def _on_execution(self, ex: BrokerExecution) -> None:
        found = self._resolve(ex.order_id, ex.order_ref)
        if found is None:
            log.info("execution_not_ours", order_id=ex.order_id, exec_id=ex.exec_id)
            return
        book, leg = found
        if ex.realized_pnl is not None and ex.sec_type != "BAG":   # a combo's P&L is its legs'
            book.realized = (book.realized or 0.0) + ex.realized_pnl
        fill = Fill(
            proposal_id=book.proposal_id, agent_id=book.agent_id, order_id=ex.order_id, leg=leg,
            exec_id=ex.exec_id, symbol=ex.symbol, con_id=ex.con_id, side=ex.side, quantity=ex.quantity, price=ex.price,
            commission=ex.commission, realized_pnl=ex.realized_pnl, exec_time=ex.exec_time,
            ts=self._clock.now(), sec_type=ex.sec_type, bracket_realized_pnl=book.realized,
        )
        with bound_contextvars(proposal_id=book.proposal_id, agent_id=book.agent_id):
            log.info("fill", order_id=ex.order_id, leg=leg.value, exec_id=ex.exec_id,
                     side=ex.side.value, quantity=ex.quantity, price=ex.price, commission=ex.commission)
            if self._journal is not None:
                await self._journal.record("fill", proposal_id=book.proposal_id, agent_id=book.agent_id,
                                           order_id=ex.order_id, payload=fill)
            await self._bus.publish(fill)

    # ------------------------------------------------------------------ unprotected-fill guard

    def _schedule_guard_check(self, book: Bracket, delay: float) -> None:
        """Checked after a grace period: IB may report the stop's OCA cancel before the
        take-profit's fill; only a state that persists is acted on."""
        if book.open_quantity <= 0 or book.protected or self.guard_action is None:
            return
        if book.guard_check is not None:
            book.guard_check.cancel()
        loop = asyncio.get_running_loop()
        book.guard_check = loop.call_later(
            delay, lambda: self._spawn(self._guard(book), f"guard:{book.proposal_id}"))

    async def _guard(self, book: Bracket) -> None:
        book.guard_check = None
        qty = book.open_quantity
        if qty <= 0 or book.protected:
            return
        with bound_contextvars(proposal_id=book.proposal_id, agent_id=book.agent_id):
            action = self.guard_action
            stop_status = book.status.get(Leg.STOP_LOSS)
            log.error("unprotected_fill", open_quantity=qty, stop_status=stop_status,
                      action=action, order_id=book.ids.stop_loss, code="UNPROTECTED_FILL")
            msg = (f"entry filled ({qty:g} open) but the stop is {stop_status}; "
                   f"{'placing a protective stop' if action == 'protect' else action}")
            await self._bus.publish(Alert(code="UNPROTECTED_FILL", message=msg, proposal_id=book.proposal_id,
                                          agent_id=book.agent_id, order_id=book.ids.stop_loss,
                                          ts=self._clock.now()))
            if action == "alert":
                return
            stop_price = book.stop_price if action == "protect" else None
            if action == "flatten" and book.status.get(Leg.TAKE_PROFIT) not in TERMINAL:
                try:
                    await self._broker.cancel_order(book.ids.take_profit)
                except BrokerError as e:
                    log.warning("guard_cancel_take_profit_failed", code=e.code, error=e.message)
            try:
                oid = await self._broker.place_protective(
                    book.ids.entry, action=book.side.opposite, quantity=qty,
                    order_ref=book.proposal_id, stop_price=stop_price)
            except BrokerError as e:
                log.error("guard_order_failed", code=e.code, error=e.message)
                await self._bus.publish(Alert(code="GUARD_FAILED", message=f"protective order failed: {e}",
                                              proposal_id=book.proposal_id, agent_id=book.agent_id,
                                              ts=self._clock.now()))
                return
            book.guards[oid] = "Submitted"
            self._by_order[oid] = (book.proposal_id, Leg.STOP_LOSS)
            if self._journal is not None:
                await self._journal.record("alert", proposal_id=book.proposal_id, agent_id=book.agent_id,
                                           order_id=oid, payload={"code": "UNPROTECTED_FILL", "action": action,
                                                                  "quantity": qty, "stop_price": stop_price})

    async def _on_guard_update(self, book: Bracket, u: BrokerOrderUpdate) -> None:
        prev = book.guards.get(u.order_id)
        book.guards[u.order_id] = u.status
        if u.status == "Filled" or u.filled:   # several guards / closes: their fills add up
            book.guard_fills[u.order_id] = max(book.guard_fills.get(u.order_id, 0.0), u.filled)
            book.guard_filled = sum(book.guard_fills.values())
        if prev != u.status:
            ev = OrderEvent(
                proposal_id=book.proposal_id, agent_id=book.agent_id, order_id=u.order_id,
                leg=Leg.STOP_LOSS, symbol=book.symbol, status=u.status, filled=u.filled,
                remaining=u.remaining, avg_fill_price=u.avg_fill_price, perm_id=u.perm_id,
                code=u.code, message=u.message or "protective order", ts=self._clock.now())
            with bound_contextvars(proposal_id=book.proposal_id, agent_id=book.agent_id):
                log.info("order_event", order_id=u.order_id, leg="stop_loss", status=u.status,
                         filled=u.filled, guard=True)
                await self._bus.publish(ev)
        await self._after_change(book, check_guard=True)

    async def _cancel_guard(self, book: Bracket, order_id: int) -> None:
        try:
            await self._broker.cancel_order(order_id)
        except BrokerError as e:
            log.warning("guard_cancel_failed", proposal_id=book.proposal_id, order_id=order_id,
                        code=e.code, error=e.message)
