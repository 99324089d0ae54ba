"""Client sessions around the brokerage: reconnects, order-id spaces, client 0, pacing,
gateway restarts, and the standalone process with its state file."""

from __future__ import annotations

import asyncio
import signal

import pytest

from bracketgate.sim.engine import Brokerage
from bracketgate.sim.universe import Universe
from tests.fixtures.paper_tws import spawn_paper_tws, start_paper_tws, stop_paper_tws, stop_process
from tests.iblib import IB, ExecutionFilter, LimitOrder, MarketOrder, Stock
from tests.sim.support import ErrorLog, connected, qualify_one, wait_until

pytestmark = pytest.mark.ib


async def test_executions_and_completed_orders_survive_a_reconnect(paper_tws):
    async with connected(paper_tws, 5) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        trade = ib.placeOrder(aapl, MarketOrder("BUY", 3, orderRef="day-1"))
        await wait_until(ib, lambda: trade.orderStatus.status == "Filled" and trade.fills)
        exec_id = trade.fills[0].execution.execId
        order_id = trade.order.orderId
    async with connected(paper_tws, 5) as ib:
        # the startup sync re-reads the day's executions (reqExecutions)
        assert [f.execution.execId for f in ib.fills()] == [exec_id]
        [fill] = await ib.reqExecutionsAsync(ExecutionFilter(clientId=5))
        assert fill.execution.orderRef == "day-1" and fill.execution.orderId == order_id
        [synced] = ib.fills()  # the client keeps commission reports on its first Fill object
        assert synced.commissionReport.commission == pytest.approx(1.0)
        completed = await ib.reqCompletedOrdersAsync(False)
        assert [(t.order.orderRef, t.orderStatus.status) for t in completed] == [
            ("day-1", "Filled")]
        assert ib.client.getReqId() > order_id  # nextValidId is above every id client 5 used
    async with connected(paper_tws, 6) as other:  # any client may read the day's executions
        assert [f.execution.execId for f in await other.reqExecutionsAsync()] == [exec_id]
        assert await other.reqExecutionsAsync(ExecutionFilter(clientId=6)) == []


async def test_each_client_has_its_own_order_ids_and_client_0_sees_all(paper_tws):
    async with connected(paper_tws, 1) as ib1, connected(paper_tws, 2) as ib2:
        aapl = await qualify_one(ib1, Stock("AAPL", "SMART", "USD"))
        o1 = LimitOrder("BUY", 1, 200.0, orderRef="c1")
        o2 = LimitOrder("BUY", 2, 201.0, orderRef="c2")
        o1.orderId = o2.orderId = 50  # the same id in two clients' spaces
        t1, t2 = ib1.placeOrder(aapl, o1), ib2.placeOrder(aapl, o2)
        await wait_until(ib1, lambda: t1.orderStatus.status == "Submitted")
        await wait_until(ib2, lambda: t2.orderStatus.status == "Submitted")
        # each client sees only its own orders
        assert [t.order.orderRef for t in await ib1.reqOpenOrdersAsync()] == ["c1"]
        assert [t.order.orderRef for t in await ib2.reqOpenOrdersAsync()] == ["c2"]
        async with connected(paper_tws, 0) as ib0:
            refs = sorted(t.order.orderRef for t in ib0.openTrades())
            assert refs == ["c1", "c2"]
            ids = {(t.order.clientId, t.order.orderId) for t in ib0.openTrades()}
            assert ids == {(1, 50), (2, 50)}
            ib1.cancelOrder(o1)  # client 0 follows other clients' orders live
            await wait_until(ib0, lambda: any(t.order.orderRef == "c1" and
                                              t.orderStatus.status == "Cancelled"
                                              for t in ib0.trades()))
        assert t2.orderStatus.status == "Submitted"
    async with connected(paper_tws, 1) as again:
        assert again.client.getReqId() > 50  # nextValidId 51 (+ ids the startup sync used)


async def test_pacing_more_than_50_messages_per_second_gets_error_100(paper_tws):
    async with connected(paper_tws) as ib:
        replies = []
        ib.wrapper.currentTime = replies.append  # count answers at the decoder's call site
        ib.client.MaxRequests = 0  # switch off the client's own 45/s throttle
        for _ in range(80):
            ib.client.reqCurrentTime()
        _, _, message = await ib.errors.wait_for(100, -1)
        assert "max=50" in message
        await wait_until(ib, lambda: len(replies) >= 40)
        await paper_tws.call("GET", "/health")  # the server has read every request by now
        health = await paper_tws.get("/health")
        dropped = health["clients"][0]["dropped"]
        assert dropped > 0 and len(replies) + dropped == 80
        assert len(replies) <= 50


async def test_restart_drops_clients_refuses_during_downtime_and_keeps_state(paper_tws):
    ib = IB()
    await ib.connectAsync(paper_tws.host, paper_tws.port, clientId=9, timeout=4)
    try:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        buy = ib.placeOrder(aapl, MarketOrder("BUY", 4, orderRef="keep-pos"))
        rest = ib.placeOrder(aapl, LimitOrder("SELL", 4, 250.0, orderRef="keep-order"))
        await wait_until(ib, lambda: buy.orderStatus.status == "Filled"
                         and rest.orderStatus.status == "Submitted")
        disconnected = asyncio.Event()
        ib.disconnectedEvent += lambda *_: disconnected.set()
        await paper_tws.restart(downtime=0.5)
        await asyncio.wait_for(disconnected.wait(), 3)
        assert not ib.isConnected()
        probe = IB()
        with pytest.raises((ConnectionRefusedError, OSError, asyncio.TimeoutError)):
            await probe.connectAsync(paper_tws.host, paper_tws.port, clientId=10, timeout=1)
        await paper_tws.wait_up(5)
        await ib.connectAsync(paper_tws.host, paper_tws.port, clientId=9, timeout=4)
        assert [p.position for p in ib.positions()] == [4]
        assert [t.order.orderRef for t in ib.openTrades()] == ["keep-order"]
        assert [f.execution.orderRef for f in ib.fills()] == ["keep-pos"]
        assert (await paper_tws.get("/health"))["restarts"] == 1
    finally:
        ib.disconnect()


async def test_standalone_process_keeps_state_across_restarts(tmp_path):
    state = tmp_path / "paper.json"
    proc, handle = await spawn_paper_tws("--state", str(state))
    try:
        async with connected(handle, 3) as ib:
            aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
            trade = ib.placeOrder(aapl, MarketOrder("BUY", 7, orderRef="persist"))
            await wait_until(ib, lambda: trade.orderStatus.status == "Filled")
            resting = ib.placeOrder(aapl, LimitOrder("BUY", 1, 200.0, orderRef="persist-2"))
            await wait_until(ib, lambda: resting.orderStatus.status == "Submitted")
    finally:
        assert await stop_process(proc, handle, signal.SIGTERM) == 0  # clean stop saves
    assert state.exists()
    proc, handle = await spawn_paper_tws("--state", str(state))
    try:
        async with connected(handle, 3) as ib:
            assert [(p.contract.symbol, p.position) for p in ib.positions()] == [("AAPL", 7)]
            assert [t.order.orderRef for t in ib.openTrades()] == ["persist-2"]
            assert [f.execution.orderRef for f in ib.fills()] == ["persist"]
            assert ib.client.getReqId() > resting.order.orderId
            body = await handle.state()
            assert {o["orderRef"]: o["status"] for o in body["orders"]} == {
                "persist": "Filled", "persist-2": "Submitted"}
    finally:
        assert await stop_process(proc, handle, signal.SIGINT) == 0


async def test_garbage_handshake_is_dropped_and_server_keeps_serving(paper_tws):
    reader, writer = await asyncio.open_connection(paper_tws.host, paper_tws.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, nothing sent
    writer.close()
    async with connected(paper_tws) as ib:
        assert ib.isConnected()


async def test_unsupported_request_is_answered_not_left_hanging(paper_tws):
    async with connected(paper_tws) as ib:
        errors = ErrorLog(ib)
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        bars = await asyncio.wait_for(
            ib.reqHistoricalDataAsync(aapl, "", "1 D", "1 hour", "TRADES", True), 3)
        assert not bars
        assert 162 in errors.codes()


async def test_list_requests_get_answers(paper_tws):
    async with connected(paper_tws) as ib:
        found = await asyncio.wait_for(ib.reqMatchingSymbolsAsync("AA"), 3)
        assert [d.contract.symbol for d in found] == ["AAPL"]
        assert [d.contract.conId for d in await ib.reqMatchingSymbolsAsync("E")] != []
        assert await asyncio.wait_for(ib.reqNewsProvidersAsync(), 3) == []
        assert await asyncio.wait_for(ib.reqMktDepthExchangesAsync(), 3) == []


async def test_state_file_is_written_on_change_not_only_at_stop(tmp_path):
    state = tmp_path / "state.json"
    handle = await start_paper_tws(state_file=state)
    try:
        async with connected(handle, 4) as ib:
            aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
            handle.tws.saved.clear()
            trade = ib.placeOrder(aapl, MarketOrder("BUY", 2, orderRef="saved"))
            await wait_until(ib, lambda: trade.orderStatus.status == "Filled")
            await asyncio.wait_for(handle.tws.saved.wait(), 3)
            # what a crash (no clean stop) would leave behind is already complete
            import json
            restored = Brokerage.from_dict(json.loads(state.read_text()), Universe())
            assert [o.order_ref for o in restored.orders.values()] == ["saved"]
            assert [p.quantity for p in restored.positions()] == [2]
    finally:
        await stop_paper_tws(handle)
