"""Where the gate's memory goes over a long run: tracemalloc snapshots, top growers.

The RiskGovernor in process (no sockets), fed bench_risk.py's mix — ~45 % approvable
brackets over 8 agents and 12 symbols, the rest rejected, ~2 % re-deliveries, open brackets
filled and closed as they go, a snapshot every 20 proposals — with tracemalloc on. The traced
heap is sampled every `--every` proposals and printed as a curve; the allocation sites that
grew most between the end of the warm-up (the first sample past --warmup) and the end are
listed (file:line, growth, count). A structure that grows with proposals shows up there; a
bounded one flattens once its cap is reached (the decision memory at
max_remembered_decisions, the first-seen ids at _Replays.FIRST_SEEN_MAX, ...).

    python bench/audit_memory.py [--n 300000] [--every 25000] [--warmup 50000] [--top 15]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_risk import (  # noqa: E402
    AGENTS,
    SYMBOLS,
    TARGET_OPEN,
    make_limits,
    make_proposals,
    make_snapshot,
)

from bracketgate.agents.risk import RiskGovernor  # noqa: E402
from bracketgate.bus.messages import Fill, Leg, OrderEvent, Verdict  # noqa: E402
from bracketgate.core.clock import ManualClock  # noqa: E402
from bracketgate.core.logs import configure_logging  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--every", type=int, default=25_000)
    ap.add_argument("--warmup", type=int, default=50_000)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    configure_logging("json", "WARNING", stream=open(os.devnull, "w"))  # noqa: SIM115
    logging.getLogger().setLevel(logging.WARNING)
    rng = random.Random(a.seed)
    prices = {s: round(rng.uniform(20, 600), 2) for s in SYMBOLS}
    clock = ManualClock()
    lim = make_limits()
    gov = RiskGovernor(lim, clock)
    held = {s: 0.0 for s in SYMBOLS}
    gov.on_snapshot(make_snapshot(clock, prices, held))
    open_ids: list = []
    exec_n = 0
    tracemalloc.start(1)
    base_snap = None
    curve: list[tuple[int, float]] = []
    for i, p in enumerate(make_proposals(a.n, rng, prices)):
        d = gov.evaluate(p, gov.snapshot)
        if d.verdict is Verdict.APPROVED and p.proposal_id in gov.ledger:
            open_ids.append(p)
        clock.advance(0.05)
        while len(open_ids) > TARGET_OPEN:
            old = open_ids.pop(rng.randrange(len(open_ids)))
            exec_n += 1
            ts = clock.now()
            if rng.random() < 0.3:
                gov.on_order_event(OrderEvent(
                    proposal_id=old.proposal_id, agent_id=old.agent_id, order_id=exec_n,
                    leg=Leg.ENTRY, symbol=old.symbol, status="Cancelled", ts=ts))
                continue
            px = old.limit_price or prices[old.symbol]
            for leg, side, fpx in ((Leg.ENTRY, old.side, px),
                                   (Leg.TAKE_PROFIT, old.side.opposite, old.take_profit)):
                gov.on_fill(Fill(
                    proposal_id=old.proposal_id, agent_id=old.agent_id, order_id=exec_n, leg=leg,
                    exec_id=f"x{exec_n}-{leg.value}", symbol=old.symbol, side=side,
                    quantity=float(old.quantity), price=fpx,
                    realized_pnl=None if leg is Leg.ENTRY else 1.0, ts=ts))
        if i % 20 == 19:
            gov.on_snapshot(make_snapshot(clock, prices, held))
        if (i + 1) % a.every == 0:
            gc.collect()
            cur, _ = tracemalloc.get_traced_memory()
            curve.append((i + 1, cur / 1e6))
            if base_snap is None and i + 1 >= a.warmup:
                base_snap = tracemalloc.take_snapshot()
    end = tracemalloc.take_snapshot()
    print(f"audit_memory: {a.n} proposals through the RiskGovernor ({len(AGENTS)} agents, "
          f"{len(SYMBOLS)} symbols), max_remembered_decisions {lim.max_remembered_decisions}")
    print("traced heap (MB) by proposals: " + ", ".join(f"{n // 1000}k {mb:.2f}" for n, mb in curve))
    if len(curve) >= 2:
        past = [mb for n, mb in curve if n >= a.warmup]
        if len(past) >= 2:
            span = (curve[-1][0] - next(n for n, _ in curve if n >= a.warmup)) / 100_000
            print(f"after the warm-up ({a.warmup // 1000}k): {past[-1] - past[0]:+.3f} MB over "
                  f"{span * 100:.0f}k proposals ({(past[-1] - past[0]) / span if span else 0:+.3f}"
                  f" MB per 100k)")
    if base_snap is not None:
        print(f"top growers after the warm-up (file:line, growth, blocks):")
        for stat in end.compare_to(base_snap, "lineno")[:a.top]:
            fr = stat.traceback[0]
            print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d}  "
                  f"{Path(fr.filename).name}:{fr.lineno}")
    sizes = {"decision memory": len(gov._decisions), "ledger": len(gov.ledger),
             "exec_ids": len(gov._exec_ids), "first_seen": len(gov._replays.first_seen),
             "budgets": len(gov._budgets), "offline facts": len(gov._offline_facts),
             "last prices": len(gov._last_price), "agent positions":
             sum(len(v) for v in gov._agent_positions.values())}
    print("structures at the end: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
