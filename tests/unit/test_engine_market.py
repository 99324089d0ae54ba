"""Paper TWS price feed: deterministic seeded walks, quotes, and driving the engine with it."""

from __future__ import annotations

from bracketgate.sim.market import PriceFeed, half_spread
from bracketgate.sim.universe import Universe
from tests.unit.engine_helpers import AS_OF, bracket, make_engine


def test_same_seed_same_path_other_seed_other_path():
    u = Universe(AS_OF)
    a, b, c = PriceFeed(u, seed=1), PriceFeed(u, seed=1), PriceFeed(u, seed=2)
    path_a = [a.step() for _ in range(50)]
    assert path_a == [b.step() for _ in range(50)]
    assert path_a != [c.step() for _ in range(50)]


def test_path_of_one_contract_ignores_quotes_and_others():
    u = Universe(AS_OF)
    aapl = u.stock("AAPL").con_id
    a, b = PriceFeed(u, seed=3), PriceFeed(u, seed=3)
    for _ in range(20):
        a.step()
        b.quote(aapl)
        b.step(include_options=False)
    assert a.price(aapl) == b.price(aapl)


def test_prices_stay_on_tick_and_options_follow():
    u = Universe(AS_OF)
    feed = PriceFeed(u, seed=5, vol_scale=50.0)
    es = u.front_future("ES")
    for _ in range(30):
        for con_id, px in feed.step():
            tick = u.get(con_id).min_tick
            assert abs(px / tick - round(px / tick)) < 1e-6 and px > 0
    assert feed.price(es.con_id) != u.start_price(es.con_id)
    call = u.find(symbol="AAPL", sec_type="OPT", expiry="20261218", strike=230, right="C")[0]
    assert feed.price(call.con_id) == u.theoretical_price(call, feed.price(u.stock("AAPL").con_id))


def test_quote_spread_and_sizes():
    u = Universe(AS_OF)
    feed = PriceFeed(u, seed=9)
    q = feed.quote(u.stock("AAPL").con_id)
    assert (q.bid, q.last, q.ask) == (229.99, 230.00, 230.01)
    assert q.bid_size % 100 == 0 and q.bid_size > 0
    es = u.front_future("ES")
    assert half_spread(es) == 0.25 and feed.quote(es.con_id).ask == 5900.25
    assert feed.quote(u.stock("AAPL").con_id) == q                  # same step, same quote


def test_feed_drives_brackets_to_completion():
    eng, _events, _clock = make_engine()
    feed = PriceFeed(eng.universe, seed=11, vol_scale=200.0)
    aapl = eng.universe.stock("AAPL")
    parent, tp, sl = bracket(eng, aapl, 1, "BUY", 10, 229.5, 232.0, 227.0)
    for _ in range(2000):
        for con_id, px in feed.step(include_options=False):
            eng.set_price(con_id, px)
        if tp.is_terminal and sl.is_terminal:
            break
    assert parent.status == "Filled"
    assert sorted([tp.status, sl.status]) == ["Cancelled", "Filled"]
    assert eng.position(aapl.con_id).quantity == 0
