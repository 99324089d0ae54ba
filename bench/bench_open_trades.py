"""The snapshot's open orders: the library's `IB.openTrades()` (a pass over every trade the book
keeps) against the adapter's open-trade index (adapters/ib_refs.py), same book, same run.

The book is the client library's own Wrapper fed through its own callbacks (openOrder,
orderStatus), as the daemon's is: `--open` working legs and `--done` finished ones waiting for
the retention sweep (a 1M soak at ~15 brackets/s holds ~2,000 within IB_TRADE_RETENTION_S=60;
the portfolio snapshot reads the open orders after every burst of order events, tens a second).
Printed: µs per call for each, and their ratio.

    python bench/bench_open_trades.py [--open 45] [--done 500,2000,5000] [--calls 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.adapters.ib_refs import RefIndex  # noqa: E402

try:
    import ib_async as ibl
except ImportError:  # pragma: no cover - the ib_insync virtualenv
    import ib_insync as ibl  # type: ignore[no-redef]


def book(n_open: int, n_done: int):
    ib = ibl.IB()
    w = ib.wrapper
    w.clientId = 1
    refs = RefIndex(w)
    ib.orderStatusEvent += refs.note
    ib.openOrderEvent += refs.note
    for i in range(1, n_open + n_done + 1):
        order = ibl.Order(orderId=i, clientId=1, orderRef=f"p{i // 3}", permId=9000 + i,
                          action="BUY", totalQuantity=1, orderType="LMT", lmtPrice=1.0)
        w.openOrder(i, ibl.Stock("AAPL", "SMART", "USD"), order, ibl.OrderState(status="Submitted"))
        if i > n_open:   # finished, the newest last (as the book holds them)
            w.orderStatus(i, "Filled" if i % 2 else "Cancelled", 1.0, 0.0, 1.0, 9000 + i, 0, 1.0,
                          1, "")
    return ib, refs


def per_call_us(fn, calls: int) -> float:
    best = float("inf")
    for _ in range(5):   # best of 5 (a shared box)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--open", type=int, default=45)
    ap.add_argument("--done", default="500,2000,5000")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    import logging
    logging.getLogger(ibl.__name__).setLevel(logging.WARNING)
    done_states = ibl.OrderStatus.DoneStates
    print(f"bench_open_trades ({ibl.__name__}): {args.open} working legs; µs per call, best of 5 x "
          f"{args.calls}")
    for n_done in (int(x) for x in args.done.split(",")):
        ib, refs = book(args.open, n_done)
        assert {id(t) for t in refs.open_trades(done_states)} == {id(t) for t in ib.openTrades()}
        lib = per_call_us(ib.openTrades, args.calls)
        idx = per_call_us(lambda: refs.open_trades(done_states), args.calls)
        print(f"  {n_done:6d} finished in the book: IB.openTrades {lib:8.1f} µs   index "
              f"{idx:6.1f} µs   ratio {lib / idx:5.1f}x")


if __name__ == "__main__":
    main()
