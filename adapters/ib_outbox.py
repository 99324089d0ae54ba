"""The IB adapter's outbox: IB's callbacks queue events, one pump publishes them in order.

It was an unbounded asyncio.Queue: while the bus is slower than IB's callbacks (a busy loop,
a slow MQTT broker, tracemalloc) it grows with every status update. Order updates are state
snapshots (status, cumulative filled, remaining), so an order's updates still waiting are
coalesced: a newer one replaces the queued one in place (keeping its position), so at most one
update per order waits. An update carrying an error code (a rejection, a cancel's reason) is
never folded into another: it is queued as it is and the next update of that order takes a new
slot after it. Everything else (executions: each counts; alerts; data-changed notices) is
queued as it is; those do not grow with a slow bus beyond what IB sends.

Not backpressure: IB's callbacks are synchronous and cannot wait; dropping an execution or an
error is never an option.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bracketgate.bus.messages import BrokerOrderUpdate


class _Slot:
    __slots__ = ("msg",)

    def __init__(self, msg: Any) -> None:
        self.msg = msg


class Outbox:
    def __init__(self) -> None:
        self._q: asyncio.Queue[Any] = asyncio.Queue()
        self._slots: dict[tuple, _Slot] = {}   # order key -> its queued, not yet taken, update
        self.coalesced = 0

    @staticmethod
    def _key(u: BrokerOrderUpdate) -> tuple:
        return (u.client_id, u.order_id, u.perm_id if not u.order_id else 0)

    def put_nowait(self, msg: Any) -> None:
        if isinstance(msg, BrokerOrderUpdate):
            key = self._key(msg)
            if msg.code is not None:
                self._slots.pop(key, None)      # the queued one is delivered before this one
            else:
                slot = self._slots.get(key)
                if slot is not None:
                    slot.msg = msg
                    self.coalesced += 1
                    return
                slot = self._slots[key] = _Slot(msg)
                self._q.put_nowait(slot)
                return
        self._q.put_nowait(msg)

    async def get(self) -> Any:
        item = await self._q.get()
        if isinstance(item, _Slot):
            if isinstance(item.msg, BrokerOrderUpdate):
                key = self._key(item.msg)
                if self._slots.get(key) is item:
                    del self._slots[key]
            return item.msg
        return item

    def task_done(self) -> None:
        self._q.task_done()

    async def join(self) -> None:
        await self._q.join()

    def qsize(self) -> int:
        return self._q.qsize()
