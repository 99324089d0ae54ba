"""The paper TWS's market-data line cap (sim/md_lines.py): error 101 past it, as TWS does."""

from __future__ import annotations

import math

import pytest

from tests.iblib import Stock
from tests.sim.support import connected, qualify_one, wait_until

pytestmark = pytest.mark.ib

SYMBOLS = ("AAPL", "MSFT", "TSLA", "SPY", "NVDA", "AMZN")


async def _stocks(ib, symbols=SYMBOLS):
    return [await qualify_one(ib, Stock(sym, "SMART", "USD")) for sym in symbols]


async def _lines(paper_tws) -> dict:
    return (await paper_tws.state())["mdLines"]


async def test_the_line_past_the_cap_is_error_101_and_a_cancel_frees_one(paper_tws):
    assert (await paper_tws.post("/md_lines", {"limit": 3}))["limit"] == 3
    async with connected(paper_tws) as ib:
        aapl, msft, tsla, spy, *_ = await _stocks(ib)
        tickers = [ib.reqMktData(c, "", False, False) for c in (aapl, msft, tsla)]
        await wait_until(ib, lambda: all(t.last > 0 for t in tickers), what="three quotes")
        assert (await _lines(paper_tws))["in_use"] == 3

        fourth = ib.reqMktData(spy, "", False, False)
        req_id, code, message = await ib.errors.wait_for(101)
        assert message == "Max number of tickers has been reached"
        await ib.reqCurrentTimeAsync()   # a round trip: a tick for it would be in by now
        assert math.isnan(fourth.last) and math.isnan(fourth.bid)
        assert await _lines(paper_tws) == {"limit": 3, "in_use": 3, "refusals": 1}

        ib.cancelMktData(msft)
        await ib.reqCurrentTimeAsync()   # the cancel is handled before the time request
        assert (await _lines(paper_tws))["in_use"] == 2
        ib.cancelMktData(spy)            # the refused one holds nothing at the client either
        again = ib.reqMktData(spy, "", False, False)
        await wait_until(ib, lambda: again.last > 0, what="SPY's quote once a line is free")
        assert (await _lines(paper_tws))["in_use"] == 3
        assert len([c for c in ib.errors.codes() if c == 101]) == 1


async def test_a_snapshot_needs_a_free_line_but_keeps_none(paper_tws):
    await paper_tws.post("/md_lines", {"limit": 2})
    async with connected(paper_tws) as ib:
        aapl, msft, tsla, *_ = await _stocks(ib)
        ib.reqMktData(aapl, "", False, False)
        [snap] = await ib.reqTickersAsync(msft)      # snapshot=True, ends with tickSnapshotEnd
        assert snap.last == paper_tws.engine.price(msft.conId)
        assert (await _lines(paper_tws))["in_use"] == 1
        [snap2] = await ib.reqTickersAsync(tsla)      # again: the first kept no line
        assert snap2.last > 0 and (await _lines(paper_tws))["in_use"] == 1
        streamed = ib.reqMktData(msft, "", False, False)
        await wait_until(ib, lambda: streamed.last > 0, what="second streaming line")
        assert (await _lines(paper_tws))["in_use"] == 2
        ib.reqMktData(tsla, "", True, False)          # full: even a snapshot is refused
        await ib.errors.wait_for(101)


async def test_the_cap_counts_every_client_and_a_disconnect_frees_its_lines(paper_tws):
    await paper_tws.post("/md_lines", {"limit": 2})
    async with connected(paper_tws, client_id=1) as one:
        aapl, msft, tsla, *_ = await _stocks(one)
        async with connected(paper_tws, client_id=2) as two:
            a = one.reqMktData(aapl, "", False, False)
            b = two.reqMktData(msft, "", False, False)
            await wait_until(one, lambda: a.last > 0)
            await wait_until(two, lambda: b.last > 0)
            one.reqMktData(tsla, "", False, False)
            await one.errors.wait_for(101)
        # client 2 gone: its line is free again
        for _ in range(50):
            if (await _lines(paper_tws))["in_use"] == 1:
                break
            await one.reqCurrentTimeAsync()
        assert (await _lines(paper_tws))["in_use"] == 1
        one.cancelMktData(tsla)
        c = one.reqMktData(tsla, "", False, False)
        await wait_until(one, lambda: c.last > 0, what="TSLA after client 2 left")


async def test_the_cap_is_off_at_zero_and_validated(paper_tws):
    await paper_tws.post("/md_lines", {"limit": -1}, expect=400)
    await paper_tws.post("/md_lines", {"limit": 0})
    async with connected(paper_tws) as ib:
        tickers = [ib.reqMktData(c, "", False, False) for c in await _stocks(ib)]
        await wait_until(ib, lambda: all(t.last > 0 for t in tickers), what="six quotes")
        assert 101 not in ib.errors.codes()
        assert (await _lines(paper_tws))["in_use"] == len(SYMBOLS)
