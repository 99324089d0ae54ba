"""A burst of approvable proposals at the daemon: does IB (the paper TWS, default pacing 50
messages per client per second) ever answer error 100, and does every decision tell the truth?

    .venv/bin/python bench/bench_burst.py [--count 10000] [--agents 10] [--concurrency 200]

Real processes on loopback: mosquitto, the paper TWS (`run.py sim`, its own process, so the
instrument that counts pacing is not slowed by the load generator) and the daemon
(`run.py`, JSON logs). Limits are generous (RISK_LIMITS_FILE) so every proposal is
approvable; what is refused is refused for rate (the IB pacer's headroom) or overload.
Printed: error-100 count and messages dropped at the paper TWS, decisions by verdict and code,
approved decisions whose three legs are at the paper TWS (with those ids, alive) vs not, other
decisions with any leg at IB (must be 0), proposals without a decision, the busiest second's
message count, throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.daemon import DaemonProcess, MqttProbe  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import spawn_paper_tws, stop_process  # noqa: E402
from bench.benchkit import wide_limits  # noqa: E402

LIMITS = wide_limits(margin_cushion_pct=0.0, entry_band_pct=70.0, exit_band_pct=90.0)

DEAD = ("Cancelled", "ApiCancelled", "Inactive")
PX = {"AAPL": 150.0, "MSFT": 300.0, "TSLA": 150.0, "SPY": 400.0}   # far below: the entries rest


def proposal(i: int, run: str) -> dict[str, Any]:
    sym = ("AAPL", "MSFT", "TSLA", "SPY")[i % 4]
    px = PX[sym]
    return {"proposal_id": f"burst-{run}-{i}", "symbol": sym, "side": "BUY", "quantity": 1,
            "order_type": "LMT", "limit_price": px, "take_profit": round(px * 1.04, 2),
            "stop_loss": round(px * 0.97, 2)}


async def main(count: int, agents: int, concurrency: int, settle_s: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="bg-bench-burst-"))
    (work / "limits.toml").write_text(LIMITS)
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    broker.start()
    proc, tws = await spawn_paper_tws()
    run = uuid.uuid4().hex[:6]
    try:
        d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url,
                                      tmp=work, extra_env={"RISK_LIMITS_FILE": str(work / "limits.toml")})
        try:
            async with MqttProbe(broker.url, d.prefix) as probe:
                await probe.wait_topic("status", lambda s: isinstance(s, dict) and s.get("state") == "online")
                ids = {f"burst-{run}-{i}": f"a{i % agents}" for i in range(count)}
                t0 = time.perf_counter()
                sem = asyncio.Semaphore(concurrency)

                async def send(i: int) -> None:
                    async with sem:
                        await probe.propose(f"a{i % agents}", proposal(i, run))

                await asyncio.gather(*(send(i) for i in range(count)))
                t_sent = time.perf_counter()

                def decisions() -> dict[str, dict[str, Any]]:
                    out = {}
                    for t, p, _ in probe.messages:
                        if t.startswith("decisions/") and isinstance(p, dict) and p.get("proposal_id") in ids:
                            out.setdefault(p["proposal_id"], p)
                    return out

                last, last_n = time.perf_counter(), -1
                while True:   # until every proposal is answered or nothing new for settle_s
                    got = decisions()
                    if len(got) == count:
                        break
                    if len(got) != last_n:
                        last, last_n = time.perf_counter(), len(got)
                    elif time.perf_counter() - last > settle_s:
                        break
                    await asyncio.sleep(0.2)  # polling the probe's record
                t_done = time.perf_counter()
                got = decisions()
                health = await tws.get("/health")
                state = await tws.state()
        finally:
            rc = await d.terminate()
    finally:
        await stop_process(proc, tws)
        broker.stop()

    legs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for o in state["orders"]:
        if o.get("orderRef") in ids:
            legs[o["orderRef"]].append(o)
    verdicts = collections.Counter(p["verdict"] for p in got.values())
    codes = collections.Counter(r["code"] for p in got.values() if p["verdict"] != "approved"
                                for r in p.get("reasons", [])[:1])
    approved_ok = approved_bad = others_with_legs = zero_ids = 0
    bad_examples: list[str] = []
    for pid, dec in got.items():
        at_ib = legs.get(pid, [])
        if dec["verdict"] == "approved":
            oids = dec.get("order_ids") or {}
            want = {oids.get("entry"), oids.get("take_profit"), oids.get("stop_loss")}
            if 0 in want or None in want:
                zero_ids += 1
            have = {o["orderId"] for o in at_ib if o["status"] not in DEAD}
            if len(at_ib) == 3 and want == have:
                approved_ok += 1
            else:
                approved_bad += 1
                if len(bad_examples) < 3:
                    bad_examples.append(f"{pid}: ids {sorted(w for w in want if w)} at IB "
                                        f"{[(o['orderId'], o['orderType'], o['status']) for o in at_ib]}")
        elif any(o["status"] not in DEAD for o in at_ib) or at_ib:
            others_with_legs += 1
            if len(bad_examples) < 6:
                bad_examples.append(f"{pid} {dec['verdict']}: at IB "
                                    f"{[(o['orderId'], o['orderType'], o['status']) for o in at_ib]}")
    me = next((c for c in health["clients"] if c["clientId"] == 1), {})
    print(f"bracketgate burst: {count} approvable proposals from {agents} agents "
          f"(mosquitto + daemon + paper TWS, each its own process, loopback)")
    print(f"  published in {t_sent - t0:.1f} s; answered {len(got)} in {t_done - t0:.1f} s "
          f"({len(got) / (t_done - t0):.0f} decisions/s, {verdicts['approved'] / (t_done - t0):.1f} approved/s)")
    print(f"  verdicts {dict(verdicts)}; first reason of the others {dict(codes)}")
    print(f"  paper TWS: error 100 sent {health['pacingErrors']}, messages dropped for pacing "
          f"{health['pacingDropped']}, busiest 1 s window {me.get('peakPerWindow')} messages")
    print(f"  approved with all three legs at the paper TWS: {approved_ok}; approved without: {approved_bad}; "
          f"approved carrying an order id 0: {zero_ids}")
    print(f"  other decisions with a leg at IB (must be 0): {others_with_legs}")
    print(f"  proposals without a decision: {count - len(got)}")
    for line in bad_examples:
        print("   ", line)
    print(f"  daemon exit code on SIGTERM: {rc}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=200, help="publishes in flight")
    ap.add_argument("--settle", type=float, default=30.0, help="s without a new decision to stop")
    a = ap.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)   # aiomqtt: "There are N pending publish calls"
    asyncio.run(main(a.count, a.agents, a.concurrency, a.settle))
