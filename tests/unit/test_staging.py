"""agents/staging.py on its own: what is not staged, and the voided ids stay bounded."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from bracketgate.agents.staging import IntentStager
from bracketgate.bus.errors import BrokerError
from bracketgate.bus.messages import ApprovedBracket, BracketOrderIds, TradeProposal

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)


def bracket(pid: str) -> ApprovedBracket:
    return ApprovedBracket(approved_at=T0, proposal=TradeProposal.model_validate(dict(
        proposal_id=pid, agent_id="alpha", symbol="AAPL", side="BUY", quantity=1,
        order_type="LMT", limit_price=100.0, take_profit=104.0, stop_loss=97.0)))


class Broker:
    def __init__(self) -> None:
        self.next, self.max_order_id, self.ready = 1, 0, True

    def allocate_bracket_ids(self) -> BracketOrderIds:
        if not self.ready:
            raise BrokerError("IB not ready")
        ids = BracketOrderIds(entry=self.next, take_profit=self.next + 1, stop_loss=self.next + 2)
        self.next += 3
        self.max_order_id = ids.stop_loss
        return ids


class Journal:
    def __init__(self) -> None:
        self.written: list[str] = []
        self.marked: list[tuple[str, str]] = []

    def submit_intent(self, b: ApprovedBracket, ids: Any) -> asyncio.Future[int]:
        self.written.append(b.proposal.proposal_id)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(len(self.written))
        return fut

    async def mark_intent(self, pid: str, state: str, ids: Any = None, *, durable: bool = True) -> str:
        self.marked.append((pid, state))
        return "pending"


def spawner(tasks: list[asyncio.Task[Any]]) -> Any:
    return lambda coro, name: tasks.append(asyncio.get_running_loop().create_task(coro, name=name))


async def test_nothing_is_staged_without_a_journal_twice_or_without_ids() -> None:
    broker, tasks = Broker(), []
    assert not IntentStager(broker, None, spawner(tasks)).stage(bracket("p0"))
    journal = Journal()
    st = IntentStager(broker, journal, spawner(tasks))
    assert st.stage(bracket("p1")) and not st.stage(bracket("p1"))
    broker.ready = False
    assert not st.stage(bracket("p2")) and journal.written == ["p1"]


async def test_ready_keeps_the_staged_ids_unless_one_came_after_them() -> None:
    broker, journal, tasks = Broker(), Journal(), []
    st = IntentStager(broker, journal, spawner(tasks))
    st.stage(bracket("a"))
    staged = st.take("a")
    assert staged is not None and await st.ready("a", staged) == staged.ids
    st.stage(bracket("b"))
    broker.allocate_bracket_ids()            # someone else's id after b's
    staged = st.take("b")
    renewed = await st.ready("b", staged)
    assert renewed.entry > staged.ids.stop_loss and journal.marked == [("b", "pending")]


async def test_voided_intents_are_failed_and_the_memory_of_them_is_bounded() -> None:
    broker, journal, tasks = Broker(), Journal(), []
    st = IntentStager(broker, journal, spawner(tasks))
    st.VOIDED_MAX = 8
    for i in range(10):
        st.stage(bracket(f"v{i}"))
        st.void(f"v{i}")
    st.void("never-staged")                  # nothing to void: nothing done
    await asyncio.gather(*tasks)
    assert journal.marked == [(f"v{i}", "failed") for i in range(10)]
    assert list(st.voided) == [f"v{i}" for i in range(2, 10)] and st.staged == {}
