"""The operator's flatten: one command that stops everything (or one agent's / one symbol's).

`python run.py flatten [--agent A] [--symbol S]` or `{"action": "flatten", "agent_id"?: …,
"symbol"?: …}` on {prefix}/control. The RiskGovernor halts on the same ControlCommand (the
whole account, or only the scope: a scoped halt, lifted by resume). Then, for every bracket in
scope that is still working, at once:
  1. a working entry is cancelled (unfilled: its children go with it);
  2. what the bracket holds is closed at market: the take-profit cancelled first, the stop
     kept until the close filled, then cancelled (agents/commands.py CommandDesk._close);
and a FlattenReport says what was done (cancelled entries, units closed, stops cancelled,
what failed and why), published on {prefix}/events ("type": "flatten") and journaled.
Positions no bracket of this daemon holds are named in the report, never traded.
While a flatten runs, agents' commands on its brackets are answered COMMAND_IN_PROGRESS.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bracketgate.bus.commands import CloseCommand, FlattenReport
from bracketgate.bus.errors import BrokerError
from bracketgate.bus.messages import ControlCommand
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.logs import get_logger
from bracketgate.core.tasks import TaskSet

log = get_logger("agents.flatten")

EPS = 1e-9
FLATTEN_TIMEOUT_S = 20.0   # per bracket: IB's confirmations of its cancels and its close


class Flattener:
    def __init__(self, bus: Any, desk: Any, execution: Any, *, clock: Clock = SYSTEM_CLOCK,
                 timeout_s: float = FLATTEN_TIMEOUT_S) -> None:
        self._bus = bus
        self._desk = desk
        self._execution = execution
        self._clock = clock
        self.timeout_s = timeout_s
        self._tasks = TaskSet()

    def attach(self) -> None:
        self._bus.subscribe(ControlCommand, self._on_control, name="flatten")

    async def _on_control(self, cmd: ControlCommand) -> None:
        if cmd.action != "flatten":
            return
        self._tasks.spawn(self.flatten(cmd), "flatten")

    async def wait_idle(self, timeout: float) -> bool:
        return await self._tasks.wait_idle(timeout)

    def _in_scope(self, book: Any, cmd: ControlCommand) -> bool:
        return ((cmd.agent_id is None or book.agent_id == cmd.agent_id)
                and (cmd.symbol is None or book.symbol == cmd.symbol))

    async def flatten(self, cmd: ControlCommand) -> FlattenReport:
        report = FlattenReport(agent_id=cmd.agent_id, symbol=cmd.symbol, ts=self._clock.now())
        books = [b for b in self._execution.books() if self._in_scope(b, cmd) and not b.closed]
        log.warning("flatten_started", agent_id=cmd.agent_id, symbol=cmd.symbol,
                    brackets=len(books), reason=cmd.reason, by=cmd.by)
        results = await asyncio.gather(*(self._one(b.proposal_id) for b in books))
        cancelled, closed, stops, failed = [], {}, [], {}
        for pid, (was_cancelled, units, stop_ids, error) in zip((b.proposal_id for b in books), results):
            if was_cancelled:
                cancelled.append(pid)
            if units > EPS:
                closed[pid] = units
            stops.extend(stop_ids)
            if error is not None:
                failed[pid] = error
        unmanaged = self._unmanaged(cmd)
        for key, qty in unmanaged.items():
            failed[key] = f"position {qty:g} not held by a bracket of this daemon: not traded"
        report = report.model_copy(update={"cancelled_entries": cancelled, "closed": closed,
                                           "stops_cancelled": stops, "failed": failed,
                                           "ts": self._clock.now()})
        log.warning("flatten_done", agent_id=cmd.agent_id, symbol=cmd.symbol,
                    cancelled_entries=len(cancelled), closed=len(closed), failed=len(failed))
        await self._bus.publish(report)
        return report

    def _unmanaged(self, cmd: ControlCommand) -> dict[str, float]:
        """Positions in scope that no working bracket accounts for (an unscoped flatten only
        knows the account's positions by symbol; an agent's flatten never looks past its own)."""
        if cmd.agent_id is not None:
            return {}
        snap = self._desk._governor.snapshot
        if snap is None:
            return {}
        held: dict[str, float] = {}
        for b in self._execution.books():
            held[b.symbol] = held.get(b.symbol, 0.0) + b.side.sign * b.open_quantity
        out = {}
        for p in snap.positions:
            if cmd.symbol is not None and p.symbol != cmd.symbol:
                continue
            left = p.quantity - held.get(p.symbol, 0.0)
            if abs(left) > EPS and p.sec_type == "STK":
                out[f"position:{p.symbol}"] = left
        return out

    async def _one(self, pid: str) -> tuple[bool, float, list[int], str | None]:
        """(entry cancelled unfilled, units closed, stop ids cancelled, error)."""
        desk = self._desk
        marker = "flatten"
        desk._inflight[pid] = marker
        cancelled, units, stops = False, 0.0, []
        try:
            async with asyncio.timeout(self.timeout_s):
                now = desk.bracket_now(pid)
                if now is None:
                    return False, 0.0, [], None
                if now.entry_working:
                    await desk._cancel(pid, now.ids["entry"])
                    now = desk.bracket_now(pid) or now
                    cancelled = now.entry_filled <= EPS
                if now.held > EPS:
                    stop_id = now.ids["stop_loss"]
                    close = CloseCommand(command_id="flatten", agent_id=now.agent_id,
                                         proposal_id=pid, action="close")
                    error = await desk._close(close, now.held, now)
                    if error is not None:
                        return cancelled, 0.0, [], error
                    units = now.held
                    if self._execution.book(pid) is not None and \
                            desk._order_status(pid, stop_id) in ("Cancelled", "ApiCancelled"):
                        stops.append(stop_id)
                return cancelled, units, stops, None
        except TimeoutError:
            return cancelled, units, stops, f"IB did not confirm within {self.timeout_s}s"
        except BrokerError as e:
            return cancelled, units, stops, f"{e.message} (code {e.code})"
        finally:
            if desk._inflight.get(pid) == marker:
                desk._inflight.pop(pid, None)

