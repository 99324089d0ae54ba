"""Replays: proposals too old (created_at, or first journaled), and proposal_ids remembered by
the journal after the governor's memory forgot them or a restart's 36 h lookback passed.

Real SQLite journals in tmp_path, the real bus; time is a ManualClock; placements are counted
by a bus service standing in for the ExecutionAgent (no IB here).
"""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bracketgate.adapters.journal import Journal, JournalOwnerError
from bracketgate.agents.risk import PLACE_SERVICE, RiskGovernor
from bracketgate.bus.bus import Bus
from bracketgate.bus.messages import (
    ApprovedBracket,
    BracketOrderIds,
    DenialCode,
    PlacementResult,
    Reason,
    RiskDecision,
    TradeProposal,
    Verdict,
)
from bracketgate.core.clock import ManualClock
from bracketgate.core.recovery import LOOKBACK, recover_from_journal
from tests.unit.riskkit import open_limits, proposal, snapshot


class Gate:
    """A governor on a real bus, its decisions journaled as the daemon's bridge does."""

    def __init__(self, journal: Journal, clock: ManualClock, **limits: Any) -> None:
        self.journal, self.clock = journal, clock
        self.gov = RiskGovernor(open_limits(**limits), clock)
        self.gov.use_id_memory(journal.first_seen)
        self.bus = Bus(clock=clock)
        self.placed: list[str] = []

    async def __aenter__(self) -> Gate:
        async def place(b: ApprovedBracket) -> PlacementResult:
            self.placed.append(b.order_ref)
            i = 3 * len(self.placed)
            return PlacementResult(proposal_id=b.order_ref, ok=True,
                                   order_ids=BracketOrderIds(entry=i, take_profit=i + 1,
                                                             stop_loss=i + 2))

        self.bus.serve(PLACE_SERVICE, place)
        self.gov.attach(self.bus)
        await self.bus.start()
        self.gov.on_snapshot(snapshot(self.clock))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.gov.aclose()
        await self.bus.close()

    async def propose(self, p: TradeProposal) -> RiskDecision:
        """As the daemon: journaled (once per id), decided, the decision journaled."""
        if not await self.journal.events(proposal_id=p.proposal_id, kinds="proposal", limit=1):
            await self.journal.record("proposal", payload=p, durable=True)
        self.gov.on_snapshot(snapshot(self.clock))
        d = await self.gov.handle_proposal(p)
        await self.journal.record("decision", payload=d)
        return d


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def journal(tmp_path: Path, clock: ManualClock) -> Any:
    async with Journal(tmp_path / "journal.sqlite", clock) as j:
        yield j


def codes(d: RiskDecision) -> list[DenialCode]:
    return [r.code for r in d.reasons]


# --------------------------------------------------------------------------- expiry


@pytest.mark.parametrize(("offset_s", "expired"), [
    (-61.0, True), (-59.0, False), (4.0, False), (6.0, True)])
def test_created_at_older_than_the_age_or_beyond_the_skew_is_expired(
        clock: ManualClock, offset_s: float, expired: bool) -> None:
    gov = RiskGovernor(open_limits(max_proposal_age_s=60.0, max_clock_skew_s=5.0), clock)
    snap = snapshot(clock)
    gov.on_snapshot(snap)
    p = proposal("old", created_at=clock.now() + timedelta(seconds=offset_s))
    d = gov.evaluate(p, snap)
    if expired:
        assert d.verdict is Verdict.REJECTED and codes(d) == [DenialCode.PROPOSAL_EXPIRED]
        assert d.reasons[0].field == "created_at"
        assert gov.evaluate(p, snap) is d          # the id's first decision, for good
        assert p.proposal_id not in gov.ledger
    else:
        assert d.verdict is Verdict.APPROVED, d


async def test_age_counts_from_first_journaled_when_there_is_no_created_at(
        journal: Journal, clock: ManualClock) -> None:
    """A proposal resubmitted later (after a restart) keeps its first-journaled time."""
    p = proposal("journaled-then-late")
    await journal.record("proposal", payload=p, durable=True)
    clock.advance(61)
    async with Gate(journal, clock, max_proposal_age_s=60.0) as g:
        d = await g.propose(p)
        assert codes(d) == [DenialCode.PROPOSAL_EXPIRED] and "first journaled" in d.reasons[0].message
        assert g.placed == []
        fresh = await g.propose(proposal("journaled-now"))
        assert fresh.verdict is Verdict.APPROVED and g.placed == ["journaled-now"]


# --------------------------------------------------------------------------- retention


async def test_a_resent_id_after_the_memory_forgot_it_gets_its_first_decision(
        journal: Journal, clock: ManualClock) -> None:
    async with Gate(journal, clock, max_remembered_decisions=1) as g:
        first = await g.propose(proposal("p1"))
        assert first.verdict is Verdict.APPROVED and first.order_ids is not None
        g.gov.release("p1", "bracket finished at IB")      # long finished: nothing keeps it
        for i in range(5):
            clock.advance(1)
            await g.propose(proposal(f"other-{i}"))
        g.gov.on_snapshot(snapshot(clock))                  # compacts the memory
        assert g.gov.decision_for("p1") is None             # forgotten by the governor
        again = await g.propose(proposal("p1"))
        assert again.verdict is Verdict.APPROVED and again.order_ids == first.order_ids
        other = await g.propose(proposal("p1", qty=20))     # same id, other content
        assert codes(other) == [DenialCode.DUPLICATE_PROPOSAL]
        assert g.placed.count("p1") == 1


async def test_a_resent_id_after_a_restart_past_the_lookback_gets_its_first_decision(
        journal: Journal, clock: ManualClock) -> None:
    async with Gate(journal, clock) as g:
        first = await g.propose(proposal("p-old"))
        assert first.verdict is Verdict.APPROVED
    clock.advance((LOOKBACK + timedelta(hours=4)).total_seconds())   # a restart, 40 h later
    async with Gate(journal, clock) as g:
        await recover_from_journal(journal, g.gov, clock)
        assert g.gov.decision_for("p-old") is None          # past the recovery lookback
        again = await g.propose(proposal("p-old"))
        assert again.verdict is Verdict.APPROVED and again.order_ids == first.order_ids
        assert g.placed == []                               # never a second order


async def test_a_failed_lookup_refuses_that_delivery_and_never_places(
        journal: Journal, clock: ManualClock) -> None:
    async with Gate(journal, clock) as g:
        async def broken(_pid: str) -> Any:
            raise OSError("disk I/O error (injected)")

        g.gov.use_id_memory(broken)
        d = await g.gov.handle_proposal(proposal("p-x"))
        assert codes(d) == [DenialCode.OVERLOADED] and g.placed == []
        g.gov.use_id_memory(journal.first_seen)
        assert (await g.propose(proposal("p-x"))).verdict is Verdict.APPROVED


# --------------------------------------------------------------------------- the journal's id table


async def test_first_seen_keeps_the_first_gate_decision_and_prunes_by_age(
        journal: Journal, clock: ManualClock) -> None:
    p = proposal("p1")
    t0 = clock.now()
    await journal.record("proposal", payload=p)
    overloaded = RiskDecision(proposal_id="p1", agent_id="a1", verdict=Verdict.REJECTED, ts=t0,
                              reasons=[Reason(code=DenialCode.OVERLOADED, message="busy")])
    await journal.record("decision", payload=overloaded)       # the bridge's: not final
    seen = await journal.first_seen("p1")
    assert seen is not None and seen.first_seen == t0 and seen.decision is None
    assert TradeProposal.model_validate(seen.proposal) == p
    clock.advance(5)
    approved = RiskDecision(proposal_id="p1", agent_id="a1", verdict=Verdict.APPROVED,
                            ts=clock.now())
    await journal.record("decision", payload=approved)
    await journal.record("decision", payload=approved.model_copy(update={"verdict": Verdict.REJECTED}))
    seen = await journal.first_seen("p1")
    assert seen is not None and seen.verdict == "approved" and seen.first_seen == t0
    retained = RiskDecision(proposal_id="r1", agent_id="a1", verdict=Verdict.REJECTED,
                            ts=clock.now(), reasons=[Reason(code=DenialCode.RETAINED_PROPOSAL,
                                                            message="retained")])
    await journal.record("decision", payload=retained)          # no proposal journaled
    assert (await journal.first_seen("r1")).verdict == "rejected"  # type: ignore[union-attr]
    assert await journal.first_seen("never") is None
    assert await journal.prune_ids(t0 + timedelta(seconds=1)) == 1   # p1 only
    assert await journal.first_seen("p1") is None and await journal.first_seen("r1") is not None


async def test_claim_records_mode_then_account_and_refuses_another(journal: Journal) -> None:
    await journal.claim(mode="paper", account=None)
    await journal.claim(mode="paper", account="DU111")
    assert (await journal.meta())["account"] == "DU111"
    with pytest.raises(JournalOwnerError, match="account=DU111"):
        await journal.claim(mode="paper", account="U222")
    with pytest.raises(JournalOwnerError, match="mode=paper"):
        await journal.claim(mode="default", account=None)
    assert (await journal.meta())["mode"] == "paper"


async def test_journal_files_are_owner_only_whatever_the_umask(tmp_path: Path,
                                                               clock: ManualClock) -> None:
    old = os.umask(0o022)
    try:
        existing = tmp_path / "old" / "journal.sqlite"
        async with Journal(existing, clock) as j:
            await j.record("note", payload={})
        existing.chmod(0o644)
        path = tmp_path / "new" / "journal.sqlite"
        async with Journal(path, clock) as j, Journal(existing, clock) as k:
            await j.record("note", payload={})
            await k.record("note", payload={})
            for f in (*path.parent.iterdir(), *existing.parent.iterdir()):
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old)
