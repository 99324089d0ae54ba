"""The look-ups a placement makes by orderRef, over a big client-library book: the index
(adapters/ib_refs.py) against the scan of `ib.trades()` it replaced, same run, same book.

The client library's own IB/Wrapper is filled with `--trades` Trades (brackets of three legs, one
orderRef each: what IB_TRADE_RETENTION_S=600 s keeps at a few brackets per second), then each
look-up a placement and `prior_placement` make (has_order_ref for a new ref, the legs of a known
one) is timed both ways; printed: µs per look-up, the ratio, and the index's own heap per trade
(tracemalloc), which is all it holds (entries go with the trades).

    python bench/bench_ib_refs.py [--trades 30000] [--lookups 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.adapters.ib_refs import RefIndex  # noqa: E402
from tests import iblib  # noqa: E402


def fill(ib: object, n: int) -> list[str]:
    refs = []
    contract = iblib.Stock("AAPL", "SMART", "USD")
    for i in range(n):
        ref = f"bench-{i // 3:08d}"
        if i % 3 == 0:
            refs.append(ref)
        order = iblib.LimitOrder("BUY", 1, 100.0, orderRef=ref, orderId=i + 1, clientId=1)
        status = iblib.ib.OrderStatus(orderId=i + 1, status="Submitted")
        trade = iblib.ib.Trade(contract, order, status)
        ib.wrapper.trades[(1, i + 1)] = trade
    return refs


def timed(fn, args: list[str]) -> list[float]:
    out = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def main(n_trades: int, n_lookups: int) -> None:
    ib = iblib.IB()
    refs = fill(ib, n_trades)
    known = [refs[(i * 7919) % len(refs)] for i in range(n_lookups)]
    new = [f"new-{i}" for i in range(n_lookups)]

    def scan_has(ref: str) -> bool:
        return any(t.order.orderRef == ref for t in ib.trades())

    def scan_legs(ref: str) -> list:
        return [t for t in ib.trades() if t.order.orderRef == ref
                and not getattr(t.order, "whatIf", False)]

    base_has, base_legs = timed(scan_has, new[:200]), timed(scan_legs, known[:200])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    refs_index = RefIndex(ib.wrapper)
    refs_index.book()                       # wraps the book once (what a connect does)
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    idx_has, idx_legs = timed(refs_index.has, new), timed(refs_index.trades, known)
    assert all(len(refs_index.trades(r)) == 3 for r in known[:50])
    print(f"orderRef look-ups over a book of {n_trades} trades ({len(refs)} brackets), "
          f"{n_lookups} look-ups each (scan: 200)")
    for label, base, idx in (("has_order_ref (new ref)", base_has, idx_has),
                             ("legs of a known ref", base_legs, idx_legs)):
        b, i = statistics.median(base), statistics.median(idx)
        print(f"  {label:24} scan p50 {b:9.1f} µs   index p50 {i:6.2f} µs "
              f"(p99 {sorted(idx)[int(len(idx) * 0.99) - 1]:.2f})   ratio {b / i:,.0f}x")
    print(f"  the index's own heap: {heap / n_trades:.0f} bytes per trade "
          f"(built once per connection; entries leave with the trades)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--trades", type=int, default=30000)
    ap.add_argument("--lookups", type=int, default=2000)
    a = ap.parse_args()
    main(a.trades, a.lookups)
