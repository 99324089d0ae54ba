"""Two daemons (two IB accounts) x 50 agents on ONE mosquitto, against one daemon alone, same run.

    .venv/bin/python bench/bench_two_daemons.py [--agents 50] [--per-agent 40] [--window 2]
                                                [--rate 40] [--seconds 8] [--trials 3]

Real processes on loopback (tests/fixtures/two_daemons.py): mosquitto, two paper TWS processes
(accounts DU1111111, DU2222222), two daemons with their own prefix, journal and client ids.
Each daemon's agents live in a load process of their own (`--drive`, this file): 50 aiomqtt
clients, one per agent id, so the load generator is the same whether one or both daemons are
driven. Each proposal is rejected by the gate for its loss (per_trade_loss_limit = 1) after
every other check ran, as most are in the field, so the figures are the gate's path (MQTT in,
journal, checks, decision out), not IB's order pacing.

Three configurations, one after another on the same processes: A alone, B alone, A and B at
once (--trials rounds, the alone ones in alternating order; medians printed). Each runs
  throughput  closed loop: every agent keeps --window proposals in flight, --per-agent each;
              sustained decisions/s (10th..90th percentile of arrivals) and the loop's latency;
  latency     open loop: --rate proposals/s per daemon spread over its agents for --seconds;
              publish (scheduled time) -> decision p50 / p90 / p99.
Printed per daemon, with its ratio to the same daemon alone (1.00 = no interference), and the
CPU ms per proposal of each daemon. On a shared 2-core machine the ratios are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchkit import wide_limits  # noqa: E402

# every proposal rejected for its loss (3 % of the entry > 1.0), after every other check ran
LIMITS = wide_limits(per_trade_loss_limit=1.0)
PX = {"AAPL": 195.5, "MSFT": 357.0, "TSLA": 212.5, "SPY": 493.0}   # 15 % under the quotes: in band


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def body(pid: str, i: int) -> bytes:
    sym = ("AAPL", "MSFT", "TSLA", "SPY")[i % 4]
    px = PX[sym]
    return ('{"proposal_id":"%s","symbol":"%s","side":"BUY","quantity":1,"order_type":"LMT",'
            '"limit_price":%s,"take_profit":%s,"stop_loss":%s}'
            % (pid, sym, px, round(px * 1.04, 2), round(px * 0.97, 2))).encode()


# =============================================================================== load process


class Agent:
    """One agent id, one MQTT connection: publishes proposals, resolves them by decision."""

    def __init__(self, host: str, port: int, prefix: str, agent_id: str) -> None:
        import aiomqtt

        self.prefix, self.agent_id = prefix, agent_id
        self.client = aiomqtt.Client(host, port, identifier=f"bench-{prefix}-{agent_id}",
                                     socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.arrivals: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.__aenter__()
        await self.client.subscribe(f"{self.prefix}/decisions/{self.agent_id}", qos=1)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for m in self.client.messages:
            t = time.perf_counter()
            raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            pid = json.loads(raw).get("proposal_id")
            fut = self.waiting.pop(pid, None)
            if fut is not None and not fut.done():
                self.arrivals.append(t)
                fut.set_result(t)

    async def propose(self, pid: str, i: int) -> float:
        """Publish; the decision's arrival time (perf_counter)."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[pid] = fut
        await self.client.publish(f"{self.prefix}/proposals/{self.agent_id}", body(pid, i), qos=1)
        return await asyncio.wait_for(fut, 60)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)


async def drive(a: argparse.Namespace) -> None:
    """--drive: connect the agents, say `ready`, wait for `go` on stdin, run both phases,
    print one JSON line of results."""
    agents = [Agent("127.0.0.1", a.port, a.drive, f"agent{i:02d}") for i in range(a.agents)]
    await asyncio.gather(*(ag.start() for ag in agents))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    run = uuid.uuid4().hex[:6]
    cpu0 = time.process_time()

    # ---- throughput: closed loop, window in flight per agent
    loop_lat: list[float] = []

    async def worker(ag: Agent, w: int) -> None:
        for k in range(w, a.per_agent, a.window):
            t = time.perf_counter()
            got = await ag.propose(f"tp-{run}-{ag.agent_id}-{k}", k)
            loop_lat.append((got - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(ag, w) for ag in agents for w in range(a.window)))
    t1 = time.perf_counter()
    arrivals = sorted(t for ag in agents for t in ag.arrivals)
    n = len(arrivals)
    lo, hi = arrivals[n // 10], arrivals[(n * 9) // 10 - 1]
    sustained = ((n * 9) // 10 - n // 10 - 1) / (hi - lo) if hi > lo else float("nan")

    # ---- latency: open loop, --rate per daemon over all its agents
    lat: list[float] = []
    gap = len(agents) / a.rate          # each agent's interval
    count = int(a.rate * a.seconds / len(agents))
    start = time.perf_counter() + 0.2

    async def paced(ag: Agent, j: int) -> None:
        for k in range(count):
            due = start + (k + j / len(agents)) * gap
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            got = await ag.propose(f"lat-{run}-{ag.agent_id}-{k}", k)
            lat.append((got - due) * 1000)

    await asyncio.gather(*(paced(ag, j) for j, ag in enumerate(agents)))
    out = {"answered": n, "overall": n / (t1 - t0), "sustained": sustained,
           "loop_p50": statistics.median(loop_lat), "lat_p50": statistics.median(lat),
           "lat_p90": pct(lat, 90), "lat_p99": pct(lat, 99), "lat_n": len(lat),
           "driver_cpu_s": time.process_time() - cpu0}
    await asyncio.gather(*(ag.stop() for ag in agents))
    print(json.dumps(out), flush=True)


# =============================================================================== orchestration


async def run_config(sides: list[Any], a: argparse.Namespace, port: int) -> dict[str, Any]:
    """Drive the daemons of `sides` at once (one load process each); results per side name."""
    procs = []
    for s in sides:
        p = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--drive", s.prefix, "--port", str(port),
            "--agents", str(a.agents), "--per-agent", str(a.per_agent), "--window", str(a.window),
            "--rate", str(a.rate), "--seconds", str(a.seconds),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        procs.append(p)
    for p in procs:
        assert p.stdout is not None
        line = await asyncio.wait_for(p.stdout.readline(), 60)
        assert line.strip() == b"ready", line
    cpu0 = {s.name: cpu_ms(s.d.proc.pid) for s in sides}
    for p in procs:            # both go together
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        await p.stdin.drain()
    results = {}
    for s, p in zip(sides, procs):
        out, _ = await asyncio.wait_for(p.communicate(), 600)
        res = json.loads(out.decode().strip().splitlines()[-1])
        results[s.name] = res
    for s in sides:
        total = results[s.name]["answered"] + results[s.name]["lat_n"]
        results[s.name]["daemon_cpu_ms_per"] = (cpu_ms(s.d.proc.pid) - cpu0[s.name]) / max(1, total)
    return results


async def main(a: argparse.Namespace) -> None:
    from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer
    from tests.fixtures.two_daemons import TwoAccounts

    work = Path(tempfile.mkdtemp(prefix="bg-bench-two-"))
    (work / "limits.toml").write_text(LIMITS)
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    broker.start()
    try:
        async with TwoAccounts(broker.url, work, extra_env={
                "RISK_LIMITS_FILE": str(work / "limits.toml"),
                "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO")}) as two:
            a_side, b_side = two.sides
            # warm-up: every contract's quote subscribed, code paths hot, on both
            warm = argparse.Namespace(**{**vars(a), "per_agent": 4, "window": 1, "rate": 50.0,
                                         "seconds": 1.0})
            await run_config([a_side, b_side], warm, broker.port)
            alones: list[dict[str, Any]] = []
            boths: list[dict[str, Any]] = []
            for t in range(a.trials):   # the alone runs in alternating order (warm-up effects)
                order = [a_side, b_side] if t % 2 == 0 else [b_side, a_side]
                alone_t: dict[str, Any] = {}
                for side in order:
                    alone_t.update(await run_config([side], a, broker.port))
                alones.append(alone_t)
                boths.append(await run_config([a_side, b_side], a, broker.port))
            alone, both = medians(alones), medians(boths)
        rcs = [s.d.proc.returncode for s in two.sides]
    finally:
        broker.stop()
    report(a, alone, both, rcs)


def medians(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Per side, the median of each figure over the trials."""
    return {name: {k: statistics.median(t[name][k] for t in trials) for k in trials[0][name]}
            for name in trials[0]}


def report(a: argparse.Namespace, alone: dict[str, Any], both: dict[str, Any], rcs: list[Any]) -> None:
    inflight = a.agents * a.window
    print(f"bracketgate: 2 daemons (2 accounts) x {a.agents} agents on ONE mosquitto vs one daemon "
          f"alone, same run; rejected proposals (per-trade loss, every check run); each daemon's "
          f"load from its own process of {a.agents} MQTT clients")
    print(f"  throughput: closed loop, {inflight} in flight per daemon, {a.agents * a.per_agent} "
          f"proposals; latency: open loop {a.rate:g}/s per daemon for {a.seconds:g} s; "
          f"medians of {a.trials} trial(s)")
    hdr = (f"  {'':14} {'sustained/s':>12} {'loop p50 ms':>12} {'lat p50':>8} {'p90':>8} "
           f"{'p99 ms':>8} {'CPU ms/prop':>12}")
    print(hdr)

    def row(label: str, r: dict[str, Any]) -> None:
        print(f"  {label:14} {r['sustained']:12.0f} {r['loop_p50']:12.1f} {r['lat_p50']:8.1f} "
              f"{r['lat_p90']:8.1f} {r['lat_p99']:8.1f} {r['daemon_cpu_ms_per']:12.3f}")

    for name in ("a", "b"):
        row(f"{name.upper()} alone", alone[name])
    for name in ("a", "b"):
        row(f"{name.upper()} with other", both[name])
    for name in ("a", "b"):
        x, y = both[name], alone[name]
        print(f"  ratio {name.upper()} with/alone: throughput {x['sustained'] / y['sustained']:.2f}, "
              f"loop latency p50 {x['loop_p50'] / y['loop_p50']:.2f}, open-loop latency p50 "
              f"{x['lat_p50'] / y['lat_p50']:.2f} p99 {x['lat_p99'] / y['lat_p99']:.2f}")
    total = both["a"]["sustained"] + both["b"]["sustained"]
    single = statistics.mean([alone["a"]["sustained"], alone["b"]["sustained"]])
    print(f"  both together: {total:.0f}/s = {total / single:.2f}x one daemon alone "
          f"(machine: {os.cpu_count()} CPUs, shared); daemons' exit codes on SIGTERM: {rcs}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=50, help="agents per daemon")
    ap.add_argument("--per-agent", type=int, default=40, help="throughput proposals per agent")
    ap.add_argument("--window", type=int, default=2, help="proposals in flight per agent")
    ap.add_argument("--rate", type=float, default=40.0, help="open-loop proposals/s per daemon")
    ap.add_argument("--seconds", type=float, default=8.0, help="open-loop duration")
    ap.add_argument("--trials", type=int, default=3, help="rounds of (A alone, B alone, both)")
    ap.add_argument("--drive", metavar="PREFIX", help=argparse.SUPPRESS)   # the load process
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    asyncio.run(drive(args) if args.drive else main(args))
