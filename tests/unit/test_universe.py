"""Paper TWS universe: conIds, expiries relative to the clock, lookups, sec-def option params."""

from __future__ import annotations

from datetime import date

import pytest

from bracketgate.sim.model import SimContract
from bracketgate.sim.universe import Universe, UnknownContract, next_quarterlies, third_friday

AS_OF = date(2026, 11, 20)


@pytest.fixture(scope="module")
def uni() -> Universe:
    return Universe(AS_OF)


@pytest.mark.parametrize("symbol,con_id,primary", [
    ("AAPL", 265598, "NASDAQ"), ("MSFT", 272093, "NASDAQ"), ("TSLA", 76792991, "NASDAQ"),
    ("SPY", 756733, "ARCA"), ("NVDA", 4815747, "NASDAQ"), ("AMZN", 3691937, "NASDAQ"),
])
def test_stocks_have_real_con_ids(uni, symbol, con_id, primary):
    c = uni.stock(symbol)
    assert (c.con_id, c.sec_type, c.exchange, c.primary_exchange, c.min_tick, c.multiplier) == (
        con_id, "STK", "SMART", primary, 0.01, 1.0)
    assert uni.get(con_id) is c and con_id in uni
    assert 50 < uni.start_price(con_id) < 1000


def test_build_is_deterministic():
    a, b = Universe(AS_OF), Universe(AS_OF)
    assert a.contracts() == b.contracts()
    assert [a.start_price(c.con_id) for c in a.contracts()] == [
        b.start_price(c.con_id) for c in b.contracts()]
    assert Universe(clock=lambda: 1_795_176_000.0).as_of == AS_OF


def test_calendar_helpers():
    assert third_friday(2026, 12) == date(2026, 12, 18)
    assert third_friday(2027, 3) == date(2027, 3, 19)
    assert next_quarterlies(date(2026, 12, 18), 2) == [date(2027, 3, 19), date(2027, 6, 18)]


@pytest.mark.parametrize("as_of,front,locals_", [
    (date(2026, 11, 20), "ESZ6", ["ESZ6", "ESH7", "ESM7", "ESU7"]),
    (date(2026, 12, 18), "ESH7", ["ESH7", "ESM7", "ESU7", "ESZ7"]),   # expiry day rolls
    (date(2027, 1, 5), "ESH7", ["ESH7", "ESM7", "ESU7", "ESZ7"]),
])
def test_futures_front_month(as_of, front, locals_):
    u = Universe(as_of)
    es = u.front_future("ES")
    assert es.local_symbol == front
    assert [c.local_symbol for c in u.find(symbol="ES", sec_type="FUT")] == locals_
    assert (es.multiplier, es.min_tick, es.exchange, es.trading_class) == (50.0, 0.25, "CME", "ES")
    assert es.expiry > as_of.strftime("%Y%m%d") and es.contract_month == es.expiry[:6]
    nq = u.front_future("NQ")
    assert (nq.multiplier, nq.min_tick, nq.local_symbol[:2]) == (20.0, 0.25, "NQ")


def test_known_real_future_con_id(uni):
    es = uni.front_future("ES")
    assert (es.local_symbol, es.con_id, es.under_con_id) == ("ESZ6", 515416632, 11004968)


@pytest.mark.parametrize("query,expected", [
    (dict(symbol="ES", sec_type="FUT", expiry="202612"), ["ESZ6"]),
    (dict(symbol="ES", sec_type="FUT", expiry="20270319"), ["ESH7"]),
    (dict(symbol="ES", sec_type="FUT", exchange="GLOBEX", expiry="202703"), ["ESH7"]),
    (dict(local_symbol="NQH7"), ["NQH7"]),
    (dict(symbol="ES", sec_type="FUT", exchange="SMART"), []),
    (dict(symbol="SPY", sec_type="STK", exchange="ARCA"), ["SPY"]),
    (dict(symbol="spy", exchange="SMART", currency="USD", sec_type="STK"), ["SPY"]),
])
def test_find_partial_contracts(uni, query, expected):
    assert [c.local_symbol for c in uni.find(**query)] == expected


def test_option_chains(uni):
    chain = uni.option_chain("AAPL")
    expiries = sorted({c.expiry for c in chain})
    # 4 weeklies after Friday 2026-11-20 + monthlies Dec/Jan/Feb (Dec 18 is both)
    assert expiries == ["20261127", "20261204", "20261211", "20261218", "20270115", "20270219"]
    assert all(e > AS_OF.strftime("%Y%m%d") for e in expiries)
    strikes = sorted({c.strike for c in chain})
    assert strikes[0] == 180.0 and strikes[-1] == 280.0 and 230.0 in strikes
    assert len(chain) == len(expiries) * len(strikes) * 2
    assert {c.multiplier for c in chain} == {100.0} and {c.right for c in chain} == {"C", "P"}
    assert {c.under_con_id for c in chain} == {265598}
    call = uni.find(symbol="AAPL", sec_type="OPT", expiry="20261218", strike=230, right="CALL")
    assert len(call) == 1 and call[0].local_symbol == "AAPL  261218C00230000"
    assert call[0].trading_class == "AAPL" and call[0].exchange == "SMART"
    assert len(uni.option_chain("SPY", expiry="202612")) == 3 * 21 * 2   # Dec 4, 11, 18
    assert uni.option_chain("MSFT") == []
    con_ids = [c.con_id for c in uni.contracts()]
    assert len(set(con_ids)) == len(con_ids) and max(con_ids) < 2**31


def test_option_start_prices_are_sane(uni):
    call = uni.find(symbol="AAPL", sec_type="OPT", expiry="20261218", strike=230, right="C")[0]
    put = uni.find(symbol="AAPL", sec_type="OPT", expiry="20261218", strike=230, right="P")[0]
    deep = uni.find(symbol="AAPL", sec_type="OPT", expiry="20261218", strike=180, right="C")[0]
    assert 2 < uni.start_price(call.con_id) < 15 and 2 < uni.start_price(put.con_id) < 15
    assert uni.start_price(deep.con_id) >= 50
    assert uni.theoretical_price(call, 240.0) > uni.start_price(call.con_id)


def test_sec_def_opt_params(uni):
    rows = uni.sec_def_opt_params("AAPL", 265598)
    assert [r.exchange for r in rows] == ["SMART", "CBOE"]
    row = rows[0]
    assert (row.underlying_con_id, row.trading_class, row.multiplier) == (265598, "AAPL", "100")
    assert row.expirations[0] == "20261127" and len(row.strikes) == 21
    assert uni.sec_def_opt_params("AAPL", exchange="CBOE")[0].exchange == "CBOE"
    assert uni.sec_def_opt_params("TSLA") == []


def test_resolve(uni):
    partial = SimContract(0, "ES", "FUT", "CME", "", expiry="202703")
    assert uni.resolve(partial).local_symbol == "ESH7"
    assert uni.resolve(SimContract(265598, "", "STK", "", "")).symbol == "AAPL"
    with pytest.raises(UnknownContract) as exc:
        uni.resolve(SimContract(0, "ES", "FUT", "CME", ""))      # four months: ambiguous
    assert len(exc.value.matches) == 4
    with pytest.raises(UnknownContract):
        uni.resolve(SimContract(0, "XYZ", "STK", "SMART", ""))
    with pytest.raises(UnknownContract):
        uni.resolve(SimContract(42, "AAPL", "STK", "SMART", ""))
