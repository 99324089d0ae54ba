"""Contract lookups (stock, option, future, front month, option chains) and market data."""

from __future__ import annotations

import pytest

from tests.iblib import Contract, Future, Option, Stock
from tests.sim.support import connected, qualify_one, wait_until

pytestmark = pytest.mark.ib


async def test_qualify_stocks(paper_tws):
    async with connected(paper_tws) as ib:
        for symbol, con_id in (("AAPL", 265598), ("MSFT", 272093), ("TSLA", 76792991),
                               ("SPY", 756733)):
            c = await qualify_one(ib, Stock(symbol, "SMART", "USD"))
            assert c.conId == con_id and c.secType == "STK"
        [cd] = await ib.reqContractDetailsAsync(Stock("AAPL", "SMART", "USD"))
        assert cd.longName == "APPLE INC" and cd.minTick == 0.01
        assert cd.contract.primaryExchange == "NASDAQ"


async def test_option_chain_and_qualify_option(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        chains = await ib.reqSecDefOptParamsAsync("AAPL", "", "STK", aapl.conId)
        smart = next(ch for ch in chains if ch.exchange == "SMART")
        assert smart.multiplier == "100" and int(smart.underlyingConId) == aapl.conId
        assert len(smart.expirations) >= 3 and len(smart.strikes) >= 10
        expiry, strike = smart.expirations[1], smart.strikes[len(smart.strikes) // 2]
        for right in ("C", "P"):
            opt = await qualify_one(ib, Option("AAPL", expiry, strike, right, "SMART"))
            assert opt.secType == "OPT" and opt.multiplier == "100" and opt.right == right
            assert opt.lastTradeDateOrContractMonth == expiry and opt.strike == strike
        every_call = await ib.reqContractDetailsAsync(Option("AAPL", expiry, 0, "C", "SMART"))
        assert len(every_call) == len(smart.strikes)


@pytest.mark.parametrize("symbol,multiplier", [("ES", "50"), ("NQ", "20")])
async def test_futures_resolve_the_front_month(paper_tws, symbol, multiplier):
    async with connected(paper_tws) as ib:
        details = await ib.reqContractDetailsAsync(Future(symbol, exchange="CME"))
        assert len(details) == 4  # every quarterly, as TWS answers an expiry-less future
        months = sorted(cd.contractMonth for cd in details)
        assert all(int(m[4:]) in (3, 6, 9, 12) for m in months)
        front = min(details, key=lambda cd: cd.realExpirationDate)
        assert front.contractMonth == months[0]
        fut = await qualify_one(ib, Future(symbol, front.contractMonth, "CME"))
        assert fut.conId == front.contract.conId and fut.multiplier == multiplier
        assert fut.localSymbol.startswith(symbol)
        # the old GLOBEX name still resolves
        globex = await qualify_one(ib, Future(symbol, front.contractMonth, "GLOBEX"))
        assert globex.conId == fut.conId


async def test_unknown_contract_is_error_200(paper_tws):
    async with connected(paper_tws) as ib:
        result = await ib.qualifyContractsAsync(Stock("NOPE", "SMART", "USD"))
        assert not any(result)
        await ib.errors.wait_for(200)
        assert await ib.reqContractDetailsAsync(Contract(conId=123)) == []


async def test_streaming_quotes_follow_the_price(paper_tws):
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        ticker = ib.reqMktData(aapl, "", False, False)
        await wait_until(ib, lambda: ticker.last == 230.0 and ticker.bid == 229.99
                         and ticker.ask == 230.01, what="first quote")
        assert ticker.bidSize > 0 and ticker.askSize > 0 and ticker.close == 230.0
        await paper_tws.set_price("AAPL", 231.5)
        await wait_until(ib, lambda: ticker.last == 231.5 and ticker.bid == 231.49
                         and ticker.ask == 231.51, what="moved quote")
        ib.cancelMktData(aapl)
        await paper_tws.set_price("AAPL", 232.0)
        await ib.reqCurrentTimeAsync()  # a round trip: any tick would have arrived before
        assert ticker.last == 231.5


async def test_snapshot_ends_with_tick_snapshot_end(paper_tws):
    async with connected(paper_tws) as ib:
        es = (await ib.reqContractDetailsAsync(Future("ES", exchange="CME")))[0].contract
        [ticker] = await ib.reqTickersAsync(es)
        assert ticker.last == paper_tws.engine.price(es.conId)
        assert ticker.bid == ticker.last - 0.25 and ticker.ask == ticker.last + 0.25


async def test_market_data_for_unknown_contract_is_error_200(paper_tws):
    async with connected(paper_tws) as ib:
        ib.reqMktData(Contract(conId=42, exchange="SMART"), "", False, False)
        await ib.errors.wait_for(200)


async def _stepped_prices(seed: int, steps: int) -> dict[str, float]:
    from tests.fixtures.paper_tws import start_paper_tws, stop_paper_tws

    handle = await start_paper_tws(seed=seed)
    try:
        await handle.post("/step", {"n": steps})
        return (await handle.state())["prices"]
    finally:
        await stop_paper_tws(handle)


async def test_seeded_price_paths_are_deterministic_and_stream(paper_tws):
    first, again, other = (await _stepped_prices(7, 5), await _stepped_prices(7, 5),
                           await _stepped_prices(8, 5))
    assert first == again and first != other
    aapl_id = "265598"
    assert first[aapl_id] != 230.0  # the path moved AAPL from its start price
    async with connected(paper_tws) as ib:
        aapl = await qualify_one(ib, Stock("AAPL", "SMART", "USD"))
        ticker = ib.reqMktData(aapl, "", False, False)
        await wait_until(ib, lambda: ticker.last == 230.0)
        moved = await paper_tws.post("/step", {"n": 5})
        assert moved["moves"] > 0
        await wait_until(ib, lambda: ticker.last == first[aapl_id], what="stepped tick")
