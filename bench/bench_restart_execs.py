"""Restart with a heavy day at IB: K executions in the paper TWS's day, journaled or not.

    .venv/bin/python bench/bench_restart_execs.py                       # K = 5000, 22000
    .venv/bin/python bench/bench_restart_execs.py --execs 22000 --trials 5

A 1M-proposal soak leaves ~22k executions in IB's day; a restart then reads them back
(reqExecutions). Real processes on loopback: mosquitto, the daemon (`python run.py`) as a
subprocess, the paper TWS in this process WITH its pacing. The baseline, same run: a restart on
an empty journal with no executions at IB. Then for each K (cumulative) K executions are put into
the paper TWS's day (another client's AAPL orders, tests/fixtures/paper_tws.py
`seed_executions`) and the daemon is restarted (median of --trials) on

  - a journal holding them all as fills (the day's fills journaled: the usual restart), and
  - a new journal (none journaled: each one is new, published, and logged as not ours).

Printed: the daemon's own startup_ms to `ready`, the ratio to the baseline, and its
`ib_executions_synced` line (new, skipped undecoded, decoded, ms; adapters/ib_execs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_soak import bench_rig, spawn  # noqa: E402

from tests.fixtures.paper_tws import seed_executions  # noqa: E402


async def journal_with_fills(path: Path, exec_ids: list[str]) -> None:
    """The day's fills journaled and delivered, as the daemon leaves them (a Fill and its
    delivery record per execution; the recovery checkpoint moved as the daemon moves it)."""
    from bracketgate.adapters.journal import Journal
    from bracketgate.bus.messages import Fill, Leg, Side

    now = datetime.now(timezone.utc)

    async def one(i: int, e: str) -> None:
        pid = f"seeded-{i}"
        await j.record("fill", proposal_id=pid, agent_id="seeded", order_id=2_000_000 + i,
                       payload=Fill(proposal_id=pid, agent_id="seeded", order_id=2_000_000 + i,
                                    leg=Leg.ENTRY, exec_id=e, symbol="AAPL", side=Side.BUY,
                                    quantity=1, price=230.0, commission=1.0, ts=now),
                       durable=False)
        await j.record("ack", proposal_id=pid, agent_id="seeded",   # delivered to its agent
                       payload={"delivered": "fill", "exec_id": e}, durable=False)

    async with Journal(path) as j:
        for start in range(0, len(exec_ids), 2000):
            await asyncio.gather(*(one(i, e) for i, e in
                                   enumerate(exec_ids[start:start + 2000], start)))
        await j.checkpoint_recovery(datetime(2000, 1, 1, tzinfo=timezone.utc))


async def restart(tws, broker, work: Path, journal: Path) -> tuple[float, dict]:
    d = await spawn(tws, broker, work, {"RISK_LIMITS_FILE": str(work / "limits.toml"),
                                        "JOURNAL_PATH": str(journal)}, 600)
    ready = next(e for e in d.logs if e.get("event") == "ready")
    synced = next((e for e in d.logs if e.get("event") == "ib_executions_synced"), {})
    await d.terminate()
    return float(ready["startup_ms"]), {k: synced[k] for k in ("new", "skipped", "decoded", "ms")
                                        if k in synced}


async def main(a: argparse.Namespace) -> None:
    async with bench_rig("bg-bench-execs-", a.keep) as (work, broker, tws):
        base = statistics.median([(await restart(tws, broker, work, work / f"empty-{t}.sqlite"))[0]
                                  for t in range(a.trials)])
        print(f"bracketgate restart with the day's executions at IB (baseline: {base:.0f} ms,"
              f" empty journal, none at IB; medians of {a.trials})", flush=True)
        ids: list[str] = []
        for k in (int(x) for x in a.execs.split(",") if x.strip()):
            ids += seed_executions(tws.engine, k - len(ids), start=len(ids))
            journal = work / f"fills-{k}.sqlite"
            await journal_with_fills(journal, ids)
            runs = {"journaled": [], "new journal": []}
            lines = {}
            for t in range(a.trials):
                ms, lines["journaled"] = await restart(tws, broker, work, journal)
                runs["journaled"].append(ms)
                ms, lines["new journal"] = await restart(tws, broker, work,
                                                         work / f"new-{k}-{t}.sqlite")
                runs["new journal"].append(ms)
            for name, ms in runs.items():
                m = statistics.median(ms)
                print(f"  {k} executions at IB, {name}: {m:.0f} ms to ready"
                      f" (ratio {m / base:.2f}, {m - base:+.0f} ms; runs"
                      f" {', '.join(f'{x:.0f}' for x in ms)}); sync {json.dumps(lines[name])}",
                      flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", default="5000,22000", help="executions at IB (cumulative list)")
    ap.add_argument("--trials", type=int, default=3, help="restarts per case (median)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    asyncio.run(main(ap.parse_args()))
