"""adapters/ib_prune.py against the paper TWS over a real socket (both client libraries run this
file): brackets placed and finished leave the client library's books (trades, permId2Trade,
fills) after the grace period; a pruned bracket's orderRef still refuses a second bracket and
`prior_placement` still reads it; a reconnect after pruning (the day's executions and completed
orders replayed) publishes no execution twice; a fresh connection (a restart) finds a pruned
bracket among IB's completed orders."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest

from bracketgate.adapters.ib import DuplicateOrderRefError, IBBroker
from bracketgate.agents.execution import ExecutionAgent
from bracketgate.bus.bus import Bus
from bracketgate.bus.messages import ApprovedBracket, BrokerExecution, ConnectionState
from tests.integration.test_pacing_and_placement import proposal

pytestmark = pytest.mark.ib

N = 6


class Rig:
    def __init__(self, bus: Bus, broker: IBBroker, execution: ExecutionAgent,
                 execs: list[BrokerExecution]) -> None:
        self.bus, self.broker, self.execution, self.execs = bus, broker, execution, execs

    async def place(self, pid: str) -> Any:
        p = proposal(pid)
        contract = await self.broker.resolve_contract(p)
        return await self.execution.place(ApprovedBracket(
            proposal=p, contract=contract, approved_at=datetime.now(timezone.utc)))


async def make_rig(paper_tws, client_id: int, retention_s: float) -> Rig:
    bus = Bus()
    await bus.start()
    execs: list[BrokerExecution] = []

    async def publish(msg: Any) -> None:
        if isinstance(msg, BrokerExecution):
            execs.append(msg)
        await bus.publish(msg)

    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=client_id,
                      publish=publish, heartbeat_s=0.5, ack_timeout=2.0,
                      trade_retention_s=retention_s)
    execution = ExecutionAgent(bus, broker, guard_grace_s=0.2)
    execution.attach()
    broker.add_reconcile_hook(execution.reconcile)
    await broker.start()
    return Rig(bus, broker, execution, execs)


async def close_rig(rig: Rig) -> None:
    await rig.broker.close()
    await rig.bus.close()


@pytest.fixture
async def rig(paper_tws) -> AsyncIterator[Rig]:
    r = await make_rig(paper_tws, 21, retention_s=1.0)
    try:
        yield r
    finally:
        await close_rig(r)


async def until(pred: Any, timeout: float = 20.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)   # the sweep runs every second; IB's events meanwhile


async def finish_brackets(rig: Rig, paper_tws, prefix: str) -> dict[str, Any]:
    placed = {}
    for i in range(N):
        res = await rig.place(f"{prefix}-{i}")
        assert res.order_ids is not None, res
        placed[f"{prefix}-{i}"] = res.order_ids
    await paper_tws.set_price("AAPL", 199.0)   # every entry (BUY LMT 200) fills
    await until(lambda: len(rig.execs) >= N, what="entries filled")
    await paper_tws.set_price("AAPL", 261.0)   # every take-profit fills, its stop is cancelled
    await until(lambda: len(rig.execs) >= 2 * N, what="take-profits filled")
    return placed


def book_sizes(broker: IBBroker) -> tuple[int, int, int]:
    w = broker.ib.wrapper
    return len(w.trades), len(w.permId2Trade), len(w.fills)


async def test_finished_brackets_leave_the_books_and_still_answer(rig, paper_tws) -> None:
    placed = await finish_brackets(rig, paper_tws, "ret")
    b = rig.broker
    assert book_sizes(b)[0] >= 3 * N
    await until(lambda: book_sizes(b) == (0, 0, 0), what="pruned")
    assert b.retention.stats()["pruned_trades"] == 3 * N
    assert b.retention.stats()["pruned_fills"] == 2 * N
    for ref, ids in placed.items():
        assert b.has_order_ref(ref)
        assert b.existing_bracket(ref) == ids             # crash-recovery lookup by orderRef
        rig.execution._forget(ref)   # what CLOSED_KEEP_S (30 s, < the grace) does to the book
        prior = rig.execution.prior_placement(proposal(ref))
        assert prior is not None and prior.outcome == "finished", prior
    p = proposal("ret-0")
    with pytest.raises(DuplicateOrderRefError) as e:     # never a second bracket for it
        await b.place_bracket(ApprovedBracket(proposal=p, contract=await b.resolve_contract(p),
                                              approved_at=datetime.now(timezone.utc)))
    assert e.value.order_ids == placed["ret-0"]
    # a second round: the books stay bounded (they empty again), the tombstones hold both
    await finish_brackets(rig, paper_tws, "ret2")
    await until(lambda: book_sizes(b) == (0, 0, 0), what="pruned again")
    assert len(b.retention.tombstones) == 2 * N
    assert not b._pending_execs and len(b._seen_execs) == 4 * N   # the adapter's own, bounded

    # reconnect after pruning: IB replays the day's executions and completed orders
    published = sorted(x.exec_id for x in rig.execs)
    assert len(published) == len(set(published)) == 4 * N
    reconnects = b.reconnects
    await paper_tws.restart(0.2)   # the gateway drops every client: the adapter reconnects
    await until(lambda: b.reconnects > reconnects and b.state is ConnectionState.READY,
                what="reconnected")
    await asyncio.sleep(0.5)   # let any replayed execution reach the pump (none must come)
    await until(lambda: b._outbox.qsize() == 0, what="outbox drained")
    assert sorted(x.exec_id for x in rig.execs) == published   # nothing counted twice
    await until(lambda: book_sizes(b)[0] == 0, what="the replayed completed orders pruned")


async def test_a_restart_finds_a_pruned_bracket_among_ibs_completed_orders(paper_tws) -> None:
    first = await make_rig(paper_tws, 22, retention_s=1.0)
    try:
        placed = await finish_brackets(first, paper_tws, "crash")
        await until(lambda: book_sizes(first.broker) == (0, 0, 0), what="pruned")
    finally:
        await close_rig(first)
    # a new process: no tombstones, the library's books loaded from IB at connect
    second = await make_rig(paper_tws, 22, retention_s=600.0)
    try:
        assert not second.broker.retention.tombstones
        for ref in placed:
            assert second.broker.has_order_ref(ref)
            prior = second.execution.prior_placement(proposal(ref))
            assert prior is not None and prior.outcome == "finished", (ref, prior)
    finally:
        await close_rig(second)
