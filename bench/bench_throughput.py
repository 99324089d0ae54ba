"""Sustained proposals/s through mosquitto: the daemon against a raw aiomqtt echo, same run.

    .venv/bin/python bench/bench_throughput.py [--count 6000] [--concurrency 200] [--trials 1]
                                               [--rounds 2]

Real processes on loopback: mosquitto, the paper TWS (`run.py sim`, its own process), the
daemon (`python run.py`, JSON logs) and the baseline, a tiny aiomqtt process that answers each
QoS 1 message on another topic (QoS 1, without awaiting each PUBACK in line: the broker's pace). Both get the same proposal payloads at the same
publish window; each proposal is rejected by the gate (per-trade loss), as ~99 % are in the
field. Printed: the sustained rate of each (answers between the 10th and 90th percentile of
arrival, so start-up and tail are left out), their ratio (the goal: >= 0.7), and CPU ms per
proposal of the daemon and of the echo process (utime + stime from /proc/<pid>/stat), and the
CPU ratio (daemon per proposal / echo per message: steadier than the wall-clock ratio on a
shared box, where both rates move with the other processes' load). Each trial starts both and
runs `--rounds` pairs of measured runs, echo and daemon back to back, the order alternating;
the medians are over every pair.
"""

from __future__ import annotations

import argparse
import asyncio
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
from urllib.parse import urlsplit

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.daemon import DaemonProcess  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import spawn_paper_tws, stop_process  # noqa: E402
from bench.benchkit import wide_limits  # noqa: E402

# every proposal is rejected for its loss (3 % of 150 > 1.0), after every other check ran
LIMITS = wide_limits(per_trade_loss_limit=1.0)

# the baseline: answer each message on another topic, nothing else
ECHO = r"""
import asyncio, sys, aiomqtt
host, port, inp, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
async def main():
    async with aiomqtt.Client(host, port, identifier="bench-echo", max_inflight_messages=64) as c:
        await c.subscribe(inp + "/+", qos=1)
        print("ready", flush=True)
        c.pending_calls_threshold = 10**6
        pending = set()
        async for m in c.messages:  # no PUBACK awaited in line: as fast as the broker goes
            t = asyncio.ensure_future(c.publish(out + "/" + m.topic.value.rsplit("/", 1)[1],
                                                m.payload, qos=1))
            pending.add(t)
            t.add_done_callback(pending.discard)
asyncio.run(main())
"""

PX = {"AAPL": 195.5, "MSFT": 357.0, "TSLA": 212.5, "SPY": 493.0}   # 15 % under the paper TWS's quotes: inside the entry band (20 %), and the entries rest


def payloads(count: int, run: str) -> list[bytes]:
    out = []
    for i in range(count):
        sym = ("AAPL", "MSFT", "TSLA", "SPY")[i % 4]
        px = PX[sym]
        out.append(('{"proposal_id":"tp-%s-%d","symbol":"%s","side":"BUY","quantity":1,'
                    '"order_type":"LMT","limit_price":%s,"take_profit":%s,"stop_loss":%s}'
                    % (run, i, sym, px, round(px * 1.04, 2), round(px * 0.97, 2))).encode())
    return out


def cpu_ms(pid: int, tid: int | None = None) -> float:
    """CPU ms (utime + stime) of a process, or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def drive(url: str, inp: str, out: str, bodies: list[bytes], agents: int,
                concurrency: int, pid: int) -> dict[str, Any]:
    """Publish every body to {inp}/a{i % agents}, count answers on {out}/+; rates and CPU."""
    u = urlsplit(url)
    arrivals: list[float] = []
    done = asyncio.Event()
    async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                              identifier=f"bench-drv-{uuid.uuid4().hex[:6]}",
                              socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)) as c:
        await c.subscribe(f"{out}/+", qos=1)

        async def read() -> None:
            async for _ in c.messages:
                arrivals.append(time.perf_counter())
                if len(arrivals) >= len(bodies):
                    done.set()

        reader = asyncio.create_task(read())
        sem = asyncio.Semaphore(concurrency)

        async def send(i: int, body: bytes) -> None:
            async with sem:
                await c.publish(f"{inp}/a{i % agents}", body, qos=1)

        cpu0, loop0 = cpu_ms(pid), cpu_ms(pid, pid)   # the process; its main thread (the loop)
        t0 = time.perf_counter()
        await asyncio.gather(*(send(i, b) for i, b in enumerate(bodies)))
        try:
            await asyncio.wait_for(done.wait(), 120)
        except TimeoutError:
            pass
        t1 = time.perf_counter()
        cpu1, loop1 = cpu_ms(pid), cpu_ms(pid, pid)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    n = len(arrivals)
    lo, hi = arrivals[n // 10], arrivals[(n * 9) // 10 - 1]
    sustained = ((n * 9) // 10 - n // 10 - 1) / (hi - lo) if hi > lo else float("nan")
    return {"answered": n, "overall": n / (t1 - t0), "sustained": sustained,
            "cpu_ms_per": (cpu1 - cpu0) / max(1, n), "loop_ms_per": (loop1 - loop0) / max(1, n)}


async def trial(count: int, agents: int, concurrency: int, warmup: int, rounds: int,
                py_spy: str | None = None) -> dict[str, Any]:
    """One broker, paper TWS, echo and daemon; then `rounds` pairs of measured runs, echo and
    daemon back to back, the order alternating (even rounds echo first, odd daemon first) so
    that a drift of the shared box's load favours neither."""
    work = Path(tempfile.mkdtemp(prefix="bg-bench-tp-"))
    (work / "limits.toml").write_text(LIMITS)
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    broker.start()
    proc, tws = await spawn_paper_tws()
    u = urlsplit(broker.url)
    run = uuid.uuid4().hex[:6]
    res: dict[str, Any] = {"pairs": []}
    echo = d = None
    try:
        echo = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ECHO, u.hostname or "127.0.0.1", str(u.port), f"echo{run}/in",
            f"echo{run}/out", stdout=asyncio.subprocess.PIPE)
        assert echo.stdout is not None
        await asyncio.wait_for(echo.stdout.readline(), 10)
        d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url,
                                      tmp=work, extra_env={"RISK_LIMITS_FILE": str(work / "limits.toml"),
                                                           "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO")})
        pfx = d.prefix
        assert d.proc.pid is not None and echo.pid is not None
        sides = {"echo": (f"echo{run}/in", f"echo{run}/out", echo.pid),
                 "daemon": (f"{pfx}/proposals", f"{pfx}/decisions", d.proc.pid)}
        for name, (inp, out, pid) in sides.items():
            await drive(broker.url, inp, out, payloads(warmup, f"w{run}{name}"), agents,
                        concurrency, pid)
        for r in range(rounds):
            pair: dict[str, Any] = {}
            for name in (("echo", "daemon") if r % 2 == 0 else ("daemon", "echo")):
                inp, out, pid = sides[name]
                spy = None
                if py_spy and name == "daemon" and r == 0:   # a profile of a measured part
                    spy = await asyncio.create_subprocess_exec(
                        str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                        str(pid), "--format", "raw", "--rate", "250", "--threads",
                        "--output", py_spy, *os.environ.get("PY_SPY_ARGS", "").split(),
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL)
                    await asyncio.sleep(1.0)
                pair[name] = await drive(broker.url, inp, out, payloads(count, f"{run}r{r}"),
                                         agents, concurrency, pid)
                if spy is not None:
                    spy.send_signal(2)
                    await spy.wait()
            res["pairs"].append(pair)
    finally:
        if echo is not None:
            echo.terminate()
            await echo.wait()
        if d is not None:
            res["rc"] = await d.terminate()
            await asyncio.wait_for(d._reader, 10)   # every line read
            res["rejected"] = sum(1 for e in d.logs if e.get("event") == "risk_decision"
                                  and e.get("verdict") == "rejected")
            closed = [e for e in d.logs if e.get("event") == "journal.closed"]
            res["journal"] = closed[-1] if closed else {}
        await stop_process(proc, tws)
        broker.stop()
    return res


async def main(count: int, agents: int, concurrency: int, trials: int, warmup: int,
               rounds: int, py_spy: str | None) -> None:
    results = [await trial(count, agents, concurrency, warmup, rounds, py_spy)
               for _ in range(trials)]
    pairs = [p for r in results for p in r["pairs"]]
    print(f"bracketgate throughput: {count} rejected proposals from {agents} agents, "
          f"{concurrency} publishes in flight, {trials} trial(s) x {rounds} round(s), echo and "
          "daemon back to back in each, order alternating (mosquitto, paper TWS, daemon, echo: "
          "each its own process, loopback)")
    for i, r in enumerate(results):
        for j, p in enumerate(r["pairs"]):
            e, d = p["echo"], p["daemon"]
            print(f"  trial {i + 1} round {j + 1}: echo {e['sustained']:7.0f}/s ({e['answered']} "
                  f"answered, {e['cpu_ms_per']:.3f} ms CPU each)   daemon {d['sustained']:7.0f}/s "
                  f"({d['answered']} answered, {d['cpu_ms_per']:.3f} ms CPU each)   "
                  f"ratio {d['sustained'] / e['sustained']:.2f}   CPU ratio "
                  f"{d['cpu_ms_per'] / e['cpu_ms_per']:.2f}")
        j = r.get("journal", {})
        print(f"  trial {i + 1}: gate rejections logged {r.get('rejected')}   exit {r.get('rc')}"
              f"   journal: {j.get('ops')} operations in {j.get('batches')} transactions, "
              f"{j.get('full_commits')} of them FULL")
    ratio = statistics.median(p["daemon"]["sustained"] / p["echo"]["sustained"] for p in pairs)
    cpu_ratio = statistics.median(p["daemon"]["cpu_ms_per"] / p["echo"]["cpu_ms_per"]
                                  for p in pairs)
    ratios = sorted(p["daemon"]["sustained"] / p["echo"]["sustained"] for p in pairs)
    loop = statistics.median(p["daemon"]["loop_ms_per"] for p in pairs)
    print(f"  daemon CPU per proposal by thread (medians): the event loop {loop:.3f} ms, the "
          f"others (journal writer, ...) "
          f"{statistics.median(p['daemon']['cpu_ms_per'] for p in pairs) - loop:.3f} ms")
    print(f"  median of {len(pairs)} pairs: daemon/echo sustained ratio {ratio:.2f} (goal >= 0.7; "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f}); daemon CPU "
          f"{statistics.median(p['daemon']['cpu_ms_per'] for p in pairs):.3f} ms per proposal, "
          f"echo {statistics.median(p['echo']['cpu_ms_per'] for p in pairs):.3f} ms per "
          f"message: CPU ratio {cpu_ratio:.2f} (daemon CPU per proposal / echo CPU per message)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=6000)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=200, help="publishes in flight")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="measured echo/daemon pairs per trial")
    ap.add_argument("--warmup", type=int, default=500, help="proposals sent first, not counted")
    ap.add_argument("--py-spy", metavar="FILE", help="profile the daemon's first measured run "
                    "with py-spy (pip install py-spy; not a requirement) into FILE, raw stacks "
                    "(more py-spy options in $PY_SPY_ARGS, e.g. --gil)")
    a = ap.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)   # aiomqtt: "There are N pending publish calls"
    asyncio.run(main(a.count, a.agents, a.concurrency, a.trials, a.warmup, a.rounds, a.py_spy))
