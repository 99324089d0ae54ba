"""The dashboard's intraday P&L series (core/metrics.Observer.sample), on an injected clock:
a point at most once a second while the P&L moves, one every PNL_FLAT_EVERY_MS while it is
flat (so a chart's line reaches now), none while it is unknown, and a new day starts afresh."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from bracketgate.bus.messages import PnL, PortfolioSnapshot
from bracketgate.core.clock import ManualClock
from bracketgate.core.metrics import PNL_FLAT_EVERY_MS, Observer


def rig(start: datetime | None = None) -> tuple[Observer, ManualClock, SimpleNamespace]:
    clock = ManualClock(start)
    obs = Observer(mode="paper", prefix="t", clock=clock)
    monitor = SimpleNamespace(latest=None)
    obs.watch(monitor=monitor)
    return obs, clock, monitor


def snap(clock: ManualClock, daily: float | None, unrealized: float | None = None,
         realized: float | None = None) -> PortfolioSnapshot:
    return PortfolioSnapshot(ts=clock.now(), pnl=PnL(daily=daily, unrealized=unrealized,
                                                      realized=realized))


def test_no_points_while_the_pnl_is_unknown():
    obs, clock, monitor = rig()
    obs.sample()
    monitor.latest = snap(clock, None)
    for _ in range(3):
        clock.advance(1.0)
        obs.sample()
    monitor.latest = snap(clock, float("nan"))
    clock.advance(1.0)
    obs.sample()
    assert list(obs.pnl_series) == []


def test_a_change_within_a_second_lands_at_the_next_sample_even_with_no_new_snapshot():
    obs, clock, monitor = rig()
    monitor.latest = snap(clock, 0.0, 0.0, 0.0)
    obs.sample()
    clock.advance(0.4)
    monitor.latest = snap(clock, 19.0, 19.0, 0.0)     # the fill: 0.4 s after the last point
    obs.sample()
    assert [p[1] for p in obs.pnl_series] == [0.0]   # at most one point a second
    clock.advance(1.0)                               # the monitor published nothing since
    obs.sample()
    assert [p[1] for p in obs.pnl_series] == [0.0, 19.0]
    assert obs.pnl_series[-1][0] == int(clock.now().timestamp() * 1000)   # stamped when sampled
    assert obs.pnl_series[-1][1:] == (19.0, 19.0, 0.0)


def test_a_flat_pnl_still_gets_a_point_every_few_seconds():
    obs, clock, monitor = rig()
    monitor.latest = snap(clock, 19.0, 19.0, 0.0)
    for _ in range(PNL_FLAT_EVERY_MS // 1000 * 3):
        obs.sample()
        clock.advance(1.0)
    obs.sample()
    ts = [p[0] for p in obs.pnl_series]
    assert len(ts) == 4, ts
    assert all(b - a == PNL_FLAT_EVERY_MS for a, b in zip(ts, ts[1:], strict=False))


def test_a_new_day_starts_the_series_afresh():
    obs, clock, monitor = rig(datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC))
    monitor.latest = snap(clock, 5.0)
    obs.sample()
    clock.advance(2.0)
    monitor.latest = snap(clock, 0.0)
    obs.sample()
    assert [p[1] for p in obs.pnl_series] == [0.0]


def test_a_long_day_keeps_its_start_and_the_page_gets_the_whole_day():
    from bracketgate.core.metrics import PNL_POINTS_MAX, PNL_POINTS_SENT
    obs, clock, monitor = rig(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    first_ms = int(clock.now().timestamp() * 1000)
    for i in range(PNL_POINTS_MAX + 5_000):            # a moving P&L: a point every second
        monitor.latest = snap(clock, float(i))
        obs.sample()
        clock.advance(1.0)
    series = list(obs.pnl_series)
    assert len(series) <= PNL_POINTS_MAX
    assert series[0][0] == first_ms                     # the day's first point is still there
    assert series[-1][1] == float(PNL_POINTS_MAX + 5_000 - 1)
    assert [p[0] for p in series] == sorted(p[0] for p in series)
    sent = obs.state()["pnl_series"]
    assert len(sent) == PNL_POINTS_SENT
    assert tuple(sent[0]) == series[0] and tuple(sent[-1]) == series[-1]
