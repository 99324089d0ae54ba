"""adapters/ib_execs.py against the paper TWS over a real socket (both client libraries run this
file): a connect reads the day's executions once, the journaled ones are skipped before the
library decodes them, every new one is published once with its commission, and a commission
that comes after execDetailsEnd (or never) is waited for before READY, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from bracketgate.adapters.ib import IBBroker
from bracketgate.adapters.ib_execs import COMMISSION_WAIT_S
from bracketgate.bus.messages import BrokerExecution
from tests.fixtures.paper_tws import seed_executions

pytestmark = pytest.mark.ib

K = 120
JOURNALED = 90


def make_broker(paper_tws: Any, client_id: int, journaled: set[str] | None = None
                ) -> tuple[IBBroker, list[BrokerExecution]]:
    execs: list[BrokerExecution] = []

    async def publish(msg: Any) -> None:
        if isinstance(msg, BrokerExecution):
            execs.append(msg)

    broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=client_id,
                      publish=publish, heartbeat_s=0.5, ack_timeout=2.0)
    if journaled is not None:
        lookups: list[int] = []

        async def journaled_execs() -> set[str]:
            lookups.append(1)
            return journaled

        broker.journaled_execs = journaled_execs
        broker.lookups = lookups   # type: ignore[attr-defined]
    return broker, execs


@pytest.fixture
async def day(paper_tws: Any) -> AsyncIterator[list[str]]:
    yield seed_executions(paper_tws.engine, K)


def synced(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "ib_executions_synced"]


async def test_journaled_executions_are_skipped_undecoded_and_the_rest_published_once(
        paper_tws: Any, day: list[str]) -> None:
    broker, execs = make_broker(paper_tws, 31, set(day[:JOURNALED]))
    with capture_logs() as logs:
        await broker.start()
        try:
            assert broker.is_ready
            assert [e.exec_id for e in execs] == day[JOURNALED:]   # in IB's order, once each
            want = {e.exec_id: e for e in paper_tws.engine.executions}
            for ex in execs:   # each with the commission and realized P&L IB reported (the
                # libraries read IB's unset realized P&L of an opening fill as 0.0)
                assert ex.commission == pytest.approx(want[ex.exec_id].commission)
                assert ex.realized_pnl == pytest.approx(want[ex.exec_id].realized_pnl or 0.0)
                assert ex.order_ref == want[ex.exec_id].order_ref
            # the journaled ones never became library Fills: skipped before the decoder
            assert not set(day[:JOURNALED]) & set(broker.ib.wrapper.fills)
            assert set(day[JOURNALED:]) <= set(broker.ib.wrapper.fills)
            [one] = synced(logs)
            assert (one["new"], one["skipped"], one["decoded"]) == (K - JOURNALED, JOURNALED,
                                                                   K - JOURNALED)
            # a gateway restart: the day is read again, nothing is published twice (the ones
            # published this run are remembered; the journal is looked up again)
            await paper_tws.restart(downtime=0.2)
            await broker.wait_ready(10)
            await asyncio.sleep(0)   # let the restart's sync be the last one
            deadline = time.monotonic() + 10
            while len(synced(logs)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)   # the reconnect is another task's
            second = synced(logs)[1]
            assert (second["new"], second["skipped"]) == (0, K)
            assert [e.exec_id for e in execs] == day[JOURNALED:]
            assert broker.lookups == [1, 1]   # type: ignore[attr-defined]
        finally:
            await broker.close()


async def test_a_new_day_s_execution_at_reconnect_is_published_and_only_it(
        paper_tws: Any, day: list[str]) -> None:
    broker, execs = make_broker(paper_tws, 32, set(day))
    await broker.start()
    try:
        assert execs == []
        await paper_tws.restart(downtime=0.5)
        more = seed_executions(paper_tws.engine, 3, start=K)   # filled while we were away
        await paper_tws.wait_up()
        deadline = time.monotonic() + 10
        while len(execs) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)   # the reconnect is the supervisor's
        assert [e.exec_id for e in execs] == more
        assert all(e.commission is not None for e in execs)
    finally:
        await broker.close()


@pytest.mark.parametrize("mode", ["delay", "lose"])
async def test_a_commission_after_execdetailsend_is_waited_for_before_ready(
        paper_tws: Any, day: list[str], mode: str) -> None:
    """Real TWS may send a requested execution's commissionReport after execDetailsEnd: the
    sync waits for it (bounded by COMMISSION_WAIT_S), so each fill is published once and with
    its commission; one that never comes is published without it once the wait is over."""
    await paper_tws.post("/answer_hold", {"request": "commission_reports", "mode": mode,
                                          "seconds": 0.3})
    broker, execs = make_broker(paper_tws, 33, set(day[:JOURNALED]))
    with capture_logs() as logs:
        t0 = time.monotonic()
        await broker.start()
        took = time.monotonic() - t0
        try:
            assert [e.exec_id for e in execs] == day[JOURNALED:]
            missing = [e for e in logs if e["event"] == "ib_commission_missing"]
            if mode == "delay":
                want = {e.exec_id: e.commission for e in paper_tws.engine.executions}
                assert [e.commission for e in execs] == [pytest.approx(want[e.exec_id])
                                                         for e in execs]
                assert not missing
            else:
                assert all(e.commission is None for e in execs)
                assert {e["exec_id"] for e in missing} == set(day[JOURNALED:])
                assert took >= COMMISSION_WAIT_S   # waited, then went on
        finally:
            await broker.close()


async def test_without_a_journal_every_execution_of_the_day_is_published(
        paper_tws: Any, day: list[str]) -> None:
    broker, execs = make_broker(paper_tws, 34)
    await broker.start()
    try:
        assert [e.exec_id for e in execs] == day
    finally:
        await broker.close()


async def test_a_failing_journal_look_up_publishes_nothing_it_cannot_tell_new(
        paper_tws: Any, day: list[str]) -> None:
    broker, execs = make_broker(paper_tws, 35)

    async def broken() -> set[str]:
        raise OSError("disk I/O error")

    broker.journaled_execs = broken
    with capture_logs() as logs:
        await broker.start()
        try:
            assert execs == []   # no fill counted twice on a guess
            [e] = [e for e in logs if e["event"] == "ib_executions_sync_failed"]
            assert e["code"] == "EXECUTIONS_SYNC_FAILED"
        finally:
            await broker.close()
