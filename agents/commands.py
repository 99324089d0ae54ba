"""The command desk: an agent's cancel / amend / trail / close of a bracket it opened (issue 13).

Path: bus/mqtt.py (bus/command_intake.py checks the payload) -> `CommandDesk.take_in` (the
journal's commands table: idempotent by (agent_id, command_id), durable before the broker is
acknowledged) -> `assess` (pure: who may, what it does to risk) -> `_execute` (IB, through
the broker and adapters/ib_lifecycle.py) -> CommandAnswer, journaled, then published on the
bus (the bridge sends it to {prefix}/decisions/{agent_id}).

Gating: agents/command_gate.py (`assess`: who may, what the change does to risk; a
risk-raising change meets every check a new bracket meets, through RiskGovernor.check_as_new).
The reservation follows every accepted change (size, stop, worst case); the answer is sent
only once IB confirmed (or COMMAND_FAILED with what IB has).

State (one line each):
  _inflight: proposal_id -> command_id     (one command per bracket at a time)
  _tasks:    command tasks running
  _memory:   (agent_id, command_id) -> (request, answer | None)  (without a journal: tests)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bracketgate.agents.command_gate import (
    EPS,
    TERMINAL,
    BracketNow,
    Command,
    D,
    Plan,
    assess,
    deny,
)
from bracketgate.bus.commands import (
    CancelCommand,
    CloseCommand,
    CommandAnswer,
    CommandVerdict,
    LegState,
    TrailCommand,
)
from bracketgate.bus.errors import BrokerError, BrokerNotConnected
from bracketgate.bus.messages import Fill, Leg, OrderEvent, Reason
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.crashpoints import crash_point
from bracketgate.core.logs import get_logger
from bracketgate.core.tasks import TaskSet
from structlog.contextvars import bound_contextvars

log = get_logger("agents.commands")

COMMAND_TIMEOUT_S = 10.0   # how long IB has to confirm all of one command's steps
RECONNECT_WAIT_S = 15.0    # a command cut by a lost connection: how long IB may take to be back
REDELIVERY_WINDOW_S = 60.0  # a recovered command's redelivery within this: not answered twice
# after a partial close's fill: how long IB has to shrink the exits (their new size comes in
# their own openOrder, after the fill) before they are resized here
OCA_SHRINK_WAIT_S = 1.0

# --------------------------------------------------------------------------- the desk


class CommandDesk:
    """Takes commands in, gates them, carries them out at IB, answers once. See module doc."""

    def __init__(self, bus: Any, governor: Any, execution: Any, broker: Any, orders: Any, *,
                 journal: Any = None, clock: Clock = SYSTEM_CLOCK,
                 timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self._bus = bus
        self._governor = governor
        self._execution = execution
        self._broker = broker
        self._orders = orders            # adapters/ib_lifecycle.py BracketOrders
        self._journal = journal          # adapters/journal_commands.py CommandJournal
        self._clock = clock
        self.timeout_s = timeout_s
        self._inflight: dict[str, str] = {}
        self._running: set[tuple[str, str]] = set()
        self._tasks = TaskSet()
        self._memory: dict[tuple[str, str], tuple[dict[str, Any], CommandAnswer | None]] = {}
        self._changed = asyncio.Event()
        self._recovered: dict[tuple[str, str], float] = {}   # answered at start-up -> when
        self._sent_again: set[tuple[str, str]] = set()       # undelivered answers re-sent

    def attach(self) -> None:
        self._bus.subscribe(OrderEvent, self._on_change, name="commands")
        self._bus.subscribe(Fill, self._on_change, name="commands")

    async def _on_change(self, msg: Any) -> None:
        self._changed.set()
        if isinstance(msg, Fill) and msg.leg is not Leg.ENTRY:
            self._software_oca(msg.proposal_id)

    def _software_oca(self, proposal_id: str) -> None:
        """An exit left the bracket flat with its entry done: what still works of its exits
        (a standalone trailing stop outside the children's OCA group, a child IB's OCA did
        not reach) would open a position the other way. Cancelled."""
        book = self._execution.book(proposal_id)
        if book is None or book.open_quantity > EPS or book.status.get(Leg.ENTRY) != "Filled":
            return
        for leg in (Leg.TAKE_PROFIT, Leg.STOP_LOSS):
            oid = getattr(book.ids, leg.value)
            if oid and book.status.get(leg) not in TERMINAL and self._orders.working(oid):
                log.warning("exit_cancelled_flat", proposal_id=proposal_id, order_id=oid,
                            leg=leg.value, code="SOFTWARE_OCA")
                self._spawn(self._cancel_quietly(proposal_id, oid), f"oca:{oid}")

    async def _cancel_quietly(self, proposal_id: str, order_id: int) -> None:
        try:
            await self._broker.cancel_order(order_id)
        except BrokerError as e:
            log.warning("exit_cancel_failed", proposal_id=proposal_id, order_id=order_id,
                        code=e.code, error=e.message)

    # ------------------------------------------------------------------ intake

    async def take_in(self, cmd: Command) -> None:
        """The bridge's hook: durable (journal) before it returns; the command runs as a task."""
        key = (cmd.agent_id, cmd.command_id)
        request = cmd.model_dump(mode="json")
        undelivered = False
        if self._journal is not None:
            row = await self._journal.take(cmd)
            seen = None if row is None else (row.request, None if row.answer is None
                                             else CommandAnswer.model_validate(row.answer))
            undelivered = row is not None and row.answer is not None and not row.delivered
        else:
            seen = self._memory.get(key)
            if seen is None:
                self._memory[key] = (request, None)
        crash_point("command_journaled")
        if seen is None:
            self._spawn(self._run(cmd), f"command:{cmd.agent_id}:{cmd.command_id}")
            return
        first, answer = seen
        if first != request:
            log.warning("command_duplicate", command_id=cmd.command_id, agent_id=cmd.agent_id,
                        proposal_id=cmd.proposal_id, code=str(D.DUPLICATE_COMMAND))
            await self._bus.publish(self._answer(cmd, [deny(D.DUPLICATE_COMMAND, value=cmd.command_id,
                                                            field_="command_id")]))
            return
        if answer is not None:
            recovered_at = self._recovered.pop(key, None)
            if recovered_at is not None and self._clock.monotonic() - recovered_at < REDELIVERY_WINDOW_S:
                # the broker's redelivery of a command this run answered from IB's state at
                # start-up: that answer went out already (the agent gets one)
                log.info("command_redelivery_after_recovery", command_id=cmd.command_id,
                         agent_id=cmd.agent_id)
                return
            log.info("command_repeated", command_id=cmd.command_id, agent_id=cmd.agent_id,
                     verdict=answer.verdict.value)
            if undelivered:   # an earlier run's answer the broker never had: sent here, so
                self._sent_again.add(key)   # start-up's recover() does not send it twice
            await self._bus.publish(answer)
        elif key not in self._running:   # journaled by a run that died before answering
            self._spawn(self._recover(cmd), f"command-recover:{cmd.command_id}")

    async def delivered(self, keys: list[tuple[str, str]]) -> None:
        """The broker acknowledged these answers ((agent_id, command_id) each)."""
        if self._journal is not None:
            await self._journal.delivered(keys)

    async def recover(self) -> int:
        """At start-up (IB reconciled): publish again the answers an earlier run journaled and
        the broker never acknowledged; answer, from what IB has, each command an earlier run
        took in and never answered (never acted on again); leave no bracket with a stop that
        covers less than it holds, nor exits working on a flat bracket."""
        for book in list(self._execution.books()):
            self._software_oca(book.proposal_id)
            await self._reprotect(book.proposal_id)
        if self._journal is None:
            return 0
        from bracketgate.bus.commands import parse_command

        for answer in await self._journal.undelivered():
            key = (answer.agent_id, answer.command_id)
            if key in self._sent_again or key in self._recovered:   # sent here already (its
                continue                                          # redelivery came first)
            self._recovered[key] = self._clock.monotonic()
            log.info("command_answer_republished", command_id=answer.command_id,
                     agent_id=answer.agent_id, proposal_id=answer.proposal_id)
            await self._bus.publish(answer)
        rows = await self._journal.unanswered()
        for row in rows:
            try:
                cmd = parse_command(row.request)
            except Exception as e:  # a row this version cannot read: logged, left as it is
                log.error("command_unreadable", command_id=row.command_id, error=repr(e))
                continue
            if (cmd.agent_id, cmd.command_id) not in self._running:
                await self._recover(cmd)
        return len(rows)

    # ------------------------------------------------------------------ running

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.spawn(coro, name)

    async def wait_idle(self, timeout: float) -> bool:
        return await self._tasks.wait_idle(timeout)

    def bracket_now(self, proposal_id: str) -> BracketNow | None:
        book = self._execution.book(proposal_id)
        if book is None:
            return None
        ids = {"entry": book.ids.entry, "take_profit": book.ids.take_profit,
               "stop_loss": book.ids.stop_loss}
        legs: dict[str, LegState] = {}
        proposal = self._execution.proposal_of(proposal_id)
        for name, oid in ids.items():
            leg = self._orders.leg(oid) if oid else None
            if leg is None and oid:   # IB's word through the book (a completed order: IB
                st = book.status.get(Leg(name), "")   # reports it without its order id)
                p = proposal if name == "entry" else None
                leg = LegState(order_id=oid, status=st, filled=book.filled.get(Leg(name), 0.0),
                               order_type=p.order_type.value if p is not None else "",
                               quantity=float(p.quantity) if p is not None else 0.0,
                               limit_price=p.limit_price if p is not None else None)
            if leg is not None:
                legs[name] = leg
        if legs.get("stop_loss") is None or legs["stop_loss"].status in TERMINAL:
            # the stop was replaced by an order followed as a guard (a trailing stop placed by
            # an earlier run, a protective stop): the newest working one is the stop
            for gid in reversed(list(book.guards)):
                leg = self._orders.leg(gid)
                if leg is not None and leg.status not in TERMINAL \
                        and leg.order_type.startswith(("STP", "TRAIL")):
                    ids["stop_loss"], legs["stop_loss"] = gid, leg
                    break
        tick, mult, market = 0.01, 1.0, None
        contract = self._governor._contract_for(proposal) if proposal is not None else None
        if contract is not None:
            tick, mult = contract.min_tick or tick, contract.multiplier or mult
            snap = self._governor.snapshot
            q = snap.quotes.get(contract.con_id) if snap is not None else None
            if q is not None:
                market = q.last or ((q.bid + q.ask) / 2 if q.bid and q.ask else None)
        # IB's order status and the execution agent's book may be one event apart: the larger
        def filled(name: str) -> float:
            leg = legs.get(name)
            return max(book.filled.get(Leg(name), 0.0), leg.filled if leg is not None else 0.0)

        entry_filled = filled("entry")
        held = max(0.0, entry_filled - filled("take_profit") - book.filled.get(Leg.STOP_LOSS, 0.0)
                   - book.guard_filled)
        return BracketNow(
            proposal_id=proposal_id, agent_id=book.agent_id, symbol=book.symbol, side=book.side,
            ids=ids, legs=legs, entry_filled=entry_filled,
            held=held, closed=book.closed and held <= EPS, proposal=proposal,
            exits=dict(book.guards), tick=tick, multiplier=mult, market=market)

    async def _run(self, cmd: Command) -> None:
        key = (cmd.agent_id, cmd.command_id)
        self._running.add(key)
        try:
            with bound_contextvars(proposal_id=cmd.proposal_id, agent_id=cmd.agent_id,
                                   command_id=cmd.command_id):
                answer = await self._decide_and_do(cmd)
                await self._finish(cmd, answer)
        finally:
            self._running.discard(key)

    async def _decide_and_do(self, cmd: Command) -> CommandAnswer:
        now = self.bracket_now(cmd.proposal_id)
        plan = assess(cmd, now, self._governor, in_flight=self._inflight.get(cmd.proposal_id))
        if not isinstance(plan, Plan):
            log.info("command_decision", action=cmd.action, verdict="rejected",
                     codes=[r.code.value for r in plan])
            return self._answer(cmd, plan, now)
        assert now is not None
        self._inflight[cmd.proposal_id] = cmd.command_id
        res = self._governor.ledger.get(cmd.proposal_id)
        before = (res.quantity, res.stop_price, res.worst_case_loss) if res is not None else None
        if plan.raises_risk:   # reserved in the same step as the check (as an approval is)
            self._amend_reservation(cmd.proposal_id, plan)
        log.info("command_decision", action=cmd.action, verdict="accepted",
                 raises_risk=plan.raises_risk, worst_case_loss=plan.worst_case)
        try:
            try:
                failure = await asyncio.wait_for(self._execute(cmd, plan, now), self.timeout_s)
            except TimeoutError:
                failure = f"IB did not confirm every step within {self.timeout_s}s"
            except BrokerNotConnected as e:
                failure = await self._after_reconnect(cmd, e)
            except BrokerError as e:
                if e.code == "PLACEMENT_UNCERTAIN":   # the socket dropped before IB's ack
                    failure = await self._after_reconnect(cmd, e)
                else:
                    failure = f"{e.message} (code {e.code})" if e.code is not None else e.message
            if failure is not None:
                self._settle_exits(cmd.proposal_id)
                await self._reprotect(cmd.proposal_id)
        finally:
            self._inflight.pop(cmd.proposal_id, None)
        after = self.bracket_now(cmd.proposal_id) or now
        if failure is not None:
            if plan.raises_risk and before is not None:   # the reservation as IB has it
                self._governor.ledger.amend(cmd.proposal_id, quantity=before[0],
                                            stop_price=after.stop_price or before[1],
                                            worst_case_loss=max(before[2], 0.0))
            log.warning("command_failed", action=cmd.action, code=str(D.COMMAND_FAILED),
                        error=failure)
            return self._answer(cmd, [deny(D.COMMAND_FAILED, value=failure[:200])], after)
        if not plan.raises_risk:
            self._amend_reservation(cmd.proposal_id, plan)
        log.info("command_done", action=cmd.action)
        return self._answer(cmd, [], after)

    def _amend_reservation(self, proposal_id: str, plan: Plan) -> None:
        if plan.action in ("cancel", "close"):
            return   # the order events and fills move it (released when the bracket ends)
        stop = plan.trail_stop if plan.action == "trail" else plan.stop
        self._governor.ledger.amend(proposal_id, quantity=plan.quantity, stop_price=stop,
                                    worst_case_loss=plan.worst_case)

    async def _finish(self, cmd: Command, answer: CommandAnswer) -> None:
        """Journal the answer (the idempotent one from now on), then publish it."""
        if self._journal is not None:
            await self._journal.answer(answer)
        else:
            self._memory[(cmd.agent_id, cmd.command_id)] = (cmd.model_dump(mode="json"), answer)
        crash_point("command_answered")
        await self._bus.publish(answer)

    def _answer(self, cmd: Command, reasons: list[Reason], now: BracketNow | None = None
                ) -> CommandAnswer:
        if any(r.code in (D.VALIDATION_ERROR,) for r in reasons):
            verdict = CommandVerdict.INVALID
        else:
            verdict = CommandVerdict.REJECTED if reasons else CommandVerdict.ACCEPTED
        legs: dict[str, LegState] = {}
        position = None
        if now is not None and now.agent_id == cmd.agent_id:
            legs = dict(now.legs)
            exits = list(now.exits)
            for oid in exits:   # the latest market exit is "close", earlier ones close_<id>
                leg = self._orders.leg(oid)
                if leg is not None:
                    legs["close" if oid == exits[-1] else f"close_{oid}"] = leg
            position = now.sign * now.held
        return CommandAnswer(command_id=cmd.command_id, proposal_id=cmd.proposal_id,
                             agent_id=cmd.agent_id, action=cmd.action, verdict=verdict,
                             reasons=reasons, legs=legs, position=position,
                             trading_state=self._governor.state, ts=self._clock.now())

    # ------------------------------------------------------------------ at IB

    async def _until(self, ok: Callable[[], bool]) -> None:
        """Until `ok()` holds (re-checked at every order event and fill)."""
        while not ok():
            self._changed.clear()
            await self._changed.wait()

    def _order_status(self, proposal_id: str, order_id: int) -> str:
        """An order of this bracket as the execution agent last heard of it from IB."""
        book = self._execution.book(proposal_id)
        if book is None or not order_id:
            return ""
        if order_id in book.guards:
            return book.guards[order_id]
        leg = book.leg_of(order_id)
        return book.status.get(leg, "") if leg is not None else ""

    async def _cancel(self, proposal_id: str, order_id: int) -> None:
        """Cancel one order of the bracket; returns once IB reports it ended."""
        if not order_id or self._order_status(proposal_id, order_id) in TERMINAL:
            return
        await self._broker.cancel_order(order_id)
        await self._until(lambda: self._order_status(proposal_id, order_id) in TERMINAL)

    async def _execute(self, cmd: Command, plan: Plan, now: BracketNow) -> str | None:
        """Carry the plan out; None when IB confirmed it all, else what went wrong."""
        pid, ids = cmd.proposal_id, now.ids
        orders = self._orders
        if plan.action == "cancel":
            await self._cancel(pid, ids["entry"])
            book = self._execution.book(pid)
            if book is not None and book.filled.get(Leg.ENTRY, 0.0) > EPS:
                return "the entry filled before the cancel reached IB; use close"
            return None
        if plan.action == "amend":
            working = {name for name in ("entry", "take_profit", "stop_loss")
                       if orders.working(ids[name])}
            if plan.quantity is not None:
                grow = plan.quantity > now.entry_quantity
                # larger: children first (never more entry than exits); smaller: entry first
                order = (["take_profit", "stop_loss", "entry"] if grow
                         else ["entry", "take_profit", "stop_loss"])
                for name in order:
                    if name in working:
                        await orders.modify(ids[name], quantity=plan.quantity)
            if plan.stop is not None:
                if "stop_loss" not in working:
                    return "the stop is not working at IB"
                await orders.modify(ids["stop_loss"], stop_price=plan.stop)
            if plan.take is not None:
                if "take_profit" not in working:
                    return "the take-profit is not working at IB"
                await orders.modify(ids["take_profit"], limit_price=plan.take)
            return None
        if plan.action == "trail":
            return await self._trail(pid, plan, now)
        assert plan.action == "close" and plan.close_quantity is not None
        return await self._close(cmd, plan.close_quantity, now)

    async def _trail(self, pid: str, plan: Plan, now: BracketNow) -> str | None:
        """Cancel / replace inside the bracket's OCA group, the new stop FIRST: a trailing stop
        is placed (a child of the entry while it works, else standalone in the children's
        named OCA group), it becomes the bracket's stop, and only once IB works it is the
        old stop cancelled. There is no moment without a working stop."""
        old = now.ids["stop_loss"]
        stop = now.legs.get("stop_loss")
        if stop is None or not self._orders.working(old):
            return "the stop is not working at IB"
        quantity = stop.quantity if now.entry_working else now.held
        new = self._broker.allocate_order_id()
        self._execution.replace_stop(pid, new)
        try:
            await self._orders.place_trailing_stop(
                old, new, trail_amount=plan.trail_amount, trail_percent=plan.trail_percent,
                trail_stop=plan.trail_stop, quantity=quantity)
        except BrokerError:
            self._execution.replace_stop(pid, old)   # the old stop is the stop again
            raise
        await self._cancel(pid, old)
        return None

    async def _close(self, cmd: Command, qty: float, now: BracketNow) -> str | None:
        """A market exit of `qty`. With the children in a named OCA group (every bracket this
        version placed): the exit joins it (reduce), so its fills shrink the take-profit and
        the stop by what it sold — never an exit larger than the position, never a moment
        with less stop than position; what IB did not shrink is resized after. Without one:
        partial, the children shrink to what stays first; full, the take-profit is cancelled
        first, the stop stays until the exit filled, then it is cancelled."""
        pid, ids, orders = cmd.proposal_id, now.ids, self._orders
        full = qty >= now.held - EPS
        if now.entry_working:   # nothing more may come in behind a close (the children of a
            await self._cancel(pid, ids["entry"])   # partly filled entry would not cover it)
            now = self.bracket_now(pid) or now
            qty = now.held if full else min(qty, now.held)
            if qty <= EPS:
                return "nothing held once the entry was cancelled"
        stop = now.legs.get("stop_loss")
        group = stop.oca_group if stop is not None and orders.working(ids["stop_loss"]) else None
        if group:
            target = max(now.held - qty, 0.0)
            oid = self._broker.allocate_order_id()
            self._execution.add_exit(pid, oid)
            crash_point("close_sent")
            await self._broker.place_protective(ids["entry"], action=now.side.opposite,
                                                quantity=qty, order_ref=pid, stop_price=None,
                                                order_id=oid, oca_group=group)
            await self._until(lambda: (self.bracket_now(pid) or now).held <= target + EPS)
            if full:   # IB's OCA cancelled them once shrunk to nothing; else they go now
                await self._cancel(pid, ids["take_profit"])
                await self._cancel(pid, ids["stop_loss"])
            else:   # IB's OCA (ocaType 3) shrinks the exits by what the close filled, in their
                # own openOrders after the fill: read before resizing what IB did not
                try:
                    await asyncio.wait_for(self._until(lambda: self._exits_fit(pid)),
                                           OCA_SHRINK_WAIT_S)
                except asyncio.TimeoutError:
                    pass
                await self._reprotect(pid)
            return None
        if full:
            await self._cancel(pid, ids["take_profit"])
            now = self.bracket_now(pid) or now   # it may have filled some before it went
            qty = now.held
            if qty <= EPS:
                await self._cancel(pid, ids["stop_loss"])
                return None
        else:   # each working child's total (what it filled included) covers what stays
            stays = now.held - qty
            for name in ("take_profit", "stop_loss"):
                leg = now.legs.get(name)
                if leg is not None and orders.working(ids[name]):
                    await orders.modify(ids[name], quantity=leg.filled + stays)
        target = max(now.held - qty, 0.0)
        oid = self._broker.allocate_order_id()
        self._execution.add_exit(pid, oid)
        crash_point("close_sent")
        await self._broker.place_protective(ids["entry"], action=now.side.opposite, quantity=qty,
                                            order_ref=pid, stop_price=None, order_id=oid)

        def exited() -> bool:
            b = self.bracket_now(pid)
            return b is None or b.held <= target + EPS

        await self._until(exited)
        if full:
            await self._cancel(pid, ids["stop_loss"])
        return None

    async def _after_reconnect(self, cmd: Command, e: BrokerError) -> str | None:
        """The connection dropped in the middle: what IB did is unknown until it is back and
        reconciled. Wait (bounded), then answer what IB has: accepted when IB shows what the
        command asked for, else COMMAND_FAILED (never a guess, never a second send)."""
        log.warning("command_uncertain", action=cmd.action, error=e.message,
                    wait_s=RECONNECT_WAIT_S)
        wait_ready = getattr(self._broker, "wait_ready", None)
        if wait_ready is None or not await wait_ready(RECONNECT_WAIT_S):
            return f"IB connection lost and not back within {RECONNECT_WAIT_S}s: {e.message}"
        now = self.bracket_now(cmd.proposal_id)
        if now is not None and _reached(cmd, now):
            log.info("command_settled_by_reconcile", action=cmd.action)
            return None
        return f"IB connection lost during the command; IB did not take it: {e.message}"

    def _settle_exits(self, proposal_id: str) -> None:
        """After a failed command, with IB reconciled: an exit this command sent that IB never
        acknowledged (still PendingSubmit, or unknown to the connection) is not at IB."""
        book = self._execution.book(proposal_id)
        if book is None or not getattr(self._broker, "is_ready", False):
            return
        for gid, st in list(book.guards.items()):
            if st in ("PendingSubmit", ""):
                leg = self._orders.leg(gid)
                if leg is None or leg.status in ("PendingSubmit", ""):
                    self._execution.exit_not_at_ib(proposal_id, gid)

    def _missized(self, now: BracketNow) -> list[tuple[str, int, LegState, float, bool]]:
        """The working exits that do not cover exactly what the bracket holds: (leg name, order
        id, leg, working quantity, over). Too small: under; too large with the entry done:
        over (an exit for more than is held would open a position the other way)."""
        out = []
        if now.held <= EPS:
            return out
        for name in ("stop_loss", "take_profit"):
            leg = now.legs.get(name)
            oid = now.ids.get(name, 0)
            if leg is None or not self._orders.working(oid):
                continue
            rem = leg.quantity - leg.filled
            over = not now.entry_working and rem > now.held + EPS
            if over or rem < now.held - EPS:
                out.append((name, oid, leg, rem, over))
        return out

    def _exits_fit(self, proposal_id: str) -> bool:
        """No working exit covers more than the bracket holds (what _reprotect resizes down)."""
        now = self.bracket_now(proposal_id)
        return now is None or not any(over for *_, over in self._missized(now))

    async def _reprotect(self, proposal_id: str) -> None:
        """After a command failed or was cut: the exits cover exactly what the bracket holds.
        Too small (a partial close cut between the resize and its exit): resized up. Too large
        with the entry done (a close whose exit filled only partly): resized down (_missized)."""
        now = self.bracket_now(proposal_id)
        if now is None:
            return
        for name, oid, leg, rem, _over in self._missized(now):
            log.error("exit_missized", proposal_id=proposal_id, order_id=oid, leg=name,
                      held=now.held, working=rem, code="EXIT_MISSIZED",
                      action="resized to what is held")
            try:
                await self._orders.modify(oid, quantity=leg.filled + now.held)
            except BrokerError as e:
                log.error("exit_resize_failed", proposal_id=proposal_id, order_id=oid,
                          code=e.code, error=e.message)

    async def _recover(self, cmd: Command) -> None:
        """A command an earlier run took in and did not answer: answered from what IB has now
        (accepted when IB shows what it asked for, else COMMAND_FAILED), never re-sent."""
        key = (cmd.agent_id, cmd.command_id)
        self._running.add(key)
        try:
            now = self.bracket_now(cmd.proposal_id)
            reasons: list[Reason] = []
            if now is None:
                reasons = [deny(D.UNKNOWN_BRACKET, value=cmd.proposal_id, field_="proposal_id")]
            elif now.agent_id != cmd.agent_id:
                reasons = [deny(D.NOT_BRACKET_OWNER, value=cmd.agent_id, field_="agent_id")]
            elif not _reached(cmd, now):
                reasons = [deny(D.COMMAND_FAILED, value="interrupted",
                                detail="the daemon stopped while the command was in flight; IB "
                                       "has the bracket as the legs show (not re-sent)")]
            log.warning("command_recovered", command_id=cmd.command_id, action=cmd.action,
                        verdict="accepted" if not reasons else "rejected",
                        codes=[r.code.value for r in reasons])
            if now is not None:
                await self._reprotect(cmd.proposal_id)
                now = self.bracket_now(cmd.proposal_id) or now
            self._recovered[key] = self._clock.monotonic()
            await self._finish(cmd, self._answer(cmd, reasons, now))
        finally:
            self._running.discard(key)


def _reached(cmd: Command, now: BracketNow) -> bool:
    """IB shows what the command asked for."""
    if isinstance(cmd, CancelCommand):
        return not now.entry_working and now.entry_filled <= EPS
    if isinstance(cmd, CloseCommand):
        return any(st == "Filled" for st in now.exits.values())
    stop = now.legs.get("stop_loss")
    if isinstance(cmd, TrailCommand):
        return stop is not None and stop.order_type.startswith("TRAIL")
    ok = True
    if cmd.stop_loss is not None:
        ok &= stop is not None and stop.stop_price is not None and abs(stop.stop_price - cmd.stop_loss) < 1e-9
    if cmd.take_profit is not None:
        take = now.legs.get("take_profit")
        ok &= take is not None and take.limit_price is not None \
            and abs(take.limit_price - cmd.take_profit) < 1e-9
    if cmd.quantity is not None:
        entry = now.legs.get("entry")
        ok &= entry is not None and abs(entry.quantity - cmd.quantity) < 1e-9
    return ok
