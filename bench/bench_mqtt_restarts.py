"""Proposals across MQTT broker restarts: lost and duplicated counts, decision latency.

mosquitto, the paper TWS (`run.py sim`) and the daemon (`run.py`) run as processes on loopback;
a strategy agent (tests/fixtures/resilient_agent.py: persistent session, QoS 1, re-publishes
what the broker has not acknowledged after each reconnect) streams far-from-market AAPL
brackets at a steady rate. Two phases in the same run, same daemon, same count of proposals:

  baseline   no restarts
  restarts   mosquitto restarted --restarts times (SIGTERM: it saves its state; then start)

Latency is the agent's view: from the proposal being handed to its client (which may have to
wait for the broker to come back) to the first decision it receives. Lost = no decision within
--settle seconds of the last proposal; duplicates = a proposal_id with decisions that differ,
journaled twice, or with more than its three legs at the paper TWS (GET /state by orderRef).
Identical repeats of a decision (a DUP redelivery or an agent's re-publish answered again)
are counted, not failures.

    python bench/bench_mqtt_restarts.py [--restarts 20] [--rate 10] [--interval 0.8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.daemon import REPO, DaemonProcess  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import spawn_paper_tws, stop_process  # noqa: E402
from tests.fixtures.resilient_agent import ResilientAgent, roomy_limits  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_phase(name: str, mqtt_url: str, prefix: str, count: int, rate: float,
                    restarts: int, interval: float, settle: float,
                    broker: MosquittoServer) -> dict[str, Any]:
    pids = [f"{name}-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    async with ResilientAgent(mqtt_url, prefix, agent_id=name) as agent:

        async def stream() -> None:
            for pid in pids:
                agent.propose(pid)
                await asyncio.sleep(1 / rate)

        async def restart_broker() -> None:
            for _ in range(restarts):
                await asyncio.sleep(interval)
                await asyncio.to_thread(broker.restart)

        await asyncio.gather(stream(), restart_broker())
        with contextlib.suppress(AssertionError):  # a timeout: what is missing is counted as lost
            await agent.decided(pids, timeout=settle)
    latencies = [(agent.decided_at[p] - agent.proposed_at[p]) * 1000
                 for p in pids if p in agent.decided_at]
    first = {p: agent.decisions[p][0] for p in pids if p in agent.decisions}
    return {
        "name": name, "pids": pids, "first": first,
        "lost": [p for p in pids if p not in agent.decisions],
        "differing": [p for p, ds in agent.decisions.items() if any(d != ds[0] for d in ds)],
        "repeats": sum(len(ds) - 1 for ds in agent.decisions.values()),
        "republished": sum(n - 1 for n in agent.publishes.values()),
        "reconnects": agent.connects - 1,
        "verdicts": Counter(d["verdict"] for d in first.values()),
        "codes": Counter(r["code"] for d in first.values() for r in d["reasons"]),
        "latencies": latencies,
    }


async def journaled(journal: Path) -> Counter[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "run.py"), "journal", "--path", str(journal),
        "--kind", "proposal", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err.decode())
    return Counter(json.loads(line)["proposal_id"] for line in out.decode().splitlines())


def order_duplicates(state: dict[str, Any], phase: dict[str, Any]) -> tuple[int, int]:
    """(proposal_ids with legs other than their three, approved ones missing a leg)"""
    by_ref = Counter(o.get("orderRef") for o in state["orders"])
    extra = missing = 0
    for pid in phase["pids"]:
        decision = phase["first"].get(pid)
        want = 3 if decision is not None and decision["verdict"] == "approved" else 0
        extra += by_ref[pid] > want
        missing += by_ref[pid] < want
    return extra, missing


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--rate", type=float, default=10.0, help="proposals per second")
    ap.add_argument("--interval", type=float, default=0.8, help="seconds between restarts")
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds to wait for the last decisions")
    args = ap.parse_args()
    binary = shutil.which(MOSQUITTO_BINARY) or shutil.which("mosquitto")
    if binary is None:
        print(f"mosquitto not found at {MOSQUITTO_BINARY}", file=sys.stderr)
        return 2
    count = max(1, int(args.rate * args.interval * (args.restarts + 1)))

    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp_name:
        tmp = Path(tmp_name)
        broker = MosquittoServer(binary, tmp / "mosquitto")
        broker.start()
        proc, tws = await spawn_paper_tws()
        daemon: DaemonProcess | None = None
        try:
            daemon = await DaemonProcess.spawn(
                ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url, tmp=tmp,
                extra_env={"RISK_LIMITS_FILE": str(roomy_limits(tmp, open_brackets=4 * count)),
                           "LOG_LEVEL": "INFO"})
            phases = []
            for name, restarts in (("baseline", 0), ("restarts", args.restarts)):
                phases.append(await run_phase(name, broker.url, daemon.prefix, count, args.rate,
                                              restarts, args.interval, args.settle, broker))
            state = await tws.state()
            rc = await daemon.terminate()
            journal = await journaled(tmp / "journal.sqlite")
            redelivered = Counter(e.get("proposal_id") for e in daemon.logs
                                  if e.get("event") == "proposal_received")
        finally:
            if daemon is not None:
                await daemon.kill()
            await stop_process(proc, tws)
            broker.stop()

    print(f"bench_mqtt_restarts  python {platform.python_version()}  {platform.machine()}  "
          f"{count} proposals per phase at {args.rate:g}/s, {args.restarts} restarts every "
          f"{args.interval:g} s; daemon exit {rc}")
    print(f"{'phase':<9} {'n':>4} {'approved':>8} {'rejected':>8} {'lost':>4} {'differ':>6} "
          f"{'journal2x':>9} {'orders2x':>8} {'missing':>7} {'repeats':>7} {'dup_in':>6} "
          f"{'republ':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    figures = {}
    for ph in phases:
        extra, missing = order_duplicates(state, ph)
        twice = sum(journal[p] > 1 for p in ph["pids"])
        dup_in = sum(redelivered[p] - 1 for p in ph["pids"] if redelivered[p] > 1)
        lat = ph["latencies"]
        p50, p99 = (percentile(lat, 0.50), percentile(lat, 0.99)) if lat else (float("nan"),) * 2
        figures[ph["name"]] = (p50, p99)
        print(f"{ph['name']:<9} {len(ph['pids']):>4} {ph['verdicts']['approved']:>8} "
              f"{ph['verdicts']['rejected']:>8} {len(ph['lost']):>4} {len(ph['differing']):>6} "
              f"{twice:>9} {extra:>8} {missing:>7} {ph['repeats']:>7} {dup_in:>6} "
              f"{ph['republished']:>6} {p50:>8.1f} {p99:>8.1f} "
              f"{max(lat, default=float('nan')):>8.1f}")
        codes = f"rejection codes: {dict(ph['codes'])}; " if ph["codes"] else ""
        print(f"{'':<9} {codes}agent reconnects: {ph['reconnects']}; "
              f"mean {statistics.fmean(lat):.1f} ms")
    base, chaos = figures["baseline"], figures["restarts"]
    print(f"restarts / baseline: p50 x{chaos[0] / base[0]:.1f}, p99 x{chaos[1] / base[1]:.1f}")
    print("repeats = identical decisions received again; dup_in = proposals the daemon took in "
          "more than once (broker DUP redelivery or agent re-publish); republ = agent re-publishes")
    bad = any(ph["lost"] or ph["differing"] for ph in phases)
    return 1 if bad or rc != 0 else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
