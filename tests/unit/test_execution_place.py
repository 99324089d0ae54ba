"""ExecutionAgent.place's requesters: each placement runs once as its own task and answers every
requester from inside it as it ends; a requester that stops waiting does not stop it; one
cancelled before it ran leaves nobody waiting."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from bracketgate.agents.execution import ExecutionAgent
from bracketgate.bus.messages import PlacementResult


def bracket(pid: str) -> SimpleNamespace:
    return SimpleNamespace(proposal=SimpleNamespace(proposal_id=pid, agent_id="a1"))


async def test_a_placement_answers_its_requesters_and_a_cancelled_one_leaves_none_waiting() -> None:
    agent = ExecutionAgent(SimpleNamespace(), SimpleNamespace())
    gate = asyncio.Event()
    calls: list[str] = []

    async def slow_place(b):   # stands in for the journal and IB round trips
        calls.append(b.proposal.proposal_id)
        await gate.wait()
        return PlacementResult(proposal_id=b.proposal.proposal_id, ok=True)

    agent._place = slow_place  # type: ignore[method-assign]
    first = asyncio.ensure_future(agent.place(bracket("p1")))
    impatient = asyncio.ensure_future(agent.place(bracket("p1")))
    for _ in range(3):
        await asyncio.sleep(0)
    impatient.cancel()                         # its deadline: the placement goes on
    await asyncio.gather(impatient, return_exceptions=True)
    gate.set()
    res = await asyncio.wait_for(first, 2)
    assert res.ok and calls == ["p1"] and agent._answers == {} and agent._placements == {}
    assert (await agent.place(bracket("p1"))).ok and calls == ["p1", "p1"]

    async def failing(b):
        raise RuntimeError("IB said no")

    agent._place = failing  # type: ignore[method-assign]
    try:
        await agent.place(bracket("p3"))
        raise AssertionError("not raised")
    except RuntimeError as e:                  # the placement's error reaches the requester
        assert "IB said no" in str(e)
    # cancelled before its first step: the requester hears it, nothing is left behind
    agent._place = slow_place  # type: ignore[method-assign]
    gate.clear()
    waiting = asyncio.ensure_future(agent.place(bracket("p2")))
    await asyncio.sleep(0)
    agent._placements["p2"].cancel()
    done, _ = await asyncio.wait([waiting], timeout=2)
    assert waiting in done and waiting.cancelled() and agent._answers == {}
