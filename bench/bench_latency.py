"""Open-loop latency of the daemon: publish -> entry placeOrder at the paper TWS, and -> the
decision back at the agent, at a fixed schedule of proposals per second.

    .venv/bin/python bench/bench_latency.py [--n 2000] [--rate 100] [--approve-every 20]
                                            [--tws process|inline] [--raw-n N] [--json OUT]
    .venv/bin/python bench/latency_trials.py --repeat 3 --n 3000 before=/tmp/base after=.

Open loop: proposal i is due at t0 + i / rate and its latency is measured from that scheduled
time, not from when it was actually sent, so a stall in the daemon (or in this process) shows up
in every proposal behind it instead of slowing the load. Every `approve-every`-th proposal is
approvable (its entry rests far below the market), the others are rejected for their loss, so
the IB legs stay inside the pacing of IB (the paper TWS's own pacing stays ON, 50 messages per
client per second, and the daemon's pacer keeps under it).

Real processes on loopback: mosquitto, the daemon (`python run.py`, JSON logs) and, by default
(`--tws process`), the paper TWS (bench/latency_tws.py: the same server as the tests' fixture,
its `on_place_order` hook stamping each placeOrder with perf_counter, CLOCK_MONOTONIC, the one
clock of every process, so the stamps are on the schedule's clock). `--tws inline` runs it in
THIS process instead, as this bench did at first: its work then competes with the bench client
for one GIL and inflates the figures that cross it (entry -> acks -> decision). Reported apart:
the what-if round trip (the what-if placeOrder at the paper TWS -> the entry placeOrder, i.e.
IB's answer plus the daemon's last checks) and publish -> what-if. Baseline in the same run: an MQTT publish -> receive round trip through the
same broker, at the same schedule.

Three trials of each, defaults (2000 at 100/s, 1 in 20 approvable), shared 2-CPU VM; median of
the trials (range):

    paper TWS          own process                  in this process
    MQTT baseline p50  1.76 ms (1.49-1.77)          1.65 ms (1.63-1.79)
    -> entry     p50   5.86 ms (5.28-6.21)          5.43 ms (5.26-5.53)
                 p99   14.3 ms (11.6-15.6)          9.9 ms (9.8-13.2)
                 max   18.2 ms (11.9-32.5)          11.8 ms (9.9-16.6)
    -> approved  p50   20.1 ms (17.9-21.4)          20.2 ms (19.6-22.1)
                 p99   45.9 ms (33.0-48.6)          36.6 ms (27.3-70.1)
                 max   60.0 ms (58.6-78.7)          70.3 ms (66.8-78.6)
    -> rejected  p50   3.91 ms (3.66-4.06)          3.97 ms (3.94-4.03)
    what-if round trip p50 2.44 ms (2.05-2.60)      2.16 ms (2.08-2.20)
    last leg -> decision p50 12.3 ms (10.5-13.5)    12.9 ms (12.1-13.5)

The difference is inside the noise between trials: at 100/s with 1 in 20 approved the paper
TWS's own work is small, and the approved decision's time is the daemon's (IB's acks of the
three legs, the journal's FULL commit, the publish: "last leg -> decision").

Stage by stage (the daemon's stamps, core/stamps.py, BRACKETGATE_STAMPS set by this bench; the
paper TWS's arrivals; each FULL commit split into: the write waiting for the writer thread
(`_ran`: its insert ran), the commit returning in the writer (`_committed`), the answer back on
the loop (`_journaled`)), and a bare SQLite FULL commit on the same disk in the same run. One
run, --n 3000, a quiet moment of a shared 2-CPU VM (bare commit p50 0.48 ms), at 722eb64+:

    due -> mqtt_rx 1.31 | proposal ran 0.59, committed 1.01, back 0.43 (the gate has it
    1.36 ms before that: the what-if is asked while it commits) | what-if out 0.02, at TWS 0.67,
    answered 0.47 | place requested 0.23 | intent ran 0.40, committed 0.38, back 0.14 | legs
    0.5 + 0.2, at TWS 0.9 | acks 0.03 + 0.32 + 0.63, woke 0.13 | to the bridge 1.21 | decision
    ran 0.47, committed 1.25, back 1.27 | out 0.41, at the agent 0.70   (p50s, ms)
    entry p50 6.28 / p99 24.5, approved p50 18.3 / p99 50.8, rejected p50 4.24 ms

Base d4bb777 vs wip/lat2 (switch interval + decision overlap + early offer), alternated, six
trials each of --n 3000 in two rounds (medians, range; the box loaded by other runs: the bare
commit's p50 0.4-5.7 ms): entry p50 11.0 (5.8-21.8) -> 9.2 (5.5-10.7) ms, p99 102 -> 71 ms;
approved p50 25.7 (15.6-49.7) -> 22.5 (15.5-25.6), p99 154 -> 95; rejected p50 7.5 -> 7.5.

The broker's own speed, in the same run (bench/latency_raw.py, `--raw-n`, default n /
approve-every): a raw client, the same IB library imported as is, its own client id, against
the same paper TWS process, doing the approved path's IB part at the approvals' rate, open
loop: a what-if (awaited), the same three legs (transmit chain, one OCA group, orderRef), until
IB acknowledged all three. The daemon's segments are printed beside the raw ones with their p50
ratio, and two floors: entry >= MQTT in + raw due -> entry; approved >= MQTT in + out + raw
due -> 3 acks. Both senders keep the schedule through bench/ticks.py (a thread sleeping to each
due time and waking the loop): with `asyncio.sleep` each send went out ~0.5-1 ms late (the
selector rounds its timeout up to a whole ms), which every figure from "due" carried.

Issue 9, round 3 (b5bfed4 -> wip/lat3), `bench/latency_trials.py --repeat 3 --n 3000`,
alternated, the box shared with two soak runs (load ~3.5 on 2 CPUs; bare FULL commit p50
0.6-0.7 ms), medians of 3 trials (p50s, ms):

    segment (raw client: before's / after's run)   before (ratio)   after (ratio)
    what-if sent -> answered          1.06 / 1.19      1.05 (0.92x)    1.11 (0.93x)
    what-if answered -> entry at TWS  0.74 / 0.75      1.95 (2.6x)     1.38 (1.8x)
    first leg sent -> 3 acks read     3.63 / 3.77      2.81 (0.77x)    2.33 (0.62x)
    entry p50 / p99                                   6.40 / 30.8      6.50 / 39.3
    approved p50 / p99                               17.94 / 68.6     16.98 / 76.3
    rejected p50                                      4.66             4.83

What-if and acks are the paper TWS and the library (the daemon's what-if is as fast as the
raw client's; its acks faster since adapters/ib_repr.py spares the library's Trade formatting,
which the raw client still pays). The intent's write (agents/staging.py) now overlaps the
what-if: what-if answered -> entry -0.57 ms, but its FULL commit is queued behind the
proposal's own, so it is often the entry's critical path (two fsyncs in a row from the
proposal's arrival); the whole-path p50/p99 moved within the trials' noise on this loaded box.
A second round on a quieter box (bare commit p50 0.3 ms), before vs the final wip/lat3, 3
trials each: entry p50 4.42 -> 4.16, p99 27.3 -> 28.3; approved p50 13.24 -> 11.64, p99 35.4 ->
35.3; rejected 3.22 -> 3.01; what-if answered -> entry 1.39 -> 0.96; first leg -> 3 acks 2.59
-> 2.16 (raw client 2.19 / 2.04).
Tried and reverted (slower, measured the same way): the gate's id look-up from a read-only
connection on the loop (the writer thread then waited for the GIL: mqtt_rx -> proposal_ran
0.5 -> 1.0 ms), and staging the intent after the what-if went out (what-if 1.05 -> 1.27 ms).
"""

from __future__ import annotations

import argparse
import bisect
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
from urllib.parse import urlsplit

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.daemon import DaemonProcess  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import (  # noqa: E402
    HOST, PaperTWSHandle, start_paper_tws, stop_paper_tws, stop_process)
from bench.benchkit import wide_limits  # noqa: E402
from bench.latency_raw import raw_brackets  # noqa: E402
from bench.ticks import ticks  # noqa: E402

LIMITS = wide_limits(per_trade_loss_limit=100.0)

PX = {"AAPL": 195.5, "MSFT": 357.0, "TSLA": 212.5, "SPY": 493.0}   # 15 % under the paper TWS's quotes: inside the entry band (20 %), and the entries rest


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def fmt(xs: list[float]) -> str:
    if not xs:
        return "(none)"
    return (f"p50 {statistics.median(xs):7.2f} ms   p90 {pct(xs, 90):7.2f} ms   "
            f"p99 {pct(xs, 99):7.2f} ms   max {max(xs):7.2f} ms   (n={len(xs)})")


def phases(logs: list[dict[str, Any]], approved: set[str]) -> dict[str, list[float]]:
    """Per approved proposal, the daemon's own time between its log lines (their timestamps):
    the decision -> the bracket placed (IB's acks) -> the intent acked in the journal."""
    from datetime import datetime

    at: dict[tuple[str, str], float] = {}
    for e in logs:
        pid, ev = e.get("proposal_id"), e.get("event")
        if pid in approved and ev in ("risk_decision", "bracket_placed", "journal.intent_state"):
            key = (pid, ev if ev != "journal.intent_state" else "intent " + str(e.get("new")))
            at.setdefault(key, datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp())
    out: dict[str, list[float]] = {}
    steps = (("risk_decision", "bracket_placed"), ("risk_decision", "intent acked"))
    names = {s for pair in steps for s in pair}
    found = {k[1] for k in at}
    for a, b in steps:
        if a in found and b in found and names:
            out[f"{a} -> {b}"] = [
                (at[(p, b)] - at[(p, a)]) * 1000 for p in approved if (p, a) in at and (p, b) in at]
    return out


# the approved path's stages in order: the bench's schedule, the daemon's stamps
# (core/stamps.py, BRACKETGATE_STAMPS), the paper TWS's arrivals (tws_*) and the bench's receive
STAGES = ("due", "mqtt_rx", "proposal_ran", "proposal_committed", "proposal_journaled", "whatif_asked", "whatif_sent", "tws_whatif",
          "whatif_answered", "place_requested", "intent_ran", "intent_committed", "intent_journaled", "leg0_sent", "tws_entry",
          "leg1_sent", "leg2_sent", "tws_last_leg", "ack0_read", "ack1_read", "ack2_read",
          "acks_woke", "placement_answered", "decision_at_bridge", "decision_ran",
          "decision_committed", "decision_journaled",
          "mqtt_out_decisions", "received")


def stage_table(at: dict[str, dict[str, float]]) -> list[str]:
    """p50/p99 of each step between consecutive stages present for a proposal, and of each
    stage from the schedule."""
    rows = []
    for a, b in zip(STAGES, STAGES[1:]):
        d = [(s[b] - s[a]) * 1000 for s in at.values() if a in s and b in s]
        c = [(s[b] - s["due"]) * 1000 for s in at.values() if b in s and "due" in s]
        if d:
            rows.append(f"    {a:>19} -> {b:<19} p50 {statistics.median(d):6.2f}  p99 "
                        f"{pct(d, 99):6.2f}   (from due: p50 {statistics.median(c):6.2f}  "
                        f"p99 {pct(c, 99):6.2f})  n={len(d)}")
    return rows


# (label, the daemon's segment, the raw client's segment): the same steps at IB, apart
RAW_PAIRS = (
    ("due -> what-if sent", ("due", "whatif_sent"), ("due", "whatif_sent")),
    ("what-if sent -> answered", ("whatif_sent", "whatif_answered"), ("whatif_sent", "whatif_answered")),
    ("what-if answered -> entry at TWS", ("whatif_answered", "tws_entry"), ("whatif_answered", "tws_entry")),
    ("entry at TWS -> stop at TWS", ("tws_entry", "tws_last_leg"), ("tws_entry", "tws_last_leg")),
    ("first leg sent -> 3 acks read", ("leg0_sent", "acks_woke"), ("leg0_sent", "acks_read")),
    ("what-if answered -> 3 acks read", ("whatif_answered", "acks_woke"), ("whatif_answered", "acks_read")),
    ("due -> entry at TWS", ("due", "tws_entry"), ("due", "tws_entry")),
    ("due -> 3 acks read", ("due", "acks_woke"), ("due", "acks_read")),
)


def _seg(at: dict[str, dict[str, float]], a: str, b: str) -> list[float]:
    return [(s[b] - s[a]) * 1000 for s in at.values() if a in s and b in s]


def raw_report(raw: dict[str, dict[str, float]], at: dict[str, dict[str, float]],
               base: list[float]) -> dict[str, list[float]]:
    """Print the raw client's figures and the daemon's as ratios to them (p50); returns the
    samples by name."""
    out: dict[str, list[float]] = {}
    print(f"  the broker's own speed: a raw client, same IB library, same paper TWS process, "
          f"no daemon (bench/latency_raw.py), n={len(raw)}:")
    for label, (da, db), (ra, rb) in RAW_PAIRS:
        r, d = _seg(raw, ra, rb), _seg(at, da, db)
        out["raw " + label], out["daemon " + label] = r, d
        ratio = (statistics.median(d) / statistics.median(r)) if r and d else float("nan")
        print(f"    raw    {label:32} {fmt(r)}")
        print(f"    daemon {label:32} {fmt(d)}   p50 ratio to raw {ratio:.2f}x")
    if base:
        b = statistics.median(base)
        r_entry, r_acks = _seg(raw, "due", "tws_entry"), _seg(raw, "due", "acks_read")
        d_entry = _seg(at, "due", "tws_entry")
        d_appr = _seg(at, "due", "received")
        if r_entry and r_acks and d_entry and d_appr:
            fe = b + statistics.median(r_entry)
            fa = 2 * b + statistics.median(r_acks)
            print(f"    floor: entry = MQTT in + raw due->entry = {fe:.2f} ms: daemon "
                  f"{statistics.median(d_entry):.2f} ms = {statistics.median(d_entry) / fe:.2f}x; "
                  f"approved = MQTT in + out + raw due->acks = {fa:.2f} ms: daemon "
                  f"{statistics.median(d_appr):.2f} ms = {statistics.median(d_appr) / fa:.2f}x")
    return out


def bare_commits(path: Path, n: int = 300) -> list[float]:
    """A bare SQLite FULL commit (WAL, one small row) on this disk, in ms: the fsync floor."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    out = []
    for i in range(n):
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 300,))
        conn.execute("COMMIT")
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.002)
    conn.close()
    return out


def body(i: int, pid: str, approvable: bool) -> bytes:
    sym = ("AAPL", "MSFT", "TSLA", "SPY")[i % 4]
    px = PX[sym]
    qty = 1 if approvable else 1000   # 1000 x 3 % of the price is past the per-trade loss limit
    return json.dumps({"proposal_id": pid, "symbol": sym, "side": "BUY", "quantity": qty,
                       "order_type": "LMT", "limit_price": px, "take_profit": round(px * 1.04, 2),
                       "stop_loss": round(px * 0.97, 2)}).encode()


async def open_loop(client: aiomqtt.Client, n: int, rate: float,
                    topic_body: Any) -> tuple[dict[str, float], float]:
    """Publish n messages at t0 + i / rate (each its own task: a slow PUBACK does not delay
    the next one); returns {key: scheduled time} and the worst lateness of a send."""
    loop = asyncio.get_running_loop()
    due: dict[str, float] = {}
    late = 0.0
    tasks = []
    async for i, at in ticks(time.perf_counter() + 0.05, n, rate):   # on time (bench/ticks.py)
        late = max(late, time.perf_counter() - at)
        key, topic, payload = topic_body(i)
        due[key] = at
        tasks.append(loop.create_task(client.publish(topic, payload, qos=1)))
    await asyncio.gather(*tasks)
    return due, late


async def spawn_tws(work: Path) -> tuple[asyncio.subprocess.Process, PaperTWSHandle]:
    """bench/latency_tws.py as a subprocess; its stamps land in work/tws-stamps.json at SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("latency_tws.py")),
        str(work / "tws-stamps.json"), stdout=asyncio.subprocess.PIPE,
        stderr=(work / "tws-stderr.log").open("wb"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        ready = json.loads(line)
        handle = PaperTWSHandle(HOST, int(ready["port"]), int(ready["control_port"]), pid=proc.pid)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise RuntimeError("paper TWS process did not start: "
                           + (work / "tws-stderr.log").read_text()[-2000:]) from None
    handle.extra["proc"] = proc
    return proc, handle


async def main(n: int, rate: float, approve_every: int, baseline_n: int, tws_mode: str,
               raw_n: int, json_out: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="bg-bench-lat-"))
    (work / "limits.toml").write_text(LIMITS)
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    broker.start()
    proc: asyncio.subprocess.Process | None = None
    if tws_mode == "inline":
        tws = await start_paper_tws()   # pacing ON: 50 messages per client per second
        assert tws.tws is not None
    else:
        proc, tws = await spawn_tws(work)   # same server and pacing, its own process
    entry_at: dict[str, float] = {}
    whatifs: list[float] = []   # ib_async sends a what-if without the orderRef: matched by time

    last_leg_at: dict[str, float] = {}    # the bracket's last leg (its stop) at the TWS

    def stamp(now: float, what_if: bool, parent_id: int, order_ref: str) -> None:
        if what_if:
            whatifs.append(now)
        elif parent_id == 0 and order_ref:
            entry_at.setdefault(order_ref, now)
        elif order_ref:
            last_leg_at[order_ref] = now

    if tws.tws is not None:
        tws.tws.on_place_order = lambda m: stamp(time.perf_counter(), m.what_if, m.parent_id,
                                                 m.order_ref)
    u = urlsplit(broker.url)
    run = uuid.uuid4().hex[:6]
    received: dict[str, tuple[float, dict[str, Any]]] = {}
    echoed: dict[str, float] = {}
    try:
        d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url,
                                      tmp=work, extra_env={"RISK_LIMITS_FILE": str(work / "limits.toml"),
                                                           "BRACKETGATE_STAMPS": str(work / "stamps.json")})
        try:
            async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                                      identifier=f"bench-lat-{run}",
                                      socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)) as c:
                await c.subscribe(f"{d.prefix}/decisions/+", qos=1)
                await c.subscribe(f"echo{run}/#", qos=1)

                async def read() -> None:
                    async for m in c.messages:
                        now = time.perf_counter()
                        raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        if m.topic.value.startswith(f"echo{run}/"):
                            echoed.setdefault(raw.decode(), now)
                            continue
                        dec = json.loads(raw)
                        received.setdefault(dec.get("proposal_id", ""), (now, dec))

                reader = asyncio.create_task(read())
                # warm-up: the first proposal of each symbol fetches its contract and quote
                for i in range(8):
                    pid = f"warm-{run}-{i}"
                    await c.publish(f"{d.prefix}/proposals/lat{i % 4}", body(i, pid, i < 4), qos=1)
                await asyncio.sleep(2.0)
                # baseline: the same schedule through the same broker, answered by no one
                echo_due, echo_late = await open_loop(
                    c, baseline_n, rate, lambda i: (f"e{i}", f"echo{run}/{i}", f"e{i}".encode()))
                await asyncio.sleep(1.0)
                fsync = await asyncio.to_thread(bare_commits, work / "bare.sqlite")
                await asyncio.sleep(0.5)
                # the broker's own speed: a raw client (same IB library, no daemon) doing the
                # approved path's IB part at the approvals' rate (bench/latency_raw.py)
                raw: dict[str, dict[str, float]] = {}
                if raw_n:
                    raw = await raw_brackets(tws.host, tws.port, PX, raw_n, rate / approve_every, run)
                    await asyncio.sleep(0.5)

                def proposal(i: int) -> tuple[str, str, bytes]:
                    pid = f"lat-{run}-{i}"
                    return pid, f"{d.prefix}/proposals/lat{i % 5}", body(i, pid, i % approve_every == 0)

                due, late = await open_loop(c, n, rate, proposal)
                deadline = time.perf_counter() + 15
                while len([p for p in due if p in received]) < n and time.perf_counter() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            rc = await d.terminate()
            logs = list(d.logs)
        health = await tws.get("/health")
    finally:
        if proc is None:
            await stop_paper_tws(tws)
        else:
            await stop_process(proc, tws)
        broker.stop()
    if proc is not None:   # the stamps, in their order of arrival
        for at, what_if, parent_id, order_ref in json.loads((work / "tws-stamps.json").read_text()):
            stamp(at, what_if, parent_id, order_ref)

    base = [(echoed[k] - t) * 1000 for k, t in echo_due.items() if k in echoed]
    approved = {p for p in due if p in received and received[p][1].get("verdict") == "approved"}
    others = [p for p in due if p in received and p not in approved]
    to_entry = [(entry_at[p] - due[p]) * 1000 for p in approved if p in entry_at]
    whatif_at: dict[str, float] = {}
    for p in approved:   # the last what-if between its schedule and its entry
        if p in entry_at:
            i = bisect.bisect_right(whatifs, entry_at[p]) - 1
            if i >= 0 and whatifs[i] >= due[p]:
                whatif_at[p] = whatifs[i]
    to_whatif = [(whatif_at[p] - due[p]) * 1000 for p in approved if p in whatif_at]
    whatif_rt = [(entry_at[p] - whatif_at[p]) * 1000 for p in approved if p in entry_at and p in whatif_at]
    dec_approved = [(received[p][0] - due[p]) * 1000 for p in approved]
    dec_other = [(received[p][0] - due[p]) * 1000 for p in others]
    verdicts: dict[str, int] = {}
    for p in due:
        if p in received:
            dec = received[p][1]
            v = dec.get("verdict", "?")
            if v != "approved":
                v += ":" + ",".join(r.get("code", "?") for r in dec.get("reasons", [])[:1])
            verdicts[v] = verdicts.get(v, 0) + 1
    print(f"bracketgate open-loop latency: {n} proposals at {rate:.0f}/s, every {approve_every}th "
          f"approvable (mosquitto + daemon subprocess + paper TWS with pacing ON, loopback;"
          f" paper TWS {'in this process' if tws_mode == 'inline' else 'in its own process'})")
    print(f"  verdicts {verdicts}; unanswered {n - sum(verdicts.values())}; "
          f"worst send lateness {late * 1000:.1f} ms (baseline {echo_late * 1000:.1f} ms)")
    print(f"  baseline MQTT publish -> receive      {fmt(base)}")
    print(f"  publish -> entry placeOrder at TWS    {fmt(to_entry)}")
    print(f"  publish -> approved decision back     {fmt(dec_approved)}")
    print(f"  publish -> rejected decision back     {fmt(dec_other)}")
    print(f"  apart: publish -> what-if at TWS      {fmt(to_whatif)}")
    print(f"  apart: what-if at TWS -> entry        {fmt(whatif_rt)}  (IB's answer + last checks)")
    legs = [(last_leg_at[p] - entry_at[p]) * 1000 for p in approved if p in entry_at and p in last_leg_at]
    after = [(received[p][0] - last_leg_at[p]) * 1000 for p in approved if p in last_leg_at]
    print(f"  apart: entry -> last leg at TWS       {fmt(legs)}")
    print(f"  apart: last leg at TWS -> decision    {fmt(after)}  (IB's acks, journal, publish)")
    if os.environ.get("BENCH_LAT_DUMP"):   # one approved proposal's daemon lines, for a look
        pick = sorted(approved)[len(approved) // 2] if approved else None
        for e in logs:
            if e.get("proposal_id") == pick or e.get("ref") == pick:
                print("   ", e.get("timestamp"), e.get("event"), {k: v for k, v in e.items()
                      if k in ("new", "old", "verdict", "logger")})
    for label, xs in phases(logs, approved).items():
        print(f"  daemon log: {label:25} {fmt(xs)}")
    if base:
        b = statistics.median(base)
        print(f"  p50 ratio to the baseline: entry {statistics.median(to_entry) / b if to_entry else float('nan'):.1f}x, "
              f"approved {statistics.median(dec_approved) / b if dec_approved else float('nan'):.1f}x, "
              f"rejected {statistics.median(dec_other) / b if dec_other else float('nan'):.1f}x")
    print(f"  baseline bare SQLite FULL commit (WAL, this disk, same run) {fmt(fsync)}")
    stamps_file = work / "stamps.json"
    if stamps_file.exists():
        at: dict[str, dict[str, float]] = {p: {"due": due[p], "received": received[p][0]}
                                           for p in approved}
        commits: list[float] = []   # the journal writer's FULL commits (when each returned)
        for pid, stage, t in json.loads(stamps_file.read_text()):
            if pid in at:
                at[pid].setdefault(stage, t)
            elif stage == "full_commit":
                commits.append(t)
        commits.sort()
        for s in at.values():   # the first FULL commit after each write ran: its commit
            for what in ("proposal", "intent", "decision"):
                if what + "_ran" in s:
                    i = bisect.bisect_left(commits, s[what + "_ran"])
                    if i < len(commits):
                        s[what + "_committed"] = commits[i]
        for p in approved:
            if p in entry_at:
                at[p]["tws_entry"] = entry_at[p]
            if p in whatif_at:
                at[p]["tws_whatif"] = whatif_at[p]
            if p in last_leg_at:
                at[p]["tws_last_leg"] = last_leg_at[p]
        print("  approved path, stage by stage (ms; daemon stamps core/stamps.py):")
        for row in stage_table(at):
            print(row)
    else:
        at = {}
    figures = {"mqtt_base": base, "entry": to_entry, "approved": dec_approved,
               "rejected": dec_other, "fsync": fsync}
    if raw:
        for ref, s in raw.items():
            if ref in entry_at:
                s["tws_entry"] = entry_at[ref]
            if ref in last_leg_at:
                s["tws_last_leg"] = last_leg_at[ref]
        figures.update(raw_report(raw, at, base))
    figures["stages"] = {f"{a}->{b}": [(s[b] - s[a]) * 1000 for s in at.values() if a in s and b in s]
                         for a, b in zip(STAGES, STAGES[1:])}
    if json_out:   # the raw samples, for a summary over trials (bench/latency_trials.py)
        Path(json_out).write_text(json.dumps(figures))
    print(f"  paper TWS pacing: error 100 sent {health['pacingErrors']}, dropped {health['pacingDropped']}")
    print(f"  daemon exit code on SIGTERM: {rc}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=100.0, help="proposals per second, open loop")
    ap.add_argument("--approve-every", type=int, default=20,
                    help="every k-th proposal is approvable (IB pacing: 4 messages per approval)")
    ap.add_argument("--baseline-n", type=int, default=500)
    ap.add_argument("--tws", choices=("process", "inline"), default="process",
                    help="the paper TWS in its own process (default) or in the bench's")
    ap.add_argument("--raw-n", type=int, default=None,
                    help="raw-client brackets (default n / approve-every; 0: none)")
    ap.add_argument("--json", default=None, help="write the samples there (JSON)")
    a = ap.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    from bracketgate.core.logs import configure_logging
    configure_logging("json", "WARNING")   # the in-process paper TWS: quiet
    logging.getLogger("ib_async").setLevel(logging.CRITICAL)   # the raw client's global cancel
    logging.getLogger("ib_insync").setLevel(logging.CRITICAL)
    raw_n = a.raw_n if a.raw_n is not None else max(20, a.n // a.approve_every)
    asyncio.run(main(a.n, a.rate, a.approve_every, a.baseline_n, a.tws, raw_n, a.json))
