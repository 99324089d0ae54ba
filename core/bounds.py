"""Every structure of the daemon that is keyed by a proposal, order or execution id, its size now
and its bound: what a SIGUSR2 memory dump logs first (`memory_books`, core/memdump.py) and what
the soak bench and the bound tests read.

`sizes(**rooms)` reads them (duck-typed, private attributes included: a diagnosis, not an API);
`BOUNDS` names each one's bound in one line. A structure listed here with no fixed number is
bounded by a window of time (retention, CLOSED_KEEP_S) times the IB pacer's rate, or by
what is open at IB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# name -> its bound (where it is enforced)
BOUNDS: dict[str, str] = {
    # the IB client library's books (adapters/ib_prune.py TradeRetention.sweep)
    "ib.trades": "open trades + those done < IB_TRADE_RETENTION_S (60 s) ago (ib_prune; a "
                 "placement check's reqCompletedOrders replay dropped at once: drop_replayed)",
    "ib.permId2Trade": "as ib.trades (ib_prune drops a trade's permId with it)",
    "ib.fills": "fills of the trades kept + orphans < IB_TRADE_RETENTION_S old (ib_prune)",
    "ib._futures": "pending requests + given-up ones < IB_TRADE_RETENTION_S old (ib_prune)",
    "ib._results": "as ib._futures: a request answered with a value (a what-if) left its "
                   "container behind (ib_prune drops it)",
    "ib._reqId2Contract": "as ib._futures (ib_prune)",
    "ib.tickers": "market data lines (adapters/md_lines.py budget)",
    "ib.reqId2Ticker": "market data lines",
    "ib.reqId2Subscriber": "live subscriptions (P&L, account updates)",
    "ib.reqId2PnlSingle": "one per position conId",
    "ib.pnlSingleKey2ReqId": "one per position conId",
    # the IB adapter (adapters/ib.py)
    "ib.refs.by_ref": "the orderRefs of ib.trades (adapters/ib_refs.py)",
    "ib.tombstones": "TOMBSTONES_MAX (4096) pruned orderRefs (ib_prune)",
    "ib.completed_refs": "COMPLETED_REFS_MAX (100,000) orderRefs a start-up's review read "
                         "compact, ~0.15 KB a leg (adapters/ib_completed.py)",
    "ib.retention.done_waiting": "groups of ib.trades done, waiting out the grace",
    "ib._seen_execs": "SEEN_EXECS_MAX (10,000) execIds published this run (a sync also looks "
                      "up the journal's: adapters/ib_execs.py)",
    "ib._pending_execs": "executions waiting for their commission report (a deadline each)",
    "ib._pnl_single": "one per position conId",
    "ib._pnl_waiting": "one per position conId (a reqPnLSingle waiting its pacer turn)",
    "ib._tasks": "one per pending job: P&L subscriptions deduplicated by conId",
    "ib._settled": "SETTLED_MAX (4096) orderIds a placement check found dead or absent at IB "
                   "(adapters/ib_truth.py; an unanswered check adds none)",
    "ib._absent": "SETTLED_MAX (4096) orderIds a placement check found absent at IB",
    "ib.cancels.watching": "cancels sent whose outcome IB has not reported within "
                           "CANCEL_VERIFY_S (ib_truth.py CancelWatch; retried <= CANCEL_RETRIES)",
    # the execution agent (agents/execution.py)
    "execution._brackets": "open brackets + closed < CLOSED_KEEP_S (30 s), <= CLOSED_KEEP_MAX",
    "execution._by_order": "3 legs (+ guards) of execution._brackets",
    "execution._intents": "as execution._brackets",
    "execution._closed": "closed < CLOSED_KEEP_S, <= CLOSED_KEEP_MAX (10,000)",
    "execution._tasks": "pending jobs (entry expiries, guard cancels)",
    # the governor (agents/risk.py)
    "risk.decisions": "max_remembered_decisions (8192; the newest 512 as objects, the rest"
                      " deflated: agents/decision_archive.py)",
    "risk.reservations": "open, approved-but-unfilled brackets",
    "risk._exec_ids": "agents/exec_ids.py ExecIds bound",
    "risk._inflight": "proposals being decided (the bus queue's bound)",
    # metrics (core/metrics.py)
    "metrics._started": "PENDING_MAX (20,000)",
    "metrics._approved": "PENDING_MAX (20,000)",
    "metrics._fill_price": "FILL_PRICES_MAX (4096; was PENDING_MAX, 20,000: ~4 MB)",
    # the journal (adapters/journal.py)
    "journal._fresh": "FRESH_MAX (cleared when full)",
}


def _len(obj: Any, *path: str) -> int | None:
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    try:
        return len(obj)
    except TypeError:
        return None


def library_sizes(wrapper: Any) -> dict[str, int]:
    """The IB client library's books (ib_async or ib_insync: same names)."""
    out: dict[str, int] = {}
    for name in ("trades", "permId2Trade", "fills", "_futures", "_results", "_reqId2Contract",
                 "tickers", "reqId2Ticker", "reqId2Subscriber", "reqId2PnlSingle",
                 "pnlSingleKey2ReqId"):
        n = _len(wrapper, name)
        if n is not None:
            out[f"ib.{name}"] = n
    return out


def sizes(*, broker: Any = None, execution: Any = None, governor: Any = None,
          observer: Any = None, journal: Any = None) -> dict[str, int]:
    """The size of every structure in BOUNDS the rooms given have (the others left out)."""
    out: dict[str, int] = {}
    if broker is not None:
        wrapper = getattr(getattr(broker, "ib", None), "wrapper", None)
        if wrapper is not None:
            out.update(library_sizes(wrapper))
            by_ref = getattr(getattr(wrapper, "trades", None), "by_ref", None)
            if by_ref is not None:
                out["ib.refs.by_ref"] = len(by_ref)
        retention = getattr(broker, "retention", None)
        if retention is not None:
            out["ib.tombstones"] = len(retention.tombstones)
            _put(out, "ib.completed_refs", _len(retention, "completed"))
            out["ib.retention.done_waiting"] = _len(retention, "_done_since") or 0
        for name in ("_seen_execs", "_pending_execs", "_pnl_single", "_pnl_waiting", "_tasks",
                     "_settled", "_absent"):
            _put(out, f"ib.{name}", _len(broker, name))
        _put(out, "ib.cancels.watching", _len(broker, "cancels", "watching"))
    for prefix, room, names in (
            ("execution", execution, ("_brackets", "_by_order", "_intents", "_closed", "_tasks")),
            ("risk", governor, ("_exec_ids", "_inflight")),
            ("metrics", observer, ("_started", "_approved", "_fill_price")),
            ("journal", journal, ("_fresh",))):
        if room is not None:
            for name in names:
                _put(out, f"{prefix}.{name}", _len(room, name))
    if governor is not None:
        _put(out, "risk.decisions", _len(governor, "_decisions"))
        _put(out, "risk.reservations", _len(governor, "ledger", "_by_id"))
    return out


def _put(out: dict[str, int], key: str, n: int | None) -> None:
    if n is not None:
        out[key] = n


def sizer(**rooms: Any) -> Callable[[], dict[str, int]]:
    """`sizes` bound to the rooms (what core/app.py registers with memdump)."""
    return lambda: sizes(**rooms)
