"""Connecting to the paper TWS as to IB Gateway: handshake, startup sync, limits on clients."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.iblib import IB, LIBRARY
from tests.sim.support import ErrorLog, account_value, connected

pytestmark = pytest.mark.ib

REQUIRED_TAGS = (
    "NetLiquidation", "AvailableFunds", "BuyingPower", "ExcessLiquidity", "EquityWithLoanValue",
    "InitMarginReq", "MaintMarginReq", "TotalCashValue", "GrossPositionValue", "UnrealizedPnL",
    "RealizedPnL",
)


async def test_connect_is_fast_and_syncs_like_a_gateway(paper_tws):
    ib = IB()
    errors = ErrorLog(ib)
    started = time.perf_counter()
    await ib.connectAsync(paper_tws.host, paper_tws.port, clientId=7, timeout=4)
    elapsed = time.perf_counter() - started
    try:
        assert elapsed < 1.0, f"connectAsync took {elapsed:.3f}s"
        expected = 178 if LIBRARY == "ib_async" else 176
        assert ib.client.serverVersion() == expected
        assert ib.managedAccounts() == ["DU1234567"]
        # farm-status infos arrive at session start, as from a real Gateway
        assert {2104, 2106, 2158} <= set(errors.codes())
        tags = {v.tag for v in ib.accountValues()}
        for tag in REQUIRED_TAGS:
            assert tag in tags, tag
        assert account_value(ib, "NetLiquidation") == pytest.approx(1_000_000.0)
        assert ib.positions() == [] and ib.openTrades() == [] and ib.fills() == []
        now = await ib.reqCurrentTimeAsync()
        assert abs(now.timestamp() - time.time()) < 5
    finally:
        ib.disconnect()


async def test_two_clients_have_their_own_sessions(paper_tws):
    async with connected(paper_tws, 1) as ib1, connected(paper_tws, 2) as ib2:
        assert ib1.isConnected() and ib2.isConnected()
        health = await paper_tws.get("/health")
        assert [c["clientId"] for c in health["clients"]] == [1, 2]


async def test_client_id_in_use_gets_326_and_is_dropped(paper_tws):
    async with connected(paper_tws, 3) as first:
        second = IB()
        errors = ErrorLog(second)
        with pytest.raises((asyncio.TimeoutError, ConnectionError, OSError)):
            await second.connectAsync(paper_tws.host, paper_tws.port, clientId=3, timeout=0.5)
        assert 326 in errors.codes()
        assert not second.isConnected()
        # the first session is untouched
        assert first.isConnected()
        assert (await first.reqCurrentTimeAsync()) is not None


async def test_thirty_two_clients_and_no_more(paper_tws):
    ibs = []
    try:
        for cid in range(100, 132):
            ib = IB()
            await ib.connectAsync(paper_tws.host, paper_tws.port, clientId=cid, timeout=4)
            ibs.append(ib)
        assert len((await paper_tws.get("/health"))["clients"]) == 32
        extra = IB()
        errors = ErrorLog(extra)
        with pytest.raises((asyncio.TimeoutError, ConnectionError, OSError)):
            await extra.connectAsync(paper_tws.host, paper_tws.port, clientId=999, timeout=0.5)
        assert 502 in errors.codes()
    finally:
        for ib in ibs:
            ib.disconnect()


async def test_connectivity_codes_reach_every_client(paper_tws):
    async with connected(paper_tws, 1) as ib1, connected(paper_tws, 2) as ib2:
        for code in (1100, 1101, 1102):
            answer = await paper_tws.inject(code)
            assert answer["clients"] == 2
            for ib in (ib1, ib2):
                req_id, got, message = await ib.errors.wait_for(code)
                assert req_id == -1 and "Connectivity" in message
