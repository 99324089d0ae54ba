"""The trading state in the journal (adapters/journal_state.py): saved before it is published,
restored at start-up (operator states until resume, automatic ones for their trading day)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from structlog.testing import capture_logs

from bracketgate.adapters.journal import Journal
from bracketgate.adapters.journal_state import (
    SavedState,
    StateKeeper,
    TradingStateJournal,
    restored_state,
    scope_text,
)
from bracketgate.bus.bus import Bus
from bracketgate.bus.messages import ControlCommand, DenialCode, TradingState, TradingStateChanged
from bracketgate.core.clock import ManualClock
from tests.unit.riskkit import governor, open_limits, position, proposal, snapshot

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)
NY = ZoneInfo("America/New_York")


def codes(d):  # type: ignore[no-untyped-def]
    return [r.code for r in d.reasons]


async def test_round_trip_and_the_row_survives_reopen(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "journal.sqlite"
    async with await Journal.open(path, clock) as j:
        store = TradingStateJournal(j)
        assert await store.load() is None
        saved = SavedState(TradingState.HALTED, "operator", TradingState.HALTED, "alice", "news",
                           T0, (("A", None), (None, "MSFT")))
        await store.save(saved)
        await store.save(SavedState(TradingState.REDUCING, "operator", TradingState.REDUCING,
                                    "bob", "late", T0 + timedelta(seconds=1), ()))
        await store.save(saved)   # the last write wins: one row
        events = await j.events(kinds="trading_state")
        assert [e["payload"]["state"] for e in events] == ["HALTED", "REDUCING", "HALTED"]
    async with await Journal.open(path, clock) as j:
        got = await TradingStateJournal(j).load()
    assert got is not None
    assert (got.state, got.by, got.operator, got.who, got.reason, got.ts) == (
        TradingState.HALTED, "operator", TradingState.HALTED, "alice", "news", T0)
    assert set(got.scoped) == {("A", None), (None, "MSFT")}


def test_restored_state_rules() -> None:
    now = datetime(2026, 11, 20, 20, 0, tzinfo=timezone.utc)      # 15:00 New York
    assert restored_state(None, now, NY) == (TradingState.ACTIVE, (), False)
    old = now - timedelta(days=30)
    op = SavedState(TradingState.HALTED, "operator", TradingState.HALTED, "o", "r", old,
                    (("A", None),))
    # an operator's state holds until resume, however old
    assert restored_state(op, now, NY) == (TradingState.HALTED, (("A", None),), False)
    # an automatic halt holds for its trading day (New York), then the operator's state applies
    today = datetime(2026, 11, 20, 5, 1, tzinfo=timezone.utc)     # 00:01 New York, same day
    auto = SavedState(TradingState.HALTED, "auto", TradingState.REDUCING, "auto", "loss", today)
    assert restored_state(auto, now, NY) == (TradingState.HALTED, (), False)
    yesterday = datetime(2026, 11, 20, 4, 59, tzinfo=timezone.utc)  # 23:59 New York, day before
    auto = SavedState(TradingState.HALTED, "auto", TradingState.REDUCING, "auto", "loss", yesterday)
    assert restored_state(auto, now, NY) == (TradingState.REDUCING, (), True)


async def _rig(path: Path, clock: ManualClock, limits=None):  # type: ignore[no-untyped-def]
    j = await Journal.open(path, clock)
    gov, _ = governor(limits, clock)
    bus = Bus(clock=clock)
    gov.attach(bus)
    await bus.start()
    keeper = StateKeeper(gov, TradingStateJournal(j), clock)
    keeper.attach()
    return j, gov, bus, keeper


async def _settle(bus: Bus, gov, want) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        await bus.drain(2.0)
        if want(gov):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_saved_before_published_then_restored_with_scoped_halts(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "journal.sqlite"
    j, gov, bus, keeper = await _rig(path, clock)
    seen_rows: list[tuple[str, str]] = []
    store = TradingStateJournal(j)

    async def on_change(ev: TradingStateChanged) -> None:   # what {prefix}/events would get
        row = await store.load()
        assert row is not None
        seen_rows.append((ev.new.value, row.state.value))

    bus.subscribe(TradingStateChanged, on_change, name="test")
    try:
        await bus.publish(ControlCommand(action="flatten", agent_id="A", by="ops"))
        await _settle(bus, gov, lambda g: g.scoped_halts == {("A", None)})
        await bus.publish(ControlCommand(action="halt", reason="news", by="alice"))
        await _settle(bus, gov, lambda g: g.state is TradingState.HALTED)
        await _settle(bus, gov, lambda g: seen_rows)
        assert seen_rows == [("HALTED", "HALTED")]   # the row was HALTED when it was published
    finally:
        await bus.close()
        await j.close()

    # a restart: a fresh governor is ACTIVE until restored, then HALTED with A's scoped halt
    clock.advance(3600)
    j, gov, bus, keeper = await _rig(path, clock)
    try:
        assert gov.state is TradingState.ACTIVE
        with capture_logs() as logs:
            ev = await keeper.restore()
        line = [e for e in logs if e["event"] == "trading_state_restored"]
        assert len(line) == 1 and line[0]["state"] == "HALTED" and line[0]["who"] == "alice"
        assert line[0]["scoped_halts"] == [{"agent_id": "A", "symbol": None}]
        assert ev is not None and (ev.new, ev.by) == (TradingState.HALTED, "startup")
        snap = snapshot(clock, positions=[position("AAPL", 10)])
        assert codes(gov.evaluate(proposal("x", agent="B"), snap)) == [DenialCode.TRADING_HALTED]
        # resume lifts the halt and the scoped halts, durably
        await bus.publish(ControlCommand(action="resume", by="alice"))
        await _settle(bus, gov, lambda g: g.state is TradingState.ACTIVE and not g.scoped_halts)
        row = await TradingStateJournal(j).load()
        assert row is not None and row.state is TradingState.ACTIVE and row.scoped == ()
    finally:
        await bus.close()
        await j.close()

    j, gov, bus, keeper = await _rig(path, clock)
    try:
        await keeper.restore()
        assert gov.state is TradingState.ACTIVE and not gov.scoped_halts
        assert gov.evaluate(proposal("y"), snapshot(clock)).verdict.value == "approved"
    finally:
        await bus.close()
        await j.close()


async def test_a_scoped_halt_alone_survives_and_others_trade(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "journal.sqlite"
    j, gov, bus, keeper = await _rig(path, clock)
    try:
        await bus.publish(ControlCommand(action="flatten", agent_id="A", by="ops"))
        await _settle(bus, gov, lambda g: g.scoped_halts)
    finally:
        await bus.close()
        await j.close()
    j, gov, bus, keeper = await _rig(path, clock)
    try:
        assert await keeper.restore() is None       # the state itself did not move
        assert gov.state is TradingState.ACTIVE and gov.scoped_halts == {("A", None)}
        assert scope_text(gov.scoped_halts) == ["agent A"]
        snap = snapshot(clock)
        assert codes(gov.evaluate(proposal("a", agent="A"), snap)) == [DenialCode.TRADING_HALTED]
        assert gov.evaluate(proposal("b", agent="B"), snap).verdict.value == "approved"
    finally:
        await bus.close()
        await j.close()


async def test_an_auto_halt_holds_for_its_day_only(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "journal.sqlite"
    limits = open_limits(daily_loss_limit=1000.0)
    j, gov, bus, keeper = await _rig(path, clock, limits)
    try:
        await bus.publish(snapshot(clock, daily=-1000.0))
        await _settle(bus, gov, lambda g: g.state is TradingState.HALTED)
        for _ in range(100):
            row = await TradingStateJournal(j).load()
            if row is not None:
                break
            await asyncio.sleep(0.01)
        assert row is not None and (row.state, row.by) == (TradingState.HALTED, "auto")
    finally:
        await bus.close()
        await j.close()
    j, gov, bus, keeper = await _rig(path, clock, limits)    # same day: still HALTED
    try:
        await keeper.restore()
        assert gov.state is TradingState.HALTED
    finally:
        await bus.close()
        await j.close()
    clock.advance(86400)
    j, gov, bus, keeper = await _rig(path, clock, limits)    # the next day: ACTIVE again
    try:
        with capture_logs() as logs:
            await keeper.restore()
        assert gov.state is TradingState.ACTIVE
        assert [e["expired_auto"] for e in logs if e["event"] == "trading_state_restored"] == [True]
    finally:
        await bus.close()
        await j.close()
