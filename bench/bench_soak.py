"""Soak: the daemon's memory while proposals flow, the journal it leaves, and a restart on it.

    .venv/bin/python bench/bench_soak.py                  # 20k proposals through the daemon
    .venv/bin/python bench/bench_soak.py --n 1000000 --approve-every 25   # the 1M soak (~1 h)
    .venv/bin/python bench/bench_soak.py --build 1000000  # restart on a 1M-proposal journal
                                                          # written through the Journal API
    .venv/bin/python bench/bench_soak.py --build 1000000 --reuse FILE   # ... built before

Real processes on loopback: mosquitto, the daemon (`python run.py`), the paper TWS in this
process WITH its pacing. 1 in `--approve-every` proposals is approved, the rest rejected (a
quantity past max_position_units). Of the approved, 1 in `--fill-every` is filled: the flow's
market swings every symbol 0.6 up and down every half second, the entry fills on a down swing and
the take-profit or (half of them) the stop on the next one, OCA cancelling the other; the others
rest far below the market with cancel_entry_after_s=1 and are cancelled at IB a second later.
The paper TWS's pacing (50 messages/s, the daemon's budget 45) caps approvals near 11 brackets/s,
so 1 in 10 approved would take ~2.5 h for 1M proposals; 1 in 25 takes about one hour.
Up to `--window` proposals are in flight (closed loop on the decisions: this is a memory soak,
not a latency figure). The daemon's RSS (/proc/PID/status VmRSS) is printed every 10k as a
curve; then the journal's size and bytes per proposal; then the daemon is restarted on that
journal and timed to `ready` (its own startup_ms), against a restart on an empty journal in the
same run (the baseline).

--ib-orders K[,K2...] then leaves K cancelled orders at the paper TWS (what a restart after the
flow meets: the soak's paper TWS still held its 35,589 orders, which the IB library reads back as
completed orders) and times the restart again (--trials, medians), on a new journal (its first
start reviews every completed order: adapters/ib_startup.py) and on the big one.

--build N skips the flow: it writes N proposals straight through the Journal API (a proposal,
its decision and the delivery record; 10 % with an intent, finished) into a fresh file, then
times the daemon's restart on it against the empty baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt  # noqa: E402

from bracketgate.core.memdump import rss_kib  # noqa: E402
from tests.fixtures.daemon import DaemonProcess  # noqa: E402
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
max_position_units = 10000.0
max_position_notional = 1e12
max_order_notional = 1e12
max_gross_exposure_pct = 100000.0
max_net_exposure_pct = 100000.0
max_proposals_per_s = 5000.0
proposal_burst = 5000
max_order_msgs_per_s = 45.0
min_reward_risk = 0.5

[agent]
loss_limit = 1e12
exposure_limit = 1e15
max_open_brackets = 100000
max_proposals_per_s = 5000.0
proposal_burst = 5000
max_order_share_pct = 100.0
"""

SYMBOLS = ("AAPL", "MSFT", "TSLA", "SPY")
PRICE = {"AAPL": 207.0, "MSFT": 378.0, "TSLA": 225.0, "SPY": 522.0}   # 10 % under the sim
SIM = {"AAPL": 230.0, "MSFT": 420.0, "TSLA": 250.0, "SPY": 580.0}     # the paper TWS's own
SWING = 0.6     # the flow's market: each symbol swings SIM +- SWING every half second


def proposal(i: int, approve_every: int, fill_every: int = 0) -> dict:
    """Rejected (a quantity past max_position_units) unless i % approve_every == 0. An approved
    one rests 10 % under the market and is cancelled a second later, or (every fill_every-th
    approved one, with the swinging market of `swing`) is filled: its entry on a down swing,
    then its take-profit or stop on the next swing (OCA cancels the other)."""
    sym = SYMBOLS[i % 4]
    approved = i % approve_every == 0
    k = i // approve_every
    if approved and fill_every and k % fill_every == 0:
        mid = SIM[sym]   # half of them with the stop inside the down swing: stopped out
        stop = mid - (0.5 if (k // fill_every) % 2 else 0.8)
        return {"proposal_id": f"soak-{i}-{uuid.uuid4().hex[:6]}", "symbol": sym, "side": "BUY",
                "quantity": 1, "order_type": "LMT", "limit_price": round(mid - 0.1, 2),
                "take_profit": round(mid + 0.5, 2), "stop_loss": round(stop, 2),
                "cancel_entry_after_s": 3.0}
    px = PRICE[sym]
    p = {"proposal_id": f"soak-{i}-{uuid.uuid4().hex[:6]}", "symbol": sym, "side": "BUY",
         "quantity": 1 if approved else 100000, "order_type": "LMT",   # below the market: rests
         "limit_price": px, "take_profit": round(px * 1.04, 2), "stop_loss": round(px * 0.97, 2)}
    if approved:
        p["cancel_entry_after_s"] = 1.0
    return p


async def swing(tws, stop: asyncio.Event) -> None:
    """The market the filled brackets live in: every symbol at SIM - SWING, then SIM + SWING,
    every half second (an entry fills on the way down, its exits on the next swing)."""
    up = False
    while not stop.is_set():
        up = not up
        for sym in SYMBOLS:
            await tws.set_price(sym, round(SIM[sym] + (SWING if up else -SWING), 2))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


def journal_files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def spawn(tws, broker, work: Path, env: dict[str, str], timeout: float) -> DaemonProcess:
    """The daemon, ready; killed by its PID when it does not get there."""
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url,
                                  tmp=work, extra_env=env, wait_ready=False)
    try:
        await d.wait_log(lambda e: e.get("event") == "ready", timeout=timeout)
    except BaseException:
        await d.kill()
        raise
    return d


def slowest_steps(logs: list[dict], top: int = 5) -> str:
    """The widest gaps between the daemon's consecutive log lines up to `ready` (ms, the line
    that ends each gap): where a start-up spends its time."""
    stamps = []
    for e in logs:
        try:
            stamps.append((datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")),
                           str(e.get("event"))))
        except (KeyError, ValueError):
            continue
        if e.get("event") == "ready":
            break
    gaps = sorted(((b[0] - a[0]).total_seconds() * 1000, f"{a[1]} -> {b[1]}")
                  for a, b in zip(stamps, stamps[1:]))[-top:]
    return ", ".join(f"{name} {ms:.0f} ms" for ms, name in reversed(gaps))


async def restart_ms(tws, broker, work: Path, journal: Path) -> tuple[float, float]:
    """(daemon's own startup_ms to ready, wall ms from spawn) on `journal`."""
    t0 = time.perf_counter()
    d = await spawn(tws, broker, work, {"RISK_LIMITS_FILE": str(work / "limits.toml"),
                                        "JOURNAL_PATH": str(journal)}, 600)
    wall = (time.perf_counter() - t0) * 1000
    ready = next(e for e in d.logs if e.get("event") == "ready")
    restored = next((e for e in d.logs if e.get("event") == "journal_restored"), {})
    completed = next((e for e in d.logs if e.get("event") == "ib_completed_orders"), {})
    await d.terminate()
    print(f"    slowest steps to ready: {slowest_steps(d.logs)}")
    print(f"    restored: {json.dumps({k: v for k, v in restored.items() if k not in ('event', 'timestamp', 'level', 'logger')})}")
    if completed:   # what IB's completed orders cost this start (adapters/ib_startup.py)
        print(f"    ib_completed_orders: {json.dumps({k: v for k, v in completed.items() if k in ('why', 'wanted', 'kept', 'compact', 'ms')})}")
    return float(ready["startup_ms"]), wall


async def flow(n: int, window: int, approve_every: int, fill_every: int, tws, broker,
               work: Path, journal: Path, memdump_every: int = 0,
               daemon_env: dict[str, str] | None = None) -> None:
    d = await spawn(tws, broker, work, {"RISK_LIMITS_FILE": str(work / "limits.toml"),
                                        "JOURNAL_PATH": str(journal), **(daemon_env or {})}, 30)
    try:   # the daemon is stopped by its PID whatever happens to the flow
        d.logs.clear()
        pid = d.proc.pid
        verdicts: dict[str, int] = {}
        got = asyncio.Event()
        done = 0
        free = asyncio.Semaphore(window)
        curve: list[tuple[int, int, float]] = []
        host, port = broker.url.rsplit("//", 1)[1].split(":")
        async with aiomqtt.Client(hostname=host, port=int(port),
                                  identifier=f"soak-{uuid.uuid4().hex[:6]}") as client:
            await client.subscribe(f"{d.prefix}/decisions/#", qos=1)
            await client.subscribe(f"{d.prefix}/orders/#", qos=1)
            legs: dict[str, int] = {}      # fills by leg, cancelled orders by leg
            cancelled: set[int] = set()

            async def read() -> None:
                nonlocal done
                async for msg in client.messages:
                    dec = json.loads(msg.payload)
                    if "/orders/" in str(msg.topic):
                        if dec.get("type") == "fill":
                            key = f"fill:{dec.get('leg')}"
                        elif (dec.get("status") in ("Cancelled", "ApiCancelled")
                              and dec.get("order_id") not in cancelled):
                            cancelled.add(dec.get("order_id"))
                            key = f"cancelled:{dec.get('leg')}"
                        else:
                            continue
                        legs[key] = legs.get(key, 0) + 1
                        continue
                    v = "/".join([dec.get("verdict", "?")] + [r.get("code", "?") for r in
                                                              dec.get("reasons") or ()])
                    verdicts[v] = verdicts.get(v, 0) + 1
                    done += 1
                    free.release()
                    got.set()

            reader = asyncio.create_task(read())
            stop_swing = asyncio.Event()
            swinger = asyncio.create_task(swing(tws, stop_swing)) if fill_every else None
            t0 = time.perf_counter()
            curve.append((0, rss_kib(pid), 0.0))
            if memdump_every:   # the ready daemon's own dump: what the warm-up adds is diffed to it
                d.proc.send_signal(signal.SIGUSR2)
            for i in range(n):
                await free.acquire()
                await client.publish(f"{d.prefix}/proposals/soak{i % 5}",
                                     json.dumps(proposal(i, approve_every, fill_every)), qos=1)
                if (i + 1) % 10_000 == 0:
                    for e in d.logs:   # a SIGUSR2 dump asked for at the last 10k (--memdump-every)
                        if e.get("event") in ("memory_dump", "memory_types", "memory_top",
                                              "memory_holders", "memory_books"):
                            print("    " + json.dumps({k: v for k, v in e.items()
                                                       if k not in ("timestamp", "logger", "level")}))
                    if memdump_every and (i + 1) % memdump_every == 0:
                        d.proc.send_signal(signal.SIGUSR2)   # printed with the next 10k line
                    pruned = [e for e in d.logs if e.get("event") == "ib_trades_pruned"]
                    books = (f"  IB books: {sum(e.get('trades', 0) for e in pruned)} trades pruned,"
                             f" {pruned[-1].get('done_waiting', '?')} done and waiting") if pruned else ""
                    d.logs.clear()   # this process keeps the daemon's log lines: not its RSS
                    d.raw.clear()
                    curve.append((i + 1, rss_kib(pid), time.perf_counter() - t0))
                    print(f"  {i + 1:>9} proposals  RSS {curve[-1][1] / 1024:7.1f} MB"
                          f"  (+{(curve[-1][1] - curve[1 if len(curve) > 1 else 0][1]) / 1024:6.1f} MB"
                          f" since 10k)  {(i + 1) / curve[-1][2]:6.0f}/s{books}", flush=True)
            while done < n:
                got.clear()
                try:
                    await asyncio.wait_for(got.wait(), 30)
                except TimeoutError:
                    print(f"  decisions stopped at {done} of {n}")
                    break
            elapsed = time.perf_counter() - t0
            await asyncio.sleep(4.0)   # the last entries' cancel_entry_after_s, the last swings
            stop_swing.set()
            if swinger is not None:
                await swinger
            end_rss = rss_kib(pid)
            # what the paper TWS still has working: every bracket closed? (its /state lists every
            # order of the run: ~120k after 1M proposals, past the default 5 s)
            st = await tws.state(timeout=300)
            working: dict[str, int] = {}
            for o in st.get("orders", []):
                if o.get("status") not in ("Filled", "Cancelled", "ApiCancelled", "Inactive"):
                    key = f"{o.get('orderType')}:{o.get('status')}"
                    working[key] = working.get(key, 0) + 1
            print(f"  working at the paper TWS after the flow: {working or 'none'}")
            health = await tws.get("/health")   # IB's pacing: error 100s sent, messages dropped
            print(f"  paper TWS pacing: {health.get('pacingErrors')} error 100, "
                  f"{health.get('pacingDropped')} messages dropped")
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        rc = await d.terminate()
        print(f"  decided {done} of {n} in {elapsed:.0f} s ({done / elapsed:.0f}/s): {verdicts}")
        print(f"  brackets' legs (fills and cancels on the orders topics): {dict(sorted(legs.items()))}")
        if len(curve) > 2:
            warm = curve[1][1]
            print(f"  RSS: start {curve[0][1] / 1024:.1f} MB, at 10k {warm / 1024:.1f} MB, end"
                  f" {end_rss / 1024:.1f} MB: {(end_rss - warm) / 1024:+.1f} MB over the last"
                  f" {n - 10_000} proposals")
        print(f"  daemon exit code on SIGTERM: {rc}")
        print_curve(curve)
    finally:
        await d.kill()   # a no-op once it has exited


def print_curve(curve: list[tuple[int, int, float]], warm: int = 70_000) -> None:
    """The RSS curve in one line (MB at each 10k) and its slope after `warm` proposals (a least
    squares line through the samples from there on, MB per 100k): flat after warm-up is ~0."""
    if len(curve) < 2:
        return
    print("  RSS curve (k proposals: MB): " + " ".join(
        f"{n // 1000}:{kib / 1024:.1f}" for n, kib, _ in curve[1:]))
    tail = [(n, kib / 1024) for n, kib, _ in curve if n >= warm]
    if len(tail) >= 3:
        mx = sum(n for n, _ in tail) / len(tail)
        my = sum(m for _, m in tail) / len(tail)
        slope = (sum((n - mx) * (m - my) for n, m in tail)
                 / sum((n - mx) ** 2 for n, _ in tail))
        print(f"  after warm-up ({warm // 1000}k on): {slope * 100_000:+.2f} MB per 100k"
              f" (least squares over {len(tail)} samples); {tail[-1][1] - tail[0][1]:+.1f} MB"
              f" from {tail[0][0] // 1000}k to {tail[-1][0] // 1000}k")


async def build(n: int, path: Path) -> None:
    """N proposals written through the Journal API, as the daemon writes them."""
    from bracketgate.adapters.journal import Journal

    t0 = time.perf_counter()
    now = datetime.now(timezone.utc).isoformat()
    async with Journal(path) as j:
        batch = 2000
        for start in range(0, n, batch):
            ops = []
            for i in range(start, min(n, start + batch)):
                p = proposal(i, 10)
                p["agent_id"] = f"soak{i % 5}"
                pid = p["proposal_id"]
                approved = p["quantity"] == 1
                dec = {"proposal_id": pid, "agent_id": p["agent_id"],
                       "verdict": "approved" if approved else "rejected", "ts": now,
                       "trading_state": "ACTIVE", "order_ids": None,
                       "reasons": [] if approved else [{"code": "POSITION_LIMIT",
                                                        "message": "position past the limit"}]}

                async def one(p=p, dec=dec, pid=pid, approved=approved, i=i) -> None:
                    await j.record("proposal", payload=p, durable=False)
                    if approved:
                        ids = (10_000 + 3 * i, 10_001 + 3 * i, 10_002 + 3 * i)
                        await j.record_intent({"proposal": p}, ids)
                        await j.mark_intent(pid, "sent")
                        await j.mark_intent(pid, "done")
                    await j.record("decision", payload=dec, durable=False)
                    await j.record("ack", proposal_id=pid, agent_id=p["agent_id"],
                                   payload={"delivered": "decision"}, durable=False)
                ops.append(one())
            await asyncio.gather(*ops)
        await j.checkpoint_recovery(datetime(2000, 1, 1, tzinfo=timezone.utc))
    print(f"  built {n} proposals in {time.perf_counter() - t0:.0f} s")


def seed_completed_orders(tws, k: int, start: int = 0) -> None:
    """K orders placed and cancelled at the paper TWS (IB reports them as completed orders)."""
    import dataclasses

    from sim.model import SimOrder

    contract = tws.universe.find("AAPL", "STK")[0]
    contract = contract if contract.exchange else dataclasses.replace(contract, exchange="SMART")
    eng = tws.engine
    for i in range(start, start + k):
        eng.place(SimOrder(client_id=99, order_id=1_000_000 + i, perm_id=eng.next_perm_id(),
                           contract=contract, action="BUY", total_quantity=1, order_type="LMT",
                           lmt_price=100.0, order_ref=f"seeded-{i}"))
        eng.cancel(99, 1_000_000 + i)


@asynccontextmanager
async def bench_rig(prefix: str, keep: bool) -> AsyncIterator[tuple[Path, Any, Any]]:
    """(work directory with limits.toml, mosquitto, the paper TWS in this process WITH its
    pacing), all stopped after (the work directory kept with `keep`)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / "limits.toml").write_text(LIMITS)
    broker = MosquittoServer(MOSQUITTO_BINARY, work / "mosquitto")
    broker.start()
    tws = await start_paper_tws()
    try:
        yield work, broker, tws
    finally:
        await stop_paper_tws(tws)
        broker.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"  kept {work}")


async def main(a: argparse.Namespace) -> None:
    async with bench_rig("bg-bench-soak-", a.keep) as (work, broker, tws):
        # the daemon is stopped by its PID in every case (restart_ms, flow)
        await soak(a, work, broker, tws)


async def soak(a: argparse.Namespace, work: Path, broker: Any, tws: Any) -> None:
    journal = work / "journal.sqlite"
    empty_ms, empty_wall = await restart_ms(tws, broker, work, work / "empty.sqlite")
    n = a.build or a.n
    if a.reuse:
        journal = Path(a.reuse)
        print(f"bracketgate soak: restart on {journal} (built earlier with --build {n})")
    elif a.build:
        print(f"bracketgate soak: restart on a journal of {n} proposals written directly")
        await build(n, journal)
    else:
        print(f"bracketgate soak: {n} proposals through mosquitto, ~{100 // a.approve_every}"
              f" % approved (pid {os.getpid()})")
        await flow(n, a.window, a.approve_every, a.fill_every, tws, broker, work, journal,
                   a.memdump_every, dict(kv.split("=", 1) for kv in a.daemon_env))
    size = journal_files_size(journal)
    print(f"  journal: {size / 1e6:.1f} MB (db + wal) = {size / n:.0f} bytes/proposal")
    big_ms, big_wall = await restart_ms(tws, broker, work, journal)
    print(f"  restart to ready: {big_ms:.0f} ms on it vs {empty_ms:.0f} ms on an empty"
          f" journal (baseline, same run): ratio {big_ms / empty_ms:.2f};"
          f" {big_ms - empty_ms:+.0f} ms  (wall from spawn {big_wall:.0f} vs"
          f" {empty_wall:.0f} ms)")
    seeded = 0
    for k in (int(x) for x in a.ib_orders.split(",") if x.strip()):  # K completed orders at IB
        seed_completed_orders(tws, k - seeded, seeded)
        seeded = max(seeded, k)
        runs: list[tuple[float, float]] = []
        for t in range(a.trials):   # a new (empty) journal reviews them all (ib_startup.py)
            new = (await restart_ms(tws, broker, work, work / f"new-{k}-{t}.sqlite"))[0]
            runs.append((new, (await restart_ms(tws, broker, work, journal))[0]))
        e2_ms = statistics.median(r[0] for r in runs)
        b2_ms = statistics.median(r[1] for r in runs)
        print(f"  with {k} completed orders at the paper TWS: {b2_ms:.0f} ms on the journal,"
              f" {e2_ms:.0f} ms on a new one (vs {empty_ms:.0f} ms without them; medians of"
              f" {a.trials}): ratio {b2_ms / empty_ms:.2f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000, help="proposals through the daemon")
    ap.add_argument("--build", type=int, default=0,
                    help="instead: write this many proposals through the Journal API")
    ap.add_argument("--reuse", help="with --build N: restart on this journal, built before")
    ap.add_argument("--ib-orders", default="",
                    help="then restart again with this many completed orders at the paper TWS"
                         " (a list: 0,10000,35000)")
    ap.add_argument("--trials", type=int, default=1, help="restarts per --ib-orders K (median)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (journal)")
    ap.add_argument("--window", type=int, default=200, help="proposals in flight")
    ap.add_argument("--approve-every", type=int, default=10, help="1 in N approved")
    ap.add_argument("--memdump-every", type=int, default=0,
                    help="SIGUSR2 the daemon at ready and every N proposals (a multiple of 10k) and"
                         " print its memory dump (core/memdump.py; PYTHONTRACEMALLOC=1 for"
                         " allocation sites: snapshots kept with --keep, diff two with"
                         " python -m bracketgate.core.memdump OLD NEW)")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in the flow daemon's environment only (PYTHONTRACEMALLOC=1,"
                         " MALLOC_ARENA_MAX=2, ...), not in this process (the paper TWS)")
    ap.add_argument("--fill-every", type=int, default=2,
                    help="1 in K approved brackets filled in a swinging market (0: none, all "
                         "rest and are cancelled)")
    asyncio.run(main(ap.parse_args()))
