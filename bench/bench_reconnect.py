"""A reconnect after a long day: what IB's completed orders cost the daemon's IB side.

    .venv/bin/python bench/bench_reconnect.py [--orders 0,10000,35000] [--trials 3]

The paper TWS (in this process, WITH its pacing) holds K completed orders of another client (a
1M-proposal soak leaves ~35k), and the daemon's IB side (IBBroker + ExecutionAgent on a journal,
as core/app.py wires them) follows one working bracket. The paper TWS is restarted (0.2 s down);
the broker reconnects, reads IB's open and completed orders (adapters/ib_startup.py), runs the
reconcile and is READY again. Per K, medians of --trials reconnects:

- reconnect: the restart's request to READY again (wall, ms), and the completed orders' read
  alone (`ib_completed_orders` ms);
- book: Trades in the client library's book after the reconnect (what the retention sweep must
  prune later), the legs read compact;
- RSS: this process's growth over the reconnect, after a gc (KiB; the paper TWS's part is the
  same for every K).

The baseline is K = 0 in the same run: each K's reconnect is printed as a ratio to it. Run it on
two trees (a worktree of the commit before) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.adapters.ib import IBBroker  # noqa: E402
from bracketgate.adapters.journal import Journal  # noqa: E402
from bracketgate.agents.execution import ExecutionAgent  # noqa: E402
from bracketgate.bus.bus import Bus  # noqa: E402
from bracketgate.bus.messages import ApprovedBracket, ConnectionState  # noqa: E402
from bracketgate.core.logs import configure_logging  # noqa: E402
from bracketgate.core.memdump import rss_kib  # noqa: E402
from bench.bench_soak import seed_completed_orders  # noqa: E402
from tests.fixtures.ib_broker import proposal  # noqa: E402
from tests.fixtures.paper_tws import start_paper_tws, stop_paper_tws  # noqa: E402


async def until(pred, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("the broker did not reconnect in time")
        await asyncio.sleep(0.005)  # polling the broker's state: the figure's resolution


async def one_k(k: int, trials: int, work: Path) -> dict[str, float]:
    tws = await start_paper_tws()
    seed_completed_orders(tws, k)
    bus = Bus()
    await bus.start()
    journal = await Journal.open(work / f"j-{k}.sqlite")
    broker = IBBroker(host=tws.host, port=tws.port, client_id=21, publish=bus.publish,
                      heartbeat_s=0.5, ack_timeout=2.0, request_timeout=60.0)
    execution = ExecutionAgent(bus, broker, journal=journal)
    execution.attach()
    await execution.load_journal()
    broker.startup.use(expected=execution.expected_at_ib, journal=journal)
    broker.add_reconcile_hook(execution.reconcile)
    out: dict[str, list[float]] = {"wall": [], "read": [], "trades": [], "compact": [], "rss": []}
    try:
        await broker.start()
        p = proposal("rc-working", limit_price=150.0, stop_loss=140.0)
        res = await execution.place(ApprovedBracket(
            proposal=p, contract=await broker.resolve_contract(p),
            approved_at=datetime.now(timezone.utc)))
        assert res.ok, res
        for _ in range(trials):
            gc.collect()
            rss0 = rss_kib()
            n0 = broker.reconnects
            t0 = time.perf_counter()
            await tws.restart(0.2)
            await until(lambda: broker.reconnects > n0 and broker.state is ConnectionState.READY)
            out["wall"].append((time.perf_counter() - t0) * 1000)
            last = broker.startup.last
            out["read"].append(float(last.get("ms", 0.0)))
            out["trades"].append(float(len(broker.ib.wrapper.trades)))
            out["compact"].append(float(last.get("compact", 0)))
            gc.collect()
            out["rss"].append(float(rss_kib() - rss0))
    finally:
        await broker.close()
        await bus.close()
        await journal.close()
        await stop_paper_tws(tws)
    return {key: statistics.median(v) for key, v in out.items()}


async def main(a: argparse.Namespace) -> None:
    configure_logging("json", "WARNING", stream=open("/dev/null", "w"))
    ks = [int(x) for x in a.orders.split(",") if x.strip()]
    if 0 not in ks:
        ks.insert(0, 0)
    work = Path(tempfile.mkdtemp(prefix="bg-bench-reconnect-"))
    print(f"bench_reconnect: K completed orders at IB, {a.trials} reconnect(s) each, medians; "
          f"tree {Path(__file__).resolve().parents[1]}")
    print(f"{'K':>7} {'reconnect ms':>13} {'ratio':>6} {'read ms':>8} {'Trades in book':>15} "
          f"{'compact legs':>13} {'RSS +KiB':>9}")
    base = None
    for k in ks:
        r = await one_k(k, a.trials, work)
        base = r["wall"] if k == 0 else base
        print(f"{k:>7} {r['wall']:>13.0f} {r['wall'] / base:>5.2f}x {r['read']:>8.0f} "
              f"{r['trades']:>15.0f} {r['compact']:>13.0f} {r['rss']:>9.0f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", default="0,10000,35000", help="K completed orders at IB, per run")
    ap.add_argument("--trials", type=int, default=3, help="reconnects per K (median)")
    asyncio.run(main(ap.parse_args()))
