"""agents/staging.py against the paper TWS over a real socket, a real journal and the real
governor: an approval's order intent is written while IB answers the what-if, it is committed
before the first leg reaches IB, a what-if that refuses (or is cancelled) leaves it failed with
nothing at IB, and ids handed out after the staged ones are never sent below them (IB's 103)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bracketgate.adapters.journal import Journal
from bracketgate.agents.portfolio import PortfolioMonitor
from bracketgate.agents.risk import RiskGovernor
from bracketgate.bus.messages import ApprovedBracket, DenialCode, TradeProposal, Verdict
from bracketgate.core.clock import SYSTEM_CLOCK
from tests.fixtures.ib_broker import Rig as ExecutionRig
from tests.fixtures.ib_broker import execution_rig, legs_at_ib, proposal
from tests.unit.riskkit import open_limits

pytestmark = pytest.mark.ib


class Rig(ExecutionRig):
    def __init__(self, rig: ExecutionRig, path: Path) -> None:
        super().__init__(rig.bus, rig.broker, rig.execution, rig.journal)
        self.path = path
        self.whatif_hook: Any = None       # awaited inside the what-if, before IB's answer
        self.whatif_answer: Any = None     # replaces IB's answer when set

    def governor(self) -> RiskGovernor:
        gov = RiskGovernor(open_limits(price_bands=False), SYSTEM_CLOCK,
                           contract_info=self.broker.cached_contract)

        async def whatif(b: ApprovedBracket) -> dict[str, Any]:
            if self.whatif_hook is not None:
                await self.whatif_hook(b)
            answer = await self.broker.what_if(b)
            return self.whatif_answer if self.whatif_answer is not None else answer

        gov.attach(self.bus, whatif=whatif)
        gov.use_staging(self.execution.stage, self.execution.unstage)
        return gov

    def committed_intent(self, pid: str) -> tuple[str, str | None] | None:
        """The intent as another connection reads it from the file: only what is committed."""
        conn = sqlite3.connect(str(self.path))
        try:
            row = conn.execute("SELECT state, order_ids FROM intents WHERE proposal_id = ?",
                               (pid,)).fetchone()
        finally:
            conn.close()
        return None if row is None else (row[0], row[1])

    async def intent_state(self, pid: str, want: str, timeout: float = 5.0) -> str | None:
        async def poll() -> str | None:
            while True:
                assert self.journal is not None
                recs = {r.proposal_id: r for r in await self.journal.intents()}
                if pid in recs and recs[pid].state == want:
                    return want
                await asyncio.sleep(0.02)   # the void's write is queued by a task of its own
        return await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def rig(paper_tws, tmp_path) -> AsyncIterator[Rig]:
    path = tmp_path / "journal.sqlite"
    journal = await Journal.open(path, SYSTEM_CLOCK)
    async with execution_rig(paper_tws, client_id=12, journal=journal, ack_timeout=2.0) as r:
        yield Rig(r, path)


async def decide(rig: Rig, gov: RiskGovernor, p: TradeProposal) -> Any:
    await rig.broker.resolve_contract(p)
    gov.on_snapshot(PortfolioMonitor(rig.bus, rig.broker).build())
    return await asyncio.wait_for(gov.handle_proposal(p), 15)


async def test_the_intent_is_written_during_the_what_if_and_committed_before_the_first_leg(
        paper_tws, rig):
    seen_in_whatif: list[Any] = []
    at_tws: list[Any] = []

    async def during_whatif(b: ApprovedBracket) -> None:
        # the staged write commits while IB has not answered yet (held here until it has)
        st = rig.execution._stager.staged[b.proposal.proposal_id]
        await asyncio.wait_for(asyncio.shield(st.write), 5)
        seen_in_whatif.append(rig.committed_intent(b.proposal.proposal_id))

    def on_place(m: Any) -> None:   # in the paper TWS, as each leg arrives
        if not m.what_if:
            at_tws.append((m.order_id, rig.committed_intent(m.order_ref)))

    rig.whatif_hook = during_whatif
    paper_tws.tws.on_place_order = on_place
    d = await decide(rig, rig.governor(), proposal("stg-1"))
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert seen_in_whatif and seen_in_whatif[0][0] == "pending"
    ids = (d.order_ids.entry, d.order_ids.take_profit, d.order_ids.stop_loss)
    assert [oid for oid, _ in at_tws] == list(ids)
    assert all(row is not None for _, row in at_tws), "a leg reached IB before its intent committed"
    legs = await legs_at_ib(paper_tws, "stg-1")
    assert sorted(o["orderId"] for o in legs) == sorted(ids)
    assert await rig.intent_state("stg-1", "acked") == "acked"
    assert rig.execution._stager.staged == {}


@pytest.mark.parametrize("how", ["margin", "error", "cancelled", "no_placement"])
async def test_a_refused_or_cancelled_what_if_voids_the_staged_intent(paper_tws, rig, how):
    gov = rig.governor()
    pid = f"stg-void-{how}"
    if how == "margin":
        rig.whatif_answer = {"init_margin_change": 1e12}
    elif how == "no_placement":   # the place request fails before the placement took it
        async def refuse(_b: ApprovedBracket) -> None:
            raise RuntimeError("no placement service answer")
        real = rig.bus._services["execution.place"]
        rig.bus._services["execution.place"] = refuse
    else:
        async def fail(_b: ApprovedBracket) -> None:
            if how == "error":
                raise RuntimeError("IB said no")
            await asyncio.sleep(30)          # cancelled while IB "answers"
        rig.whatif_hook = fail
    p = proposal(pid)
    if how == "cancelled":
        await rig.broker.resolve_contract(p)
        gov.on_snapshot(PortfolioMonitor(rig.bus, rig.broker).build())
        task = asyncio.create_task(gov.handle_proposal(p))
        for _ in range(200):
            if pid in rig.execution._stager.staged:
                break
            await asyncio.sleep(0.01)
        assert pid in rig.execution._stager.staged
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    else:
        d = await decide(rig, gov, p)
        assert d.verdict is Verdict.REJECTED
        want = {"margin": DenialCode.INSUFFICIENT_MARGIN, "error": DenialCode.WHATIF_FAILED,
                "no_placement": DenialCode.PLACEMENT_FAILED}[how]
        assert [r.code for r in d.reasons] == [want]
        if how == "no_placement":
            rig.bus._services["execution.place"] = real
    assert await rig.intent_state(pid, "failed") == "failed"
    assert rig.execution._stager.staged == {}
    assert await legs_at_ib(paper_tws, pid) == []
    # nothing is ever placed under a voided intent
    res = await rig.execution.place(ApprovedBracket(
        proposal=p, contract=rig.broker.cached_contract(p), approved_at=SYSTEM_CLOCK.now()))
    assert not res.ok and await legs_at_ib(paper_tws, pid) == []
    assert pid in rig.execution._stager.voided and pid not in rig.execution._intents


async def test_an_id_handed_out_after_the_staged_ones_renews_them_before_anything_is_sent(
        paper_tws, rig):
    staged_ids: list[Any] = []
    other: list[int] = []

    async def meanwhile(b: ApprovedBracket) -> None:
        staged_ids.append(rig.execution._stager.staged[b.proposal.proposal_id].ids)
        other.append(rig.broker.allocate_order_id())   # e.g. a protective stop, sent first

    rig.whatif_hook = meanwhile
    d = await decide(rig, rig.governor(), proposal("stg-renew"))
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert d.order_ids.entry > other[0] > staged_ids[0].stop_loss
    legs = await legs_at_ib(paper_tws, "stg-renew")
    assert sorted(o["orderId"] for o in legs) == [d.order_ids.entry, d.order_ids.take_profit,
                                                   d.order_ids.stop_loss]
    assert not any(o["status"] in ("Cancelled", "Inactive") for o in legs)
    (rec,) = [r for r in await rig.journal.intents() if r.proposal_id == "stg-renew"]
    assert rec.order_ids == d.order_ids.model_dump()


async def test_without_staging_the_placement_writes_its_intent_as_before(paper_tws, rig):
    gov = RiskGovernor(open_limits(price_bands=False), SYSTEM_CLOCK,
                       contract_info=rig.broker.cached_contract)

    async def whatif(b: ApprovedBracket) -> dict[str, Any]:
        assert rig.committed_intent(b.proposal.proposal_id) is None   # not staged
        return await rig.broker.what_if(b)

    gov.attach(rig.bus, whatif=whatif)
    d = await decide(rig, gov, proposal("stg-off"))
    assert d.verdict is Verdict.APPROVED, d.reasons
    assert await rig.intent_state("stg-off", "acked") == "acked"
