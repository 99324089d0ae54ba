"""The day's executions, read once per connect, and only the new ones decoded.

The IB client library's connectAsync asks IB for the day's executions and decodes each one into a
Fill. After a long day (a 1M-proposal soak leaves ~22k executions) that took ~1 s of a restart,
and the adapter then asked again (`IBBroker._sync_executions`, ~0.8 s more) for the ones it had
not published. Now the connect leaves them out (ib_async: `fetchFields` without EXECUTIONS;
ib_insync 0.9.86: its connect-time request is answered empty on the instance and nothing is
sent, adapters/ib_startup.py `without_startup_fetches`). `_sync_executions` asks once, after the
reconcile:

- `only_new(ib, known)`: while the answer comes, a requested execDetails (reqId != -1; a live one
  is always decoded) whose execId is known is skipped before the library decodes it. Known means
  published this run (the adapter's recent `_seen_execs`), waiting for its commission
  (`_pending_execs`) or journaled (the journal's exec_ids, looked up for this sync and dropped
  after). A commissionReport whose execId is known and that the library holds no fill for is
  skipped too: the library would drop it anyway ("not for this client"). A message not laid out
  as both libraries decode it (execId at fields[14] of an execDetails, fields[2] of a
  commissionReport) is decoded as before.
- the commission of each new execution: TWS sends it in a commissionReport after the
  execDetails. The paper TWS sends it right after; the captures do not settle whether real TWS
  always sends it before execDetailsEnd. So a new execution whose report has not come by then
  waits for it (`reports_for`) up to COMMISSION_WAIT_S, as a live one does (`_pending_execs`),
  and this happens before READY: the governor counts a fill's realized P&L from its report.

Nothing IB reports is lost by the skip: an execution is skipped only when it is already
journaled or published (the journal keeps fills unique by exec_id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from bracketgate.adapters.ib_startup import _instance_attr

EXEC_DETAILS_MSG = 11       # TWS API incoming message ids
COMMISSION_REPORT_MSG = 59
EXEC_ID_FIELD = 14          # execDetails: msgId, reqId, orderId, 11 contract fields, execId, ...
REPORT_EXEC_ID_FIELD = 2    # commissionReport: msgId, version, execId, ...
LIVE_REQ_ID = "-1"
COMMISSION_WAIT_S = 1.0     # longest a fill waits for its commissionReport (live or requested)


class Known:
    """execIds in any of several collections (no copy of the big one, the journal's)."""

    def __init__(self, *parts: Container[str]) -> None:
        self.parts = parts

    def __contains__(self, exec_id: object) -> bool:
        for part in self.parts:   # (a loop: twice as fast as any() over a generator)
            if exec_id in part:
                return True
        return False


@contextmanager
def only_new(ib: Any, known: Container[str]) -> Iterator[dict[str, int]]:
    """While a reqExecutions is answered: the known executions are skipped undecoded (module
    doc). Yields counters: `skipped` execDetails, `reports_skipped` commissionReports."""
    handlers = ib.client.decoder.handlers
    fills = ib.wrapper.fills
    details, report = handlers[EXEC_DETAILS_MSG], handlers[COMMISSION_REPORT_MSG]
    counts = {"skipped": 0, "reports_skipped": 0}

    def new_details(fields: list[str]) -> None:
        if (len(fields) > EXEC_ID_FIELD and fields[1] != LIVE_REQ_ID
                and fields[EXEC_ID_FIELD] in known):
            counts["skipped"] += 1
            return
        details(fields)

    def new_report(fields: list[str]) -> None:
        if len(fields) > REPORT_EXEC_ID_FIELD:
            exec_id = fields[REPORT_EXEC_ID_FIELD]
            if exec_id not in fills and exec_id in known:
                counts["reports_skipped"] += 1
                return
        report(fields)

    handlers[EXEC_DETAILS_MSG], handlers[COMMISSION_REPORT_MSG] = new_details, new_report
    try:
        yield counts
    finally:
        handlers[EXEC_DETAILS_MSG], handlers[COMMISSION_REPORT_MSG] = details, report


def report_of(ib: Any, fill: Any) -> Any:
    """The commissionReport IB sent for `fill`'s execution, or None. The library keeps it on the
    Fill it saw first (a live one, or the first request's); a later request's Fill carries an
    empty one."""
    first = ib.wrapper.fills.get(fill.execution.execId) or fill
    rep = first.commissionReport
    return rep if rep is not None and rep.execId else None


@contextmanager
def reports_watched(ib: Any) -> Iterator[asyncio.Event]:
    """While the block runs: the returned event is set after each commissionReport the library
    has taken in (so a waiter looks again)."""
    wrapper = ib.wrapper
    taken = wrapper.commissionReport
    event = asyncio.Event()

    def watched(report: Any) -> None:
        taken(report)
        event.set()

    with _instance_attr(wrapper, "commissionReport", watched):
        yield event


async def reports_for(ib: Any, fills: Iterable[Any], event: asyncio.Event,
                      timeout: float = COMMISSION_WAIT_S) -> list[Any]:
    """Wait (up to `timeout`) until every one of `fills` (not a combo's BAG execution: its legs'
    reports carry the commission) has its commissionReport; the ones still without it."""
    waiting = [f for f in fills if f.contract.secType != "BAG" and report_of(ib, f) is None]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while waiting:
        left = deadline - loop.time()
        if left <= 0:
            break
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), left)
        except TimeoutError:
            break
        waiting = [f for f in waiting if report_of(ib, f) is None]
    return [f for f in waiting if report_of(ib, f) is None]
