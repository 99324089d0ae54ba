"""adapters/ib_lifecycle.py against the paper TWS over a real socket (both client libraries run
this file): a modify of a working child, a modify of a child after its parent filled (sent with
parentId 0), a refused modify (IB's code; the Trade put back by a re-sync, the order unchanged),
a trailing stop replacing the stop in the children's named OCA group, and a partial resize."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bracketgate.adapters.ib import IBBroker, oca_group
from bracketgate.adapters.ib_lifecycle import BracketOrders, ModifyRefused
from tests.fixtures.ib_broker import broker_on_bus
from tests.integration.test_pacing_and_placement import legs_at_ib, proposal

pytestmark = pytest.mark.ib


@pytest.fixture
async def broker(paper_tws) -> AsyncIterator[IBBroker]:
    async with broker_on_bus(paper_tws, ack_timeout=2.0) as b:
        yield b


async def place(broker: IBBroker, pid: str, **kw: Any) -> Any:
    from datetime import datetime, timezone

    from bracketgate.bus.messages import ApprovedBracket

    p = proposal(pid, **kw)
    contract = await broker.resolve_contract(p)
    return await broker.place_bracket(ApprovedBracket(proposal=p, contract=contract,
                                                      approved_at=datetime.now(timezone.utc)))


async def at_ib(paper_tws: Any, ref: str, order_id: int) -> dict[str, Any]:
    return next(o for o in await legs_at_ib(paper_tws, ref) if o["orderId"] == order_id)


async def until(pred: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await pred():
            await asyncio.sleep(0.05)   # polling the paper TWS over HTTP


async def test_modify_before_and_after_the_parent_fills(broker, paper_tws) -> None:
    orders = BracketOrders(broker)
    ids = await place(broker, "lc-1", limit_price=200.0, take_profit=260.0, stop_loss=190.0)
    leg = await orders.modify(ids.stop_loss, stop_price=191.0)    # the parent works: a child
    assert leg.stop_price == pytest.approx(191.0) and leg.status in ("PreSubmitted", "Submitted")
    assert (await at_ib(paper_tws, "lc-1", ids.stop_loss))["auxPrice"] == pytest.approx(191.0)
    # the entry fills (limit raised to the market); the children are standalone from then on
    await orders.modify(ids.entry, limit_price=231.0)

    async def filled() -> bool:
        return (await at_ib(paper_tws, "lc-1", ids.entry))["status"] == "Filled"

    await until(filled)
    leg = await orders.modify(ids.stop_loss, stop_price=229.0)    # sent with parentId 0
    assert leg.stop_price == pytest.approx(229.0)
    assert (await at_ib(paper_tws, "lc-1", ids.stop_loss))["auxPrice"] == pytest.approx(229.0)
    # a partial resize of both children (a partial close's first step)
    for oid in (ids.take_profit, ids.stop_loss):
        leg = await orders.modify(oid, quantity=6)
        assert leg.quantity == pytest.approx(6.0)
    assert (await at_ib(paper_tws, "lc-1", ids.take_profit))["totalQuantity"] == pytest.approx(6.0)


async def test_a_refused_modify_says_ibs_code_and_changes_nothing(broker, paper_tws) -> None:
    orders = BracketOrders(broker)
    ids = await place(broker, "lc-2", limit_price=200.0, take_profit=260.0, stop_loss=190.0)
    with pytest.raises(ModifyRefused) as e:
        await orders.modify(ids.stop_loss, stop_price=190.005)     # off tick: 110
    assert e.value.code == 110
    assert (await at_ib(paper_tws, "lc-2", ids.stop_loss))["auxPrice"] == pytest.approx(190.0)
    assert orders.working(ids.stop_loss), "the re-sync puts the Trade back: IB still works it"
    leg = await orders.modify(ids.stop_loss, stop_price=189.0)     # and it can be modified again
    assert leg.stop_price == pytest.approx(189.0)


@pytest.mark.parametrize("parent_filled", [False, True], ids=["entry-working", "entry-filled"])
async def test_trailing_stop_replaces_the_stop_new_one_first(broker, paper_tws, parent_filled) -> None:
    ref = f"lc-3-{parent_filled}"
    orders = BracketOrders(broker)
    limit = 231.0 if parent_filled else 200.0
    ids = await place(broker, ref, limit_price=limit, take_profit=260.0, stop_loss=limit - 10)
    if parent_filled:
        async def filled() -> bool:
            return (await at_ib(paper_tws, ref, ids.entry))["status"] == "Filled"

        await until(filled)
    new = broker.allocate_order_id()
    leg = await orders.place_trailing_stop(ids.stop_loss, new, trail_amount=2.0, trail_percent=None,
                                           trail_stop=limit - 5, quantity=10)
    assert leg.order_type == "TRAIL" and leg.status not in ("Cancelled", "Inactive")
    row = await at_ib(paper_tws, ref, new)
    assert row["orderType"] == "TRAIL" and row.get("ocaGroup") == oca_group(ref)
    assert (row.get("parentId") or 0) == (0 if parent_filled else ids.entry)
    assert (await at_ib(paper_tws, ref, ids.stop_loss))["status"] not in ("Cancelled",), \
        "the old stop is the caller's to cancel, after"
    await broker.cancel_order(ids.stop_loss)

    async def old_gone() -> bool:
        return (await at_ib(paper_tws, ref, ids.stop_loss))["status"] in ("Cancelled", "ApiCancelled")

    await until(old_gone)
    assert (await at_ib(paper_tws, ref, new))["status"] not in ("Cancelled", "ApiCancelled")
