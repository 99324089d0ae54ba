"""PortfolioMonitor: keeps the live picture of the one account and publishes it as a snapshot.

It reads the broker port's converted state (positions, account values, P&L, working orders,
quotes, freshness stamps) whenever the broker says something changed, coalescing bursts into
one snapshot, and on a heartbeat so consumers can tell a quiet market from a dead feed.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Protocol

from bracketgate.bus.messages import (
    BrokerConnection,
    BrokerDataChanged,
    ConnectionState,
    PnL,
    PortfolioSnapshot,
    Position,
    Quote,
    WorkingOrder,
)
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.logs import get_logger

log = get_logger("agents.portfolio")


class PortfolioSource(Protocol):
    """What the monitor needs from the broker port (adapters/ib.py IBBroker provides it)."""

    state: ConnectionState
    reconciled: bool
    account: str

    def account_values(self) -> dict[str, float]: ...
    def positions(self) -> list[Position]: ...
    def pnl(self) -> PnL: ...
    def working_orders(self) -> list[WorkingOrder]: ...
    def quotes(self) -> dict[int, Quote]: ...          # conId -> quote
    def freshness(self) -> dict[str, datetime | None]: ...


class PortfolioMonitor:
    def __init__(self, bus, source: PortfolioSource, *, clock: Clock = SYSTEM_CLOCK,
                 heartbeat_s: float = 1.0) -> None:
        self._bus = bus
        self._source = source
        self._clock = clock
        self.heartbeat_s = heartbeat_s
        self.latest: PortfolioSnapshot | None = None
        self._scheduled = False
        self._task: asyncio.Task | None = None

    def attach(self) -> None:
        self._bus.subscribe(BrokerDataChanged, self._on_change, name="portfolio.data")
        self._bus.subscribe(BrokerConnection, self._on_change, name="portfolio.connection")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name="portfolio-heartbeat")
        await self.publish_now()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _on_change(self, _msg: object) -> None:
        # coalesce: many changes queued in one burst produce one snapshot
        if self._scheduled:
            return
        self._scheduled = True
        await asyncio.sleep(0)
        self._scheduled = False
        await self.publish_now()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.publish_now()

    def build(self) -> PortfolioSnapshot:
        src = self._source
        stamps = src.freshness()
        state = src.state
        connected = state in (ConnectionState.READY, ConnectionState.CONNECTED,
                              ConnectionState.CONNECTIVITY_LOST)
        return PortfolioSnapshot(
            ts=self._clock.now(),
            account=src.account or None,
            connection=state,
            reconciled=bool(src.reconciled) and state is ConnectionState.READY,
            account_values=src.account_values() if connected else {},
            account_values_ts=stamps.get("account"),
            positions=src.positions() if connected else [],
            positions_ts=stamps.get("positions"),
            pnl=src.pnl() if connected else PnL(),
            pnl_ts=stamps.get("pnl"),
            working_orders=src.working_orders() if connected else [],
            quotes=src.quotes() if connected else {},
        )

    async def publish_now(self) -> PortfolioSnapshot:
        snap = self.build()
        self.latest = snap
        await self._bus.publish(snap)
        return snap
