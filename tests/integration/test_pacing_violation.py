"""IB's error 100 makes the pacer back off (adapters/pacer.py `violation`), over a real socket.

The paper TWS's window is lowered to 8 messages per second while the adapter paces at 40/s:
IB answers error 100, the pacer holds everything but PROTECT for its hold and lowers its rate;
a cancel sent during the hold still goes at once, and IB's window is not overrun again by the
held requests once they go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest

from bracketgate.adapters.ib import IBBroker
from bracketgate.bus.messages import ApprovedBracket, TradeProposal
from tests.fixtures.ib_broker import broker_on_bus
from tests.fixtures.ib_broker import proposal as base_proposal

pytestmark = pytest.mark.ib


def proposal(pid: str, **kw: Any) -> TradeProposal:
    return base_proposal(pid, **{"limit_price": 150.0, "stop_loss": 140.0, **kw})


@pytest.fixture
async def broker(paper_tws) -> AsyncIterator[IBBroker]:
    async with broker_on_bus(paper_tws, client_id=13, heartbeat_s=5.0, ack_timeout=2.0,
                             request_timeout=3.0) as b:
        yield b


async def test_error_100_holds_all_but_protect_and_lowers_the_rate(paper_tws, broker):
    p = proposal("pv-1")
    contract = await broker.resolve_contract(p)
    bracket = ApprovedBracket(proposal=p, contract=contract, approved_at=datetime.now(timezone.utc))
    ids = await broker.place_bracket(bracket)
    await paper_tws.post("/pacing", {"limit": 8})
    whatifs = [asyncio.ensure_future(broker.what_if(bracket)) for _ in range(20)]

    async def violated() -> None:
        while broker.pacer.stats.violations == 0:
            await asyncio.sleep(0.02)  # IB's error 100 reaches the adapter
    await asyncio.wait_for(violated(), 10)
    assert broker.pacer.rate < broker.pacer.base_rate
    await paper_tws.post("/pacing", {"limit": 50})
    t0 = asyncio.get_running_loop().time()
    assert await broker.cancel_order(ids.entry)          # PROTECT: not held
    assert asyncio.get_running_loop().time() - t0 < 0.5
    await asyncio.gather(*whatifs, return_exceptions=True)
    legs = [o for o in (await paper_tws.state())["orders"] if o["orderRef"] == "pv-1"]

    async def cancelled() -> None:
        while any(o["status"] not in ("Cancelled", "ApiCancelled")
                  for o in [o for o in (await paper_tws.state())["orders"]
                            if o["orderRef"] == "pv-1"]):
            await asyncio.sleep(0.05)  # polling the paper TWS over HTTP
    await asyncio.wait_for(cancelled(), 10)
    assert len(legs) == 3
