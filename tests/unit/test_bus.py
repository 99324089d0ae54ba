"""The in-process bus: ordering, isolation, overflow policies, request/reply, lifecycle, drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bracketgate.bus.bus import Bus, BusState, Overflow
from bracketgate.bus.errors import (
    BusError,
    BusOverloaded,
    DrainTimeout,
    LifecycleError,
    NoSuchService,
    RequestTimeout,
    ServiceAlreadyServed,
)
from bracketgate.bus.messages import ControlCommand, PortfolioSnapshot, TradeProposal
from bracketgate.core.clock import ManualClock

CLOCK = ManualClock()


def proposal(n: int, agent: str = "alpha") -> TradeProposal:
    return TradeProposal(proposal_id=f"p-{n}", agent_id=agent, symbol="AAPL", side="BUY",
                         quantity=1, limit_price=100.0, take_profit=110.0, stop_loss=95.0)


def cmd(n: int) -> ControlCommand:
    return ControlCommand(action="halt", reason=str(n))


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    b = Bus(clock=CLOCK, default_maxsize=100)
    yield b
    await b.close()


class Gate:
    """A handler that blocks until released: lets a test fill a queue deterministically."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.seen: list[Any] = []

    async def __call__(self, msg: Any) -> None:
        self.entered.set()
        await self.release.wait()
        self.seen.append(msg)


async def test_delivers_in_order_to_every_subscriber(bus: Bus) -> None:
    a: list[str] = []
    b: list[str] = []

    async def to_a(m: ControlCommand) -> None:
        a.append(m.reason)

    async def to_b(m: ControlCommand) -> None:
        await asyncio.sleep(0)  # interleave with the other worker
        b.append(m.reason)

    bus.subscribe(ControlCommand, to_a, name="a")
    bus.subscribe(ControlCommand, to_b, name="b")
    await bus.start()
    for i in range(50):
        await bus.publish(cmd(i))
    await bus.drain(timeout=2)
    assert a == b == [str(i) for i in range(50)]
    assert bus.stats()["a:ControlCommand"]["delivered"] == 50


async def test_topics_are_exact_types(bus: Bus) -> None:
    got: list[Any] = []

    async def on_cmd(m: ControlCommand) -> None:
        got.append(m)

    bus.subscribe(ControlCommand, on_cmd, name="c")
    await bus.start()
    await bus.publish(proposal(1))  # no subscriber: nothing happens
    await bus.publish(cmd(1))
    await bus.drain(timeout=2)
    assert got == [cmd(1)]


async def test_failing_handler_is_logged_and_isolated(bus: Bus) -> None:
    good: list[str] = []

    async def bad(m: TradeProposal) -> None:
        if m.proposal_id == "p-1":
            raise RuntimeError("boom")

    async def ok(m: TradeProposal) -> None:
        good.append(m.proposal_id)

    bus.subscribe(TradeProposal, bad, name="bad")
    bus.subscribe(TradeProposal, ok, name="ok")
    await bus.start()
    with capture_logs() as logs:
        for i in range(3):
            await bus.publish(proposal(i))
        await bus.drain(timeout=2)
    assert good == ["p-0", "p-1", "p-2"]
    failed = [e for e in logs if e["event"] == "bus_handler_failed"]
    assert len(failed) == 1
    assert failed[0]["subscription"] == "bad"
    assert failed[0]["topic"] == "TradeProposal"
    assert failed[0]["proposal_id"] == "p-1" and failed[0]["agent_id"] == "alpha"
    assert failed[0]["exc_info"]
    st = bus.stats()["bad:TradeProposal"]
    assert (st["delivered"], st["failed"]) == (2, 1)


async def test_block_waits_for_room(bus: Bus) -> None:
    gate = Gate()
    bus.subscribe(ControlCommand, gate, name="slow", maxsize=1, overflow=Overflow.BLOCK)
    await bus.start()
    await bus.publish(cmd(0))
    await gate.entered.wait()          # 0 is in the handler, queue empty
    await bus.publish(cmd(1))          # fills the queue
    third = asyncio.create_task(bus.publish(cmd(2)))
    await asyncio.sleep(0)
    assert not third.done()            # waiting for room
    assert bus.offer(cmd(3)) is False  # offer never waits and never drops for BLOCK
    gate.release.set()
    await third
    await bus.drain(timeout=2)
    assert [m.reason for m in gate.seen] == ["0", "1", "2"]


async def test_reject_refuses_and_delivers_to_nobody(bus: Bus) -> None:
    gate = Gate()
    other: list[str] = []

    async def fast(m: TradeProposal) -> None:
        other.append(m.proposal_id)

    bus.subscribe(TradeProposal, fast, name="journal", maxsize=100)
    bus.subscribe(TradeProposal, gate, name="risk", maxsize=1, overflow=Overflow.REJECT)
    await bus.start()
    assert bus.offer(proposal(0))
    await gate.entered.wait()
    assert bus.offer(proposal(1))           # queued
    assert bus.offer(proposal(2)) is False  # risk queue full: nobody gets it
    with pytest.raises(BusOverloaded) as ei:
        await bus.publish(proposal(3))
    assert ei.value.subscription == "risk" and ei.value.code == "OVERLOADED"
    assert isinstance(ei.value, BusError)
    gate.release.set()
    await bus.drain(timeout=2)
    assert [m.proposal_id for m in gate.seen] == ["p-0", "p-1"]
    assert other == ["p-0", "p-1"]
    assert bus.stats()["risk:TradeProposal"]["rejected"] == 2


async def test_drop_oldest_keeps_the_latest(bus: Bus) -> None:
    gate = Gate()
    bus.subscribe(PortfolioSnapshot, gate, name="mqtt", maxsize=2, overflow=Overflow.DROP_OLDEST)
    await bus.start()
    snaps = [PortfolioSnapshot(ts=CLOCK.now(), account=f"U{i}") for i in range(5)]
    await bus.publish(snaps[0])
    await gate.entered.wait()
    with capture_logs() as logs:
        for s in snaps[1:4]:
            await bus.publish(s)
        assert bus.offer(snaps[4])
    assert [e["event"] for e in logs].count("bus_dropped_oldest") == 2
    gate.release.set()
    await bus.drain(timeout=2)
    assert [s.account for s in gate.seen] == ["U0", "U3", "U4"]
    assert bus.stats()["mqtt:PortfolioSnapshot"]["dropped"] == 2


async def test_request_reply(bus: Bus) -> None:
    async def double(x: int) -> int:
        return 2 * x

    async def explode(_: Any) -> None:
        raise ValueError("bad payload")

    never = asyncio.Event()

    async def hang(_: Any) -> None:
        await never.wait()

    bus.serve("double", double)
    bus.serve("explode", explode)
    bus.serve("hang", hang)
    with pytest.raises(ServiceAlreadyServed):
        bus.serve("double", double)
    await bus.start()
    assert await bus.request("double", 21, timeout=1) == 42
    with pytest.raises(ValueError, match="bad payload"):
        await bus.request("explode", None, timeout=1)
    with pytest.raises(RequestTimeout) as ei:
        await bus.request("hang", None, timeout=0.05)
    assert ei.value.service == "hang"
    with pytest.raises(NoSuchService):
        await bus.request("nobody", None, timeout=1)


async def test_lifecycle() -> None:
    b = Bus(clock=CLOCK)
    got: list[Any] = []

    async def h(m: ControlCommand) -> None:
        got.append(m)

    b.subscribe(ControlCommand, h, name="h")
    assert b.state is BusState.UNOPENED
    await b.publish(cmd(0))  # queued until start
    with pytest.raises(LifecycleError):
        await b.drain(timeout=1)
    await b.start()
    with pytest.raises(LifecycleError):
        await b.start()
    await b.drain(timeout=1)
    assert got == [cmd(0)]
    await b.close()
    assert b.state is BusState.CLOSED
    await b.close()  # idempotent
    with pytest.raises(LifecycleError):
        await b.start()
    with pytest.raises(LifecycleError):
        await b.publish(cmd(1))
    with pytest.raises(LifecycleError):
        b.offer(cmd(1))
    with pytest.raises(LifecycleError):
        b.subscribe(ControlCommand, h, name="late")
    with pytest.raises(LifecycleError):
        await b.request("x", None, timeout=1)


async def test_subscribe_after_start_and_unsubscribe(bus: Bus) -> None:
    got: list[str] = []

    async def h(m: ControlCommand) -> None:
        got.append(m.reason)

    await bus.start()
    sub = bus.subscribe(ControlCommand, h, name="late")
    await bus.publish(cmd(1))
    await bus.drain(timeout=1)
    await bus.unsubscribe(sub)
    await bus.publish(cmd(2))
    await bus.drain(timeout=1)
    assert got == ["1"]
    with pytest.raises(ValueError):
        bus.subscribe(ControlCommand, h, name="x", maxsize=0)


async def test_drain_times_out_with_pending(bus: Bus) -> None:
    gate = Gate()
    bus.subscribe(ControlCommand, gate, name="stuck")
    await bus.start()
    await bus.publish(cmd(0))
    await bus.publish(cmd(1))
    await gate.entered.wait()
    with pytest.raises(DrainTimeout) as ei:
        await bus.drain(timeout=0.05)
    assert ei.value.pending == {"stuck:ControlCommand": 1}
    gate.release.set()
    await bus.drain(timeout=1)


async def test_handler_runs_with_bound_context(bus: Bus) -> None:
    from bracketgate.core.logs import get_logger

    inner = get_logger("test")

    async def h(m: TradeProposal) -> None:
        inner.info("handling")

    bus.subscribe(TradeProposal, h, name="h")
    await bus.start()
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await bus.publish(proposal(7, agent="beta"))
        await bus.drain(timeout=1)
    line = next(e for e in logs if e["event"] == "handling")
    assert line["proposal_id"] == "p-7" and line["agent_id"] == "beta"


# --------------------------------------------------------------------------- batches


async def test_subscribe_batch_hands_over_what_is_queued_in_order() -> None:
    from bracketgate.bus.messages import ControlCommand

    bus = Bus()
    got: list[list[str]] = []
    gate = asyncio.Event()

    async def handler(batch: list[ControlCommand]) -> None:
        got.append([m.reason for m in batch])
        await gate.wait()

    sub = bus.subscribe_batch(ControlCommand, handler, name="batch", batch_max=3)
    await bus.start()
    for i in range(7):
        await bus.publish(ControlCommand(action="halt", reason=f"r{i}", by="t"))
    gate.set()
    await bus.drain(2.0)
    assert got == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]   # at most batch_max each
    await bus.publish(ControlCommand(action="halt", reason="alone", by="t"))
    await bus.drain(2.0)
    assert got[-1] == ["alone"]          # a message alone is handed over alone, at once
    assert sub.delivered == 8
    await bus.close()


async def test_a_failing_batch_handler_is_counted_and_the_bus_goes_on() -> None:
    from bracketgate.bus.messages import ControlCommand

    bus = Bus()
    calls: list[int] = []

    async def handler(batch: list[ControlCommand]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")

    sub = bus.subscribe_batch(ControlCommand, handler, name="batch")
    await bus.start()
    await bus.publish(ControlCommand(action="halt", reason="a", by="t"))
    await bus.drain(2.0)
    await bus.publish(ControlCommand(action="halt", reason="b", by="t"))
    await bus.drain(2.0)
    assert calls == [1, 1] and sub.failed == 1 and sub.delivered == 1
    await bus.close()


async def test_overlapped_batches_start_while_the_one_before_still_awaits() -> None:
    """overlap=2: the next batch's call starts while the first one awaits (never a third at
    once), in order; drain() waits for every call; a failing call is counted, the rest go on;
    close() ends the calls in flight."""
    from bracketgate.bus.messages import ControlCommand

    bus = Bus()
    started: list[list[str]] = []
    gates = [asyncio.Event() for _ in range(4)]
    running = 0
    most = 0

    async def handler(batch: list[ControlCommand]) -> None:
        nonlocal running, most
        i = len(started)
        started.append([m.reason for m in batch])
        running += 1
        most = max(most, running)
        try:
            await gates[i].wait()
            if i == 1:
                raise RuntimeError("boom")
        finally:
            running -= 1

    sub = bus.subscribe_batch(ControlCommand, handler, name="batch", batch_max=2, overlap=2)
    await bus.start()
    await bus.publish(ControlCommand(action="halt", reason="a", by="t"))
    for _ in range(20):   # the first call is taken and awaits its gate
        await asyncio.sleep(0)
    for r in ("b", "c", "d"):
        await bus.publish(ControlCommand(action="halt", reason=r, by="t"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [["a"], ["b", "c"]]   # the second started while the first awaits
    assert most == 2
    with pytest.raises(DrainTimeout):
        await bus.drain(0.05)               # not done until the calls return
    gates[1].set()                          # the second ends first (failing): room for "d"
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [["a"], ["b", "c"], ["d"]] and most == 2
    gates[0].set()
    gates[2].set()
    await bus.drain(2.0)
    assert sub.failed == 2 and sub.delivered == 2
    await bus.publish(ControlCommand(action="halt", reason="e", by="t"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert started[-1] == ["e"] and running == 1
    await bus.close()                       # the call in flight is cancelled with the worker
    assert running == 0
    with pytest.raises(ValueError):
        bus.subscribe_batch(ControlCommand, handler, name="other", overlap=0)


async def test_wait_for_room_returns_once_the_worker_takes_one() -> None:
    bus = Bus()
    release = asyncio.Event()

    async def slow(_msg: TradeProposal) -> None:
        await release.wait()

    bus.subscribe(TradeProposal, slow, name="risk", maxsize=1, overflow=Overflow.REJECT)
    await bus.start()
    p = TradeProposal(proposal_id="w-1", agent_id="a", symbol="AAPL", side="BUY", quantity=1,
                      limit_price=100.0, take_profit=110.0, stop_loss=95.0)
    assert bus.offer(p)                      # taken by the worker (blocked in the handler)
    await asyncio.sleep(0)
    assert bus.offer(p.model_copy(update={"proposal_id": "w-2"}))   # fills the queue
    assert await bus.wait_for_room(TradeProposal, 0.05) is False    # still full
    waiting = asyncio.create_task(bus.wait_for_room(TradeProposal, 2.0))
    await asyncio.sleep(0)
    release.set()                            # w-1 done, the worker takes w-2: room again
    assert await waiting is True
    assert bus.offer(p.model_copy(update={"proposal_id": "w-3"}))
    await bus.drain(2.0)
    await bus.close()


def _context_the_long_way(msg: Any) -> dict[str, Any]:
    """message_context as it was: getattr of each id on the message, then on its proposal."""
    ctx: dict[str, Any] = {}
    for source in (msg, getattr(msg, "proposal", None)):
        if source is None:
            continue
        for key in ("proposal_id", "agent_id"):
            value = getattr(source, key, None)
            if value is not None and key not in ctx:
                ctx[key] = value
    return ctx


def test_message_context_reads_the_ids_each_kind_of_message_has() -> None:
    from datetime import datetime, timezone

    from bracketgate.bus.bus import message_context
    from bracketgate.bus.messages import ApprovedBracket, Fill, RiskDecision, Status, Verdict

    ts = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)
    p = TradeProposal(proposal_id="c-1", agent_id="a", symbol="AAPL", side="BUY", quantity=1,
                      limit_price=100.0, take_profit=110.0, stop_loss=95.0)
    messages = [
        p,
        RiskDecision(proposal_id="c-1", agent_id="a", verdict=Verdict.REJECTED, ts=ts),
        ApprovedBracket(proposal=p, approved_at=ts),
        Fill(proposal_id="c-1", agent_id="a", order_id=7, leg="entry", exec_id="e-1",
             symbol="AAPL", side="BUY", quantity=1.0, price=100.0, ts=ts),
        Status(state="online", mode="paper", ts=ts),
        PortfolioSnapshot(ts=ts, account="U1"),
    ]
    for msg in messages:
        assert message_context(msg) == _context_the_long_way(msg), type(msg).__name__
    assert message_context(messages[2]) == {"proposal_id": "c-1", "agent_id": "a"}  # the proposal's
    assert message_context(messages[4]) == {}


async def test_wait_for_room_with_room_arms_no_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = Bus()
    bus.subscribe(TradeProposal, _noop, name="risk", maxsize=2, overflow=Overflow.REJECT)

    def no_timeout(_delay: float) -> Any:
        raise AssertionError("a queue with room needs no timeout")

    monkeypatch.setattr(asyncio, "timeout", no_timeout)
    assert await bus.wait_for_room(TradeProposal, 1.0) is True


async def _noop(_msg: Any) -> None:
    return None
