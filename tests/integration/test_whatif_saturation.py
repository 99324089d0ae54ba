"""What-ifs under a saturated IB pacer, against the paper TWS over a real socket (issue 9 soak:
admitted brackets' what-ifs timed out). The governor's use of the pacer, driven for a few
seconds: a bracket is admitted only while `headroom(horizon)` has room for its what-if and
three legs (and is promised them); its what-if goes, then its legs, and half the entries are
cancelled a second later (PROTECT, as cancel_entry_after_s does). Every admitted what-if must be
answered within its 5 s timeout, well inside (the horizon + 1.5 s: before the pacer fix of
issue 9 they took up to 4.7 s, each message that had waited being paid twice), and nothing
may pass the paper TWS's 50/s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest

from bracketgate.adapters.ib import IBBroker
from bracketgate.bus.messages import ApprovedBracket
from tests.fixtures.ib_broker import broker_on_bus
from tests.integration.test_pacing_and_placement import proposal

pytestmark = pytest.mark.ib

HORIZON_S = 2.5        # the governor's: half the what-if timeout (agents/risk.py _order_horizon_s)
WHATIF_TIMEOUT_S = 5.0
DRIVE_S = 8.0


@pytest.fixture
async def broker(paper_tws) -> AsyncIterator[IBBroker]:
    async with broker_on_bus(paper_tws, ack_timeout=10.0) as b:
        yield b


async def test_admitted_what_ifs_are_answered_in_time_under_a_saturated_pacer(paper_tws, broker):
    pacer = broker.pacer
    aapl = await broker.resolve_contract(proposal("sat-contract"))
    assert aapl is not None
    whatif_s: list[float] = []
    failures: list[BaseException] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(k: int) -> None:
        p = proposal(f"sat-{k}", limit_price=150.0, take_profit=260.0, stop_loss=140.0)
        bracket = ApprovedBracket(proposal=p, contract=aapl, approved_at=datetime.now(timezone.utc))
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(WHATIF_TIMEOUT_S):      # the governor's confirm_margin
                await broker.what_if(bracket)
        except BaseException as e:  # noqa: BLE001 - each one is reported below
            failures.append(e)
            return
        whatif_s.append(time.monotonic() - t0)
        ids = await broker.place_bracket(bracket)
        if k % 2:
            await asyncio.sleep(1.0)   # the entry's cancel_entry_after_s (a timer, not a check)
            await broker.cancel_order(ids.entry)

    admitted = 0
    end = time.monotonic() + DRIVE_S
    while time.monotonic() < end:
        while pacer.headroom(HORIZON_S) >= 4:     # the rate rule; _reserve's promise
            pacer.promise(4, HORIZON_S)
            t = asyncio.create_task(one(admitted))
            tasks.add(t)
            admitted += 1
            await asyncio.sleep(0)                # its what-if queues before the next check
        await asyncio.sleep(0.005)                # the next proposal (a timer, not a check)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    assert not failures, f"{len(failures)} of {admitted} what-ifs failed: {failures[:3]!r}"
    assert admitted >= DRIVE_S * pacer.rate / 5 * 0.8    # the pacer's rate was used (4-5 msgs each)
    assert max(whatif_s) <= HORIZON_S + 1.5, \
        f"an admitted what-if took {max(whatif_s):.2f}s (timeout {WHATIF_TIMEOUT_S}s)"
    assert pacer.stats.unpaced <= 40      # what connectAsync sends at start, nothing after
    health = await paper_tws.get("/health")
    assert health["pacingErrors"] == 0 and health["pacingDropped"] == 0, health
    me = next(c for c in health["clients"] if c["clientId"] == 12)
    assert me["peakPerWindow"] <= 50
