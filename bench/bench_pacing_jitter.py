"""The IB pacer against jitter on IB's side: how many messages does IB drop (error 100) when its
reader stalls, per pacer setting, and what does each setting cost in throughput?

    .venv/bin/python bench/bench_pacing_jitter.py [--seconds 20] [--stall-ms 300]
        [--every-s 2] [--configs 40:4:off,40:4:on,35:4:on,32:3:on] [--repeat 1]

The paper TWS runs as its own process (`run.py sim`, default pacing: 50 messages per client per
1 s window, the message dropped beyond it). One IBBroker in this process keeps its pacer full
with what-ifs (ORDER class, 64 in flight) for `--seconds`; every `--every-s` the paper TWS
process is stopped (SIGSTOP) for `--stall-ms` and continued (SIGCONT): what was sent meanwhile
waits in the socket and arrives at once, bunched into IB's window. A config is
`rate:burst:backoff` (backoff `on`: the pacer's reaction to error 100, adapters/pacer.py
`violation`; `off`: that reaction disabled, the code before it). Printed per config (medians over
`--repeat`): IB's error 100 count and messages dropped, what-ifs answered per second and as a
ratio to the first config, approvals per second that rate carries (4 messages each: a what-if
and three legs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.adapters.ib import IBBroker  # noqa: E402
from bracketgate.bus.errors import BrokerError  # noqa: E402
from bracketgate.bus.messages import ApprovedBracket, TradeProposal  # noqa: E402
from tests.fixtures.paper_tws import spawn_paper_tws, stop_process  # noqa: E402


async def _publish(_: Any) -> None:
    return None


async def run_one(rate: float, burst: float, backoff: bool, seconds: float, stall_ms: float,
                  every_s: float) -> dict[str, float]:
    proc, tws = await spawn_paper_tws()
    try:
        broker = IBBroker(host=tws.host, port=tws.port, client_id=21, publish=_publish,
                          heartbeat_s=5.0, request_timeout=2.0, max_msgs_per_s=rate)
        p = broker.pacer
        p.burst = float(burst)
        p._tokens = float(burst)
        if not backoff:
            p.violation = lambda: 0     # type: ignore[method-assign]  # the reaction off
        await broker.start()
        try:
            prop = TradeProposal.model_validate(dict(
                proposal_id="jit", agent_id="a", symbol="AAPL", side="BUY", quantity=1,
                order_type="LMT", limit_price=150.0, take_profit=160.0, stop_loss=140.0))
            contract = await broker.resolve_contract(prop)
            bracket = ApprovedBracket(proposal=prop, contract=contract,
                                      approved_at=datetime.now(timezone.utc))
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            answered = failed = 0

            async def worker() -> None:
                nonlocal answered, failed
                while loop.time() < end:
                    try:
                        await broker.what_if(bracket)
                        answered += 1
                    except BrokerError:
                        failed += 1

            async def staller() -> None:
                while loop.time() + every_s < end:
                    await asyncio.sleep(every_s)           # the schedule of stalls
                    os.kill(proc.pid, signal.SIGSTOP)
                    try:
                        await asyncio.sleep(stall_ms / 1000)   # the stall itself
                    finally:
                        os.kill(proc.pid, signal.SIGCONT)

            t0 = loop.time()
            await asyncio.gather(staller(), *(worker() for _ in range(64)))
            took = loop.time() - t0
            health = await tws.get("/health")
            return {"errors_100": health["pacingErrors"], "dropped": health["pacingDropped"],
                    "whatifs_per_s": answered / took, "timeouts": failed,
                    "violations_seen": p.stats.violations, "peak_per_s": p.stats.peak_per_s}
        finally:
            await broker.close()
    finally:
        await stop_process(proc, tws)


async def main(args: argparse.Namespace) -> None:
    configs = []
    for c in args.configs.split(","):
        rate, burst, backoff = c.split(":")
        configs.append((float(rate), float(burst), backoff == "on"))
    rows = []
    for rate, burst, backoff in configs:
        trials = [await run_one(rate, burst, backoff, args.seconds, args.stall_ms, args.every_s)
                  for _ in range(args.repeat)]
        med = {k: statistics.median(t[k] for t in trials) for k in trials[0]}
        rows.append(((rate, burst, backoff), med))
    base = rows[0][1]["whatifs_per_s"] or 1.0
    print(f"stall {args.stall_ms:.0f} ms every {args.every_s} s, {args.seconds} s per run, "
          f"median of {args.repeat}; IB window 50 msgs / 1 s")
    print(f"{'rate:burst:backoff':>20} {'err100':>7} {'dropped':>8} {'timeouts':>9} "
          f"{'whatif/s':>9} {'ratio':>6} {'approvals/s':>12}")
    for (rate, burst, backoff), m in rows:
        print(f"{f'{rate:g}:{burst:g}:' + ('on' if backoff else 'off'):>20} "
              f"{m['errors_100']:>7.0f} {m['dropped']:>8.0f} {m['timeouts']:>9.0f} "
              f"{m['whatifs_per_s']:>9.1f} {m['whatifs_per_s'] / base:>6.2f} {rate / 4:>12.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--stall-ms", type=float, default=300.0)
    ap.add_argument("--every-s", type=float, default=2.0)
    ap.add_argument("--configs", default="40:4:off,40:4:on,35:4:on,32:3:on")
    ap.add_argument("--repeat", type=int, default=1)
    asyncio.run(main(ap.parse_args()))
