"""Proposals across MQTT broker restarts: lost and duplicated counts, decision latency.

mosquitto, the paper TWS (`run.py sim`) and the daemon (`run.py`) run as processes on loopback;
a strategy agent (tests/fixtures/resilient_agent.py: persistent session, QoS 1, re-publishes
what the broker has not acknowledged after each reconnect) streams far-from-market AAPL
brackets at a steady rate. Each broker profile is one run (its own broker, paper TWS, daemon):

  shipped    config/mosquitto.conf (persistence, 100k queued per client, set_tcp_nodelay)
  defaults   mosquitto's own defaults (no persistence, 1,000 queued per client)

and three phases in each run, same daemon:

  baseline   no restarts
  restarts   mosquitto restarted --restarts times (SIGTERM: it saves its state; then start)
  burst      the daemon stopped (SIGTERM), --burst proposals (rejected at once: delivery is what
             is measured) published to its persistent session, mosquitto restarted
             --burst-restarts times, the daemon started again

Latency is the agent's view: from the proposal being handed to its client (which may have to
wait for the broker to come back) to the first decision it receives. Lost = no decision once a
sentinel proposal sent after the phase is decided (delivery is in order; --settle bounds
the wait); duplicates = a proposal_id with decisions that differ, journaled twice, or with more than its three legs at the paper TWS (GET /state by orderRef).
Identical repeats of a decision (a DUP redelivery or an agent's re-publish answered again)
are counted, not failures.

    python bench/bench_mqtt_restarts.py [--restarts 20] [--rate 10] [--interval 0.8]
                                        [--burst 1500] [--profile shipped|defaults|both]
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


def cheap(pid: str) -> dict[str, Any]:
    """Valid, and rejected at once (reward/risk 0.25): the burst measures delivery only."""
    return {"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 1,
            "order_type": "LMT", "limit_price": 200.0, "take_profit": 201.0, "stop_loss": 196.0}


async def settle_phase(agent: ResilientAgent, name: str, pids: list[str], settle: float) -> None:
    """Wait until every proposal is decided, or a sentinel sent after them is (then what has
    no decision yet never will: the broker delivers one publisher's messages in order)."""
    sentinel = f"{name}-sentinel-{uuid.uuid4().hex[:6]}"
    agent.propose(sentinel, cheap(sentinel))
    with contextlib.suppress(AssertionError):  # a timeout: what is missing is counted as lost
        await agent.wait(lambda: sentinel in agent.decisions, timeout=settle)
    with contextlib.suppress(AssertionError):  # stragglers already on their way
        await agent.decided(pids, timeout=2.0)
    # and nothing left to publish: leaving the agent mid-PUBLISH can swallow its cancellation
    with contextlib.suppress(AssertionError):
        await agent.wait(lambda: not agent.unacked, timeout=settle)


def summary(name: str, pids: list[str], agent: ResilientAgent) -> dict[str, Any]:
    latencies = [(agent.decided_at[p] - agent.proposed_at[p]) * 1000
                 for p in pids if p in agent.decided_at]
    first = {p: agent.decisions[p][0] for p in pids if p in agent.decisions}
    return {
        "name": name, "pids": pids, "first": first,
        "lost": [p for p in pids if p not in agent.decisions],
        "differing": [p for p in pids if p in agent.decisions
                      and any(d != agent.decisions[p][0] for d in agent.decisions[p])],
        "repeats": sum(len(agent.decisions[p]) - 1 for p in pids if p in agent.decisions),
        "republished": sum(agent.publishes[p] - 1 for p in pids if agent.publishes[p]),
        "reconnects": agent.connects - 1,
        "verdicts": Counter(d["verdict"] for d in first.values()),
        "codes": Counter(r["code"] for d in first.values() for r in d["reasons"]),
        "latencies": latencies,
    }


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
        await settle_phase(agent, name, pids, settle)
        return summary(name, pids, agent)


async def run_burst(daemon: DaemonProcess, respawn: Any, mqtt_url: str, count: int,
                    restarts: int, settle: float,
                    broker: MosquittoServer) -> tuple[dict[str, Any], DaemonProcess]:
    """The daemon down while `count` proposals queue for it and the broker restarts."""
    name = "burst"
    pids = [f"{name}-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    async with ResilientAgent(mqtt_url, daemon.prefix, agent_id=name) as agent:
        warm = f"{name}-warm-{uuid.uuid4().hex[:6]}"
        agent.propose(warm, cheap(warm))
        await agent.decided([warm])
        await daemon.terminate()
        for pid in pids:
            agent.propose(pid, cheap(pid))
        await agent.wait(lambda: not agent.unacked, timeout=settle)   # all PUBACKed
        for _ in range(restarts):
            await asyncio.to_thread(broker.restart)
        daemon = await respawn()
        await settle_phase(agent, name, pids, settle)
        return summary(name, pids, agent), daemon


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


async def run_profile(profile: str, binary: str, args: argparse.Namespace,
                      count: int) -> dict[str, Any]:
    """One broker profile: its own broker, paper TWS and daemon; the three phases."""
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp_name:
        tmp = Path(tmp_name)
        broker = MosquittoServer(binary, tmp / "mosquitto", profile=profile)  # type: ignore[arg-type]
        broker.start()
        proc, tws = await spawn_paper_tws()
        daemon: DaemonProcess | None = None
        logs: list[dict[str, Any]] = []
        env = {"RISK_LIMITS_FILE": str(roomy_limits(tmp, open_brackets=4 * count)),
               "LOG_LEVEL": "INFO"}
        try:
            daemon = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port,
                                               mqtt_url=broker.url, tmp=tmp, extra_env=env)
            prefix = daemon.prefix
            phases = []
            for name, restarts in (("baseline", 0), ("restarts", args.restarts)):
                phases.append(await run_phase(name, broker.url, prefix, count, args.rate,
                                              restarts, args.interval, args.settle, broker))
            rcs = []

            async def respawn() -> DaemonProcess:
                assert daemon is not None
                rcs.append(daemon.proc.returncode)
                logs.extend(daemon.logs)
                return await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port,
                                                 mqtt_url=broker.url, tmp=tmp, prefix=prefix,
                                                 extra_env=env)

            if args.burst:
                burst, daemon = await run_burst(daemon, respawn, broker.url, args.burst,
                                                args.burst_restarts, args.settle, broker)
                phases.append(burst)
            state = await tws.state()
            rcs.append(await daemon.terminate())
            logs.extend(daemon.logs)
            journal = await journaled(tmp / "journal.sqlite")
            dropped = sum("dropped" in line.lower() for line in broker.log_lines)
        finally:
            if daemon is not None:
                await daemon.kill()
            await stop_process(proc, tws)
            broker.stop()
    redelivered = Counter(e.get("proposal_id") for e in logs
                          if e.get("event") == "proposal_received")
    return {"profile": profile, "phases": phases, "state": state, "journal": journal,
            "redelivered": redelivered, "rcs": rcs, "dropped_notices": dropped}


def report(run: dict[str, Any]) -> bool:
    """Print one profile's table; True when nothing was lost or differed."""
    state, journal, redelivered = run["state"], run["journal"], run["redelivered"]
    print(f"\nbroker profile: {run['profile']}  (daemon exits {run['rcs']}; mosquitto "
          f"'messages are being dropped' notices: {run['dropped_notices']})")
    print(f"{'phase':<9} {'n':>5} {'approved':>8} {'rejected':>8} {'lost':>5} {'differ':>6} "
          f"{'journal2x':>9} {'orders2x':>8} {'missing':>7} {'repeats':>7} {'dup_in':>6} "
          f"{'republ':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for ph in run["phases"]:
        extra, missing = order_duplicates(state, ph)
        twice = sum(journal[p] > 1 for p in ph["pids"])
        dup_in = sum(redelivered[p] - 1 for p in ph["pids"] if redelivered[p] > 1)
        lat = ph["latencies"]
        p50, p99 = (percentile(lat, 0.50), percentile(lat, 0.99)) if lat else (float("nan"),) * 2
        print(f"{ph['name']:<9} {len(ph['pids']):>5} {ph['verdicts']['approved']:>8} "
              f"{ph['verdicts']['rejected']:>8} {len(ph['lost']):>5} {len(ph['differing']):>6} "
              f"{twice:>9} {extra:>8} {missing:>7} {ph['repeats']:>7} {dup_in:>6} "
              f"{ph['republished']:>6} {p50:>8.1f} {p99:>8.1f} "
              f"{max(lat, default=float('nan')):>8.1f}")
        codes = f"rejection codes: {dict(ph['codes'])}; " if ph["codes"] else ""
        mean = f"mean {statistics.fmean(lat):.1f} ms" if lat else "no decisions"
        print(f"{'':<9} {codes}agent reconnects: {ph['reconnects']}; {mean}")
    return not any(ph["lost"] or ph["differing"] for ph in run["phases"]) and \
        all(rc == 0 for rc in run["rcs"])


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--rate", type=float, default=10.0, help="proposals per second")
    ap.add_argument("--interval", type=float, default=0.8, help="seconds between restarts")
    ap.add_argument("--burst", type=int, default=1500,
                    help="proposals queued while the daemon is down (0: no burst phase)")
    ap.add_argument("--burst-restarts", type=int, default=2,
                    help="broker restarts while the burst waits for the daemon")
    ap.add_argument("--profile", choices=("shipped", "defaults", "both"), default="both")
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds to wait for the last decisions")
    args = ap.parse_args()
    binary = shutil.which(MOSQUITTO_BINARY) or shutil.which("mosquitto")
    if binary is None:
        print(f"mosquitto not found at {MOSQUITTO_BINARY}", file=sys.stderr)
        return 2
    count = max(1, int(args.rate * args.interval * (args.restarts + 1)))
    profiles = ("shipped", "defaults") if args.profile == "both" else (args.profile,)
    print(f"bench_mqtt_restarts  python {platform.python_version()}  {platform.machine()}  "
          f"{count} proposals per phase at {args.rate:g}/s, {args.restarts} restarts every "
          f"{args.interval:g} s; burst {args.burst} with {args.burst_restarts} restarts")
    ok = {}
    for profile in profiles:
        ok[profile] = report(await run_profile(profile, binary, args, count))
    print("\nrepeats = identical decisions received again; dup_in = proposals the daemon took in "
          "more than once (broker DUP redelivery or agent re-publish); republ = agent re-publishes")
    # the shipped profile must lose nothing; the defaults profile is the control
    return 0 if ok.get("shipped", True) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
