"""Fair share under a flood: one agent floods proposals at --flood-rate (default 250/s) while a
quiet agent sends one a second; every quiet proposal should be decided on its merits.

    .venv/bin/python bench/bench_fair_share.py [--seconds 6] [--flood-rate 250] [--no-agents-file]

Real processes on loopback: mosquitto, the daemon (`python run.py`) and the paper TWS in this
process. The limits are the shipped defaults (global 50/s burst 100; each agent 5/s burst 10).
With an agents file (default) both agents are registered; --no-agents-file names the quiet one
in the limits file instead (`[agents.quiet]`) and leaves the flooder unregistered (the shared
budget). Baseline in the same run: the quiet agent's decision latency with no flood, so the
latency under the flood reads as a ratio. Prints the quiet agent's outcomes and the flood's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.config.limits import DEFAULT_LIMITS_PATH  # noqa: E402
from tests.fixtures.daemon import DaemonProcess, MqttProbe  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import start_paper_tws, stop_paper_tws  # noqa: E402


def resting(pid: str) -> dict[str, Any]:
    """BUY 10 AAPL at 200 with AAPL near 230: valid, rests, never fills."""
    return {"proposal_id": pid, "symbol": "AAPL", "sec_type": "STK", "exchange": "SMART",
            "currency": "USD", "side": "BUY", "quantity": 10, "order_type": "LMT",
            "limit_price": 200.00, "take_profit": 210.00, "stop_loss": 196.00, "tif": "DAY"}


def outcome(dec: dict[str, Any]) -> str:
    if dec.get("verdict") == "approved":
        return "approved"
    return "+".join(sorted({r["code"] for r in dec.get("reasons", [])})) or "rejected"


async def quiet_round(probe: MqttProbe, n: int, interval: float) -> tuple[list[str], list[float]]:
    outcomes, lat = [], []
    for _ in range(n):
        pid = f"q-{uuid.uuid4().hex[:10]}"
        t0 = time.perf_counter()
        await probe.propose("quiet", resting(pid))
        dec = await probe.decision("quiet", pid, timeout=20)
        lat.append((time.perf_counter() - t0) * 1e3)
        outcomes.append(outcome(dec))
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))
    return outcomes, lat


async def main(seconds: float, flood_rate: float, agents_file: bool) -> None:
    from bracketgate.core.logs import configure_logging

    configure_logging("console", "WARNING")   # the in-process paper TWS: quiet
    work = Path(tempfile.mkdtemp(prefix="bg-fair-"))
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    await asyncio.to_thread(broker.start)
    tws = await start_paper_tws()
    limits = work / "limits.toml"
    text = DEFAULT_LIMITS_PATH.read_text()
    env = {"RISK_LIMITS_FILE": str(limits)}
    if agents_file:
        (work / "agents.toml").write_text("[agents.flood]\nmax_open_brackets = 2\n[agents.quiet]\n")
        env["AGENTS_FILE"] = str(work / "agents.toml")
    else:
        text += "\n[agents.quiet]\n"
    limits.write_text(text)
    d = None
    try:
        d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url,
                                      tmp=work, extra_env=env)
        async with MqttProbe(broker.url, d.prefix) as probe, \
                MqttProbe(broker.url, d.prefix) as flooder:
            await probe.wait_topic("portfolio", lambda s: isinstance(s, dict)
                                   and s.get("connection") == "ready" and s.get("reconciled"))
            n_quiet = max(1, int(seconds))
            await quiet_round(probe, 1, 0.3)       # warm-up (contract details, first what-if)
            base_out, base_lat = await quiet_round(probe, 3, 0.3)   # baseline: no flood

            flood_ids: list[str] = []
            stop = asyncio.Event()

            async def flood() -> None:
                t0 = time.monotonic()
                step = max(1, int(flood_rate / 25))      # batches 25 times a second
                while not stop.is_set():
                    batch = [f"f-{uuid.uuid4().hex[:10]}" for _ in range(step)]
                    flood_ids.extend(batch)
                    await asyncio.gather(*(flooder.propose("flood", resting(p)) for p in batch))
                    await asyncio.sleep(max(0.0, t0 + len(flood_ids) / flood_rate
                                            - time.monotonic()))

            t_flood = time.monotonic()
            task = asyncio.create_task(flood())
            await asyncio.sleep(0.3)
            q_out, q_lat = await quiet_round(probe, n_quiet, 1.0)
            stop.set()
            await task
            flood_s = time.monotonic() - t_flood
            # the flood's decisions (those that arrived within a few seconds)
            want = set(flood_ids)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = {p["proposal_id"]: p for p in probe.on("decisions/flood")
                       if isinstance(p, dict) and p.get("proposal_id") in want}
                if len(got) == len(want):
                    break
                await asyncio.sleep(0.2)
        flood_counts: dict[str, int] = {}
        for dec in got.values():
            k = outcome(dec)
            flood_counts[k] = flood_counts.get(k, 0) + 1
        mode = "agents file (both registered)" if agents_file else \
            "no agents file (quiet named in limits, flooder in the shared budget)"
        print(f"bracketgate fair share — {mode}; shipped default limits")
        print(f"flood: {len(flood_ids)} proposals in {flood_s:.1f} s "
              f"({len(flood_ids) / flood_s:.0f}/s), {len(got)} decisions back")
        for k, v in sorted(flood_counts.items(), key=lambda kv: -kv[1]):
            print(f"  {k:<40} {v:6d}  ({v / max(1, len(got)):.1%})")
        approved = q_out.count("approved")
        print(f"quiet: {approved}/{len(q_out)} approved; outcomes {q_out}")
        print(f"quiet decision latency: baseline (no flood) median "
              f"{statistics.median(base_lat):.1f} ms {base_out}; under the flood median "
              f"{statistics.median(q_lat):.1f} ms, max {max(q_lat):.1f} ms "
              f"(x{statistics.median(q_lat) / statistics.median(base_lat):.2f} the baseline)")
    finally:
        if d is not None:
            await d.terminate(timeout=20)
            await d.kill()
        await stop_paper_tws(tws)
        await asyncio.to_thread(broker.stop)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0, help="flood duration ~ quiet proposals")
    ap.add_argument("--flood-rate", type=float, default=250.0, help="flood proposals per second")
    ap.add_argument("--no-agents-file", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.seconds, a.flood_rate, not a.no_agents_file))
