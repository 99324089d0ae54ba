"""Fuzzed payloads through the whole daemon: every case answered exactly once, no order placed.

    .venv/bin/python bench/bench_fuzz.py [--count 50000] [--seed 8] [--window 500]

Real processes on loopback: mosquitto, the daemon (`python run.py`, default limits), the paper
TWS in this process. The corpus is tests/fixtures/fuzz.py's (the CI test runs 3,000 of it):
mutations of one valid proposal, absurd prices, odd topic agent ids. Prints unanswered,
answered twice, approved, orders at the paper TWS, throughput, and the daemon's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.core.memdump import rss_kib  # noqa: E402
from tests.fixtures.daemon import DaemonProcess, MqttProbe  # noqa: E402
from tests.fixtures.fuzz import corpus, run_corpus  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import start_paper_tws, stop_paper_tws  # noqa: E402

FAILURES = {"mqtt_inbound_failed", "proposal_unparsed", "bus_handler_failed",
            "decision_not_recorded", "proposal_not_durable", "placement_task_failed"}


def rss_mb(pid: int) -> float | None:
    kib = rss_kib(pid)
    return kib / 1024 if kib else None


async def main(count: int, seed: int, window: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="bg-bench-fuzz-"))
    t_gen = time.perf_counter()
    cases = corpus(count, seed=seed)
    gen_s = time.perf_counter() - t_gen
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    broker.start()
    tws = await start_paper_tws()
    try:
        d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url,
                                      tmp=work)
        try:
            async with MqttProbe(broker.url, d.prefix) as probe:
                await probe.wait_topic("portfolio", lambda s: s.get("connection") == "ready"
                                       and s.get("reconciled") is True, timeout=20)
            rss0 = rss_mb(d.proc.pid)
            run = await run_corpus(broker.url, d.prefix, cases, window=window,
                                   timeout=max(120.0, count / 50),
                                   progress=lambda n, a: print(f"  ... {n} sent, {a} answered",
                                                               flush=True))
            rss1 = rss_mb(d.proc.pid)
            ids = {c.proposal_id for c in cases if c.proposal_id}
            orders = (await tws.state())["orders"]
            ours = [o for o in orders if o.get("orderRef") in ids]
            alive = d.proc.returncode is None
        finally:
            rc = await d.terminate(timeout=60)
        failures = Counter(e.get("event") for e in d.logs if e.get("event") in FAILURES)
    finally:
        await stop_paper_tws(tws)
        broker.stop()

    kinds = Counter(c.kind.split(":")[0] for c in cases)
    print(f"bracketgate fuzz corpus: {count} cases (seed {seed}, window {window}), "
          f"mosquitto + daemon subprocess + paper TWS on loopback")
    print(f"  corpus: {dict(kinds)} (generated in {gen_s:.2f} s)")
    print(f"  unanswered      {len(run.unanswered)}"
          + (f"  e.g. {[(c.index, c.kind) for c in run.unanswered[:5]]}" if run.unanswered else ""))
    print(f"  answered twice  {len(run.answered_twice)}")
    print(f"  approved        {len(run.approved)}")
    print(f"  orders at TWS   {len(ours)} for the corpus ({len(orders)} in all)")
    print(f"  verdicts        {run.verdicts()}")
    print(f"  sentinel        {run.sentinel and run.sentinel.get('verdict')} (answered after every case)")
    print(f"  throughput      {count / run.elapsed_s:,.0f} cases/s answered "
          f"({run.elapsed_s:.1f} s for {count})")
    print(f"  daemon          alive after the corpus: {alive}; exit code on SIGTERM {rc}; "
          f"RSS {rss0 and round(rss0)} -> {rss1 and round(rss1)} MB; "
          f"failure log events {dict(failures) or 0}")
    ok = not run.unanswered and not run.answered_twice and not run.approved and not ours and alive
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--window", type=int, default=500, help="cases unanswered at once, at most")
    a = ap.parse_args()
    sys.exit(asyncio.run(main(a.count, a.seed, a.window)))
