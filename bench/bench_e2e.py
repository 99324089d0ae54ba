"""End-to-end latency of the daemon: start-up to ready, and one proposal from MQTT publish to
its order at the paper TWS (and to the approved decision back at the agent).

    .venv/bin/python bench/bench_e2e.py [--n 150] [--rate 8]

Closed loop (one proposal at a time): it shows a single proposal's path, not latency under
load; for that, bench/bench_latency.py (open loop, from the scheduled send time).

Real processes on loopback: mosquitto, the daemon (`python run.py`, JSON logs), and the paper
TWS in THIS process so the moment the entry order reaches it is read on the same clock as the
publish. Baseline in the same run: an MQTT publish -> receive round trip through the same
broker, so the figures can be read as ratios on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.sim.model import OrderChanged  # noqa: E402
from tests.fixtures.daemon import DaemonProcess, MqttProbe  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import start_paper_tws, stop_paper_tws  # noqa: E402

LIMITS = """
max_snapshot_age_s = 10.0
max_quote_age_s = 15.0
daily_loss_limit = 1000000.0
per_trade_loss_limit = 100000.0
per_trade_loss_pct = 50.0
max_drawdown_pct = 90.0
max_open_brackets = 100000
max_position_units = 10000000.0
max_position_notional = 1e12
max_order_notional = 1e12
max_gross_exposure_pct = 100000.0
max_net_exposure_pct = 100000.0
max_proposals_per_s = 1000.0
proposal_burst = 1000
max_remembered_decisions = 200000

[agent]
loss_limit = 1e12
exposure_limit = 1e15
max_open_brackets = 100000
max_proposals_per_s = 1000.0
proposal_burst = 1000
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def fmt(xs: list[float]) -> str:
    return (f"p50 {statistics.median(xs):7.2f} ms   p90 {pct(xs, 90):7.2f} ms   "
            f"p99 {pct(xs, 99):7.2f} ms   max {max(xs):7.2f} ms   (n={len(xs)})")


async def main(n: int, rate: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="bg-bench-e2e-"))
    (work / "limits.toml").write_text(LIMITS)
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    broker.start()
    tws = await start_paper_tws()   # pacing ON (50 messages per client per second), as IB
    arrived: dict[str, float] = {}

    def on_event(ev: object) -> None:
        if isinstance(ev, OrderChanged) and ev.order.order_ref and ev.order.parent_id == 0:
            arrived.setdefault(ev.order.order_ref, time.perf_counter())

    tws.engine.subscribe(on_event)
    try:
        t0 = time.perf_counter()
        d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url, tmp=work,
                                      extra_env={"RISK_LIMITS_FILE": str(work / "limits.toml")})
        startup_wall = (time.perf_counter() - t0) * 1000
        ready = next(e for e in d.logs if e.get("event") == "ready")
        try:
            async with MqttProbe(broker.url, d.prefix) as agent:
                await agent.wait_topic("status", lambda s: s.get("state") == "online")
                # baseline: MQTT round trip through the same broker
                rtt = []
                for i in range(50):
                    tag = uuid.uuid4().hex
                    t = time.perf_counter()
                    await agent.publish(f"bench/echo/{tag}", {"i": i})
                    await agent.wait_topic(f"bench/echo/{tag}")
                    rtt.append((time.perf_counter() - t) * 1000)
                to_order, to_decision = [], []
                gap = 1.0 / rate
                for i in range(n):
                    pid = f"bench-{i}-{uuid.uuid4().hex[:6]}"
                    sym = ("AAPL", "MSFT", "TSLA", "SPY")[i % 4]
                    px = {"AAPL": 195.5, "MSFT": 357.0, "TSLA": 212.5, "SPY": 493.0}[sym]  # 15 % under: in band, rests
                    prop = {"proposal_id": pid, "symbol": sym, "side": "BUY", "quantity": 1,
                            "order_type": "LMT", "limit_price": px, "take_profit": round(px * 1.04, 2),
                            "stop_loss": round(px * 0.97, 2)}
                    t = time.perf_counter()
                    await agent.propose(f"bench{i % 5}", prop)
                    dec = await agent.decision(f"bench{i % 5}", pid, timeout=10)
                    t_dec = time.perf_counter()
                    if dec["verdict"] != "approved":
                        print("not approved:", json.dumps(dec)[:300])
                        continue
                    to_decision.append((t_dec - t) * 1000)
                    to_order.append((arrived[pid] - t) * 1000)
                    await asyncio.sleep(max(0.0, gap - (time.perf_counter() - t)))  # pacing the load
        finally:
            rc = await d.terminate()
    finally:
        await stop_paper_tws(tws)
        broker.stop()

    print("bracketgate end-to-end latency (mosquitto + daemon subprocess + paper TWS on loopback)")
    print(f"  daemon start-up to ready: {ready['startup_ms']:.0f} ms in-process "
          f"({startup_wall:.0f} ms from spawn incl. interpreter and imports)")
    print(f"  baseline MQTT round trip   {fmt(rtt)}")
    print(f"  publish -> entry at TWS    {fmt(to_order)}")
    print(f"  publish -> approved back   {fmt(to_decision)}  (after IB acked all 3 legs)")
    print(f"  ratio p50 to the MQTT round trip: order {statistics.median(to_order) / statistics.median(rtt):.1f}x, "
          f"decision {statistics.median(to_decision) / statistics.median(rtt):.1f}x")
    print(f"  daemon exit code on SIGTERM: {rc}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--rate", type=float, default=8.0, help="proposals per second (order pacing: 45 msgs/s)")
    a = ap.parse_args()
    asyncio.run(main(a.n, a.rate))
