"""Helpers for the client-level paper TWS tests: connect, wait on events, collect errors.

Only the IB library of tests/iblib.py is used, so the same tests run under ib_async and
ib_insync. Waiting is always on the client's own events (`updateEvent` after every batch of
socket data) with a timeout, never on a bare sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from tests.iblib import IB

TIMEOUT = 3.0


async def wait_until(ib: Any, predicate: Callable[[], Any], timeout: float = TIMEOUT,
                     what: str = "") -> Any:
    """Until `predicate()` is truthy, re-checked after every batch of data the client reads."""

    async def _loop() -> Any:
        while True:
            value = predicate()
            if value:
                return value
            await ib.updateEvent

    try:
        return await asyncio.wait_for(_loop(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what or predicate}") from None


class ErrorLog:
    """Every (reqId, code, message) the client's errorEvent reported."""

    def __init__(self, ib: Any) -> None:
        self.ib = ib
        self.items: list[tuple[int, int, str]] = []
        ib.errorEvent += self._on_error

    def _on_error(self, req_id: int, code: int, message: str, *_: Any) -> None:
        self.items.append((req_id, code, message))

    def codes(self) -> list[int]:
        return [code for _, code, _ in self.items]

    def find(self, code: int, req_id: int | None = None) -> tuple[int, int, str] | None:
        for item in self.items:
            if item[1] == code and (req_id is None or item[0] == req_id):
                return item
        return None

    async def wait_for(self, code: int, req_id: int | None = None,
                       timeout: float = TIMEOUT) -> tuple[int, int, str]:
        return await wait_until(self.ib, lambda: self.find(code, req_id), timeout,
                                f"error {code} (reqId {req_id})")


@asynccontextmanager
async def connected(handle: Any, client_id: int = 1, timeout: float = 4.0,
                    errors: bool = False) -> AsyncIterator[Any]:
    """An IB connected to the paper TWS as `client_id`, disconnected on exit."""
    ib = IB()
    log = ErrorLog(ib)
    try:
        await ib.connectAsync(handle.host, handle.port, clientId=client_id, timeout=timeout)
        ib.errors = log  # type: ignore[attr-defined]
        yield ib
    finally:
        ib.disconnect()


async def qualify_one(ib: Any, contract: Any) -> Any:
    result = await ib.qualifyContractsAsync(contract)
    assert result and result[0] is not None, f"could not qualify {contract}"
    return result[0]


def account_value(ib: Any, tag: str, currency: str = "USD") -> float:
    for v in ib.accountValues():
        if v.tag == tag and v.currency == currency and not v.modelCode:
            return float(v.value)
    raise KeyError(tag)
