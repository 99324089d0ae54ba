"""The IB client library's books over many finished brackets: retention on vs off, same run.

One IBBroker (the daemon's adapter) in process against the in-process paper TWS WITH its pacing
(and the adapter's own 40 msg/s pacer), placing `--n` brackets in batches of `--batch` and
finishing each batch at IB (the price moves through the entries, then through the take-profits:
entry and take-profit filled, stop cancelled; commissions reported). Twice: with
IB_TRADE_RETENTION_S=0 (the library keeps every Trade and Fill until a disconnect: the baseline)
and with `--retention` seconds (adapters/ib_prune.py). Printed per mode: the library's books
(trades, permId2Trade, fills) and the traced heap (tracemalloc) every batch, and the traced heap
per bracket at the end as a ratio against the baseline, all of it and the part allocated under
the client library or the adapter (the in-process paper TWS's own growth left out).

    python bench/bench_ib_books.py [--n 600] [--batch 50] [--retention 2] [--publish-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.adapters.ib import IBBroker  # noqa: E402
from bracketgate.bus.messages import ApprovedBracket, BrokerExecution, TradeProposal  # noqa: E402
from bracketgate.core.logs import configure_logging  # noqa: E402
from tests.fixtures.paper_tws import start_paper_tws, stop_paper_tws  # noqa: E402


# allocations with a frame in the client library or the adapter (the paper TWS's own state,
# in the same process, is left out)
LIBRARY = [tracemalloc.Filter(True, f"*{os.sep}{d}{os.sep}*", all_frames=True)
           for d in ("ib_async", "ib_insync", "adapters")]


def proposal(pid: str) -> TradeProposal:
    return TradeProposal.model_validate(dict(
        proposal_id=pid, agent_id="alpha", symbol="AAPL", side="BUY", quantity=1, order_type="LMT",
        limit_price=200.0, take_profit=260.0, stop_loss=190.0))


async def until(pred, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)   # waiting for IB's events


async def run(mode: str, n: int, batch: int, retention: float,
              client_id: int, publish_ms: float = 0.0) -> tuple[float, float]:
    tws = await start_paper_tws()
    execs: list[str] = []

    depth = [0, 0]   # the outbox's deepest backlog, messages published

    async def publish(msg) -> None:
        depth[0] = max(depth[0], broker._outbox.qsize())
        depth[1] += 1
        if isinstance(msg, BrokerExecution):
            execs.append(msg.exec_id)
        if publish_ms:
            await asyncio.sleep(publish_ms / 1000)   # a slow bus (the pump waits on it)

    broker = IBBroker(host=tws.host, port=tws.port, client_id=client_id, publish=publish,
                      heartbeat_s=1.0, ack_timeout=5.0, trade_retention_s=retention)
    await broker.start()
    w = broker.ib.wrapper
    rows = []
    gc.collect()
    heap0 = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    try:
        placed = 0
        while placed < n:
            k = min(batch, n - placed)
            for i in range(k):
                p = proposal(f"{mode}-{placed + i}")
                contract = await broker.resolve_contract(p)
                await broker.place_bracket(ApprovedBracket(proposal=p, contract=contract,
                                                           approved_at=datetime.now(timezone.utc)))
            placed += k
            await tws.set_price("AAPL", 199.0)
            await until(lambda: len(execs) >= 2 * placed - k)
            await tws.set_price("AAPL", 261.0)
            await until(lambda: len(execs) >= 2 * placed)
            await tws.set_price("AAPL", 230.0)
            if retention:
                await asyncio.sleep(retention + broker.retention.interval)   # let the grace pass
            gc.collect()
            heap = tracemalloc.get_traced_memory()[0] - heap0
            rows.append((placed, len(w.trades), len(w.permId2Trade), len(w.fills), heap / 1e6))
            print(f"  {mode:>9}: {placed:5d} brackets  trades {len(w.trades):5d}  permId2Trade "
                  f"{len(w.permId2Trade):5d}  fills {len(w.fills):5d}  "
                  f"traced heap {heap / 1e6:7.2f} MB",
                  flush=True)
        gc.collect()
        lib = sum(t.size for t in tracemalloc.take_snapshot().filter_traces(LIBRARY).traces)
    finally:
        await broker.close()
        await stop_paper_tws(tws)
    print(f"  {mode:>9}: {n} brackets in {time.monotonic() - t0:.0f} s, "
          f"{len(execs)} executions published ({len(set(execs))} distinct); allocated under the "
          f"client library or the adapter and still held: {lib / 1e6:.2f} MB")
    print(f"  {mode:>9}: outbox: {depth[1]} messages published, deepest backlog {depth[0]}, "
          f"{broker._outbox.coalesced} order updates coalesced into a queued one "
          f"(publish {publish_ms:g} ms each)")
    return rows[-1][4], lib / 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--retention", type=float, default=2.0)
    ap.add_argument("--publish-ms", type=float, default=0.0,
                    help="each bus publish takes this long (a slow bus: the outbox backs up)")
    a = ap.parse_args()
    configure_logging("json", "WARNING", stream=open(os.devnull, "w"))  # noqa: SIM115
    logging.getLogger().setLevel(logging.WARNING)
    tracemalloc.start(10)
    print(f"bench_ib_books: {a.n} brackets finished at the paper TWS, batches of {a.batch}")
    base, base_lib = await run("baseline", a.n, a.batch, 0.0, 31, a.publish_ms)
    pruned, pruned_lib = await run("retention", a.n, a.batch, a.retention, 32, a.publish_ms)
    print(f"traced heap after {a.n} finished brackets: baseline (no retention) {base:.2f} MB "
          f"= {base * 1e6 / a.n / 1024:.1f} KiB per bracket; retention {a.retention:g} s "
          f"{pruned:.2f} MB = {pruned * 1e6 / a.n / 1024:.2f} KiB per bracket; ratio "
          f"{pruned / base if base else float('nan'):.3f}")
    print(f"client library + adapter only: baseline {base_lib:.2f} MB = "
          f"{base_lib * 1e6 / a.n / 1024:.1f} KiB per bracket; retention {pruned_lib:.2f} MB = "
          f"{pruned_lib * 1e6 / a.n / 1024:.2f} KiB per bracket; ratio "
          f"{pruned_lib / base_lib if base_lib else float('nan'):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
