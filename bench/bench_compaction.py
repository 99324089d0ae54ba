"""Compaction bench: how long the journal's writer stalls records while the hourly retention
(prune_ids, then compact) deletes a large backlog, one-shot (as before) vs in chunks.

    .venv/bin/python bench/bench_compaction.py [--old 500000] [--rate 200] [--dir DIR] [--json]

A journal is filled with `--old` proposals 30 days old (each with its proposal_ids row, so the
run prunes the ids and then deletes the events, as core/app.py does hourly) and copied twice.
On each copy a producer records proposals open loop at `--rate`/s (each latency measured from
its scheduled time, so a stall is not hidden by a producer that waits) while the retention
runs: "one-shot" submits the pre-chunking statements as one writer operation each (exactly what
Journal.prune_ids / compact did before adapters/journal_compact.py), "chunked" calls
Journal.prune_ids / compact (CHUNK_ROWS rows per commit; no pages given back in either run).
The baseline is the same producer on the same file before the retention starts. Printed: the longest record latency (the writer
stall) during the retention, p99, how many records were committed during it, and the ratio
one-shot / chunked of the longest stall.

Two runs, defaults (500k, 200/s, chunks of 500), shared 2-CPU VM, sqlite 3.40.1:

    one-shot  retention 3.4-3.6 s  during: p50 867-995 ms  p99 2.5-2.7 s  max 2.58-2.77 s
    chunked   retention 4.5-4.6 s  during: p50 2.5-2.8 ms  p99 19.5 ms    max 24-25 ms
    baseline (no retention) p50 0.84-0.95 ms; longest stall one-shot / chunked: x105-110
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.adapters import journal_compact  # noqa: E402
from bracketgate.adapters.journal import IntentState, Journal, _ts  # noqa: E402
from bracketgate.core.clock import SYSTEM_CLOCK  # noqa: E402
from bracketgate.core.logs import configure_logging  # noqa: E402

PROPOSAL = {"agent_id": "a1", "symbol": "AAPL", "side": "BUY", "quantity": 10, "entry": {
    "type": "LMT", "limit_price": 100.0}, "take_profit": 103.0, "stop_loss": 98.0,
    "tif": "DAY", "strategy": "bench", "note": "x" * 120}

# the retention before it was chunked (adapters/journal.py at 74a9540): the "one-shot" run
ONE_SHOT = (
    ("DELETE FROM proposal_ids WHERE first_seen < ?", "ids"),
    ("DELETE FROM intents WHERE updated_ts < ? AND state IN (?, ?)", "intents"),
    ("DELETE FROM events WHERE ts < ?"
     " AND (proposal_id IS NULL OR proposal_id NOT IN (SELECT proposal_id FROM intents))"
     " AND seq NOT IN (SELECT proposal_seq FROM proposal_ids WHERE proposal_seq IS NOT NULL)"
     " AND seq NOT IN (SELECT decision_seq FROM proposal_ids WHERE decision_seq IS NOT NULL)",
     "events"),
)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def build(path: Path, old: int) -> float:
    """`old` proposals journaled 30 days ago (timestamps 1 ms apart), with their id rows."""
    async with Journal(path, SYSTEM_CLOCK):
        pass
    t0 = time.perf_counter()
    start = datetime.now(timezone.utc) - timedelta(days=30)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    batch = 20_000
    for first in range(0, old, batch):
        rows = []
        for i in range(first, min(old, first + batch)):
            ts = _ts(start + timedelta(milliseconds=i))
            pid = f"old-{i}"
            rows.append((i + 1, ts, pid, json.dumps({**PROPOSAL, "proposal_id": pid})))
        conn.executemany("INSERT INTO events(seq, ts, kind, proposal_id, agent_id, payload)"
                         " VALUES (?, ?, 'proposal', ?, 'a1', ?)",
                         [(r[0], r[1], r[2], r[3]) for r in rows])
        conn.executemany("INSERT INTO proposal_ids(proposal_id, agent_id, first_seen,"
                         " proposal_seq) VALUES (?, 'a1', ?, ?)",
                         [(r[2], r[1], r[0]) for r in rows])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


class Producer:
    """Records a proposal every 1/rate s on a fixed schedule, each as its own task; latency is
    commit time minus scheduled time."""

    def __init__(self, j: Journal, rate: float, tag: str) -> None:
        self.j, self.period, self.tag = j, 1.0 / rate, tag
        self.done: list[tuple[float, float]] = []       # (scheduled, committed), perf_counter
        self._stop = False
        self._pending: set[asyncio.Task[None]] = set()

    async def _one(self, i: int, at: float) -> None:
        pid = f"{self.tag}-{i}"
        await self.j.record("proposal", proposal_id=pid, agent_id="a1",
                            payload={**PROPOSAL, "proposal_id": pid})
        self.done.append((at, time.perf_counter()))

    async def run(self) -> None:
        start = time.perf_counter()
        i = 0
        while not self._stop:
            at = start + i * self.period
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(i, at))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            i += 1

    async def stop(self) -> None:
        self._stop = True
        await asyncio.sleep(0)
        if self._pending:
            await asyncio.gather(*self._pending)

    def window(self, t0: float, t1: float, *, committed_by: float = float("inf"),
               committed_after: float = 0.0) -> list[float]:
        """Latencies (s) of the records scheduled in [t0, t1) and committed in
        [committed_after, committed_by)."""
        return [c - s for s, c in self.done
                if t0 <= s < t1 and committed_after <= c < committed_by]


async def one_shot(j: Journal, ids_before: str, before: str) -> dict[str, int]:
    terminal = [s.value for s in IntentState if s.terminal]
    counts: dict[str, int] = {}
    for sql, name in ONE_SHOT:
        args = (before, *terminal) if name == "intents" else (
            ids_before if name == "ids" else before,)
        counts[name] = await j._submit(lambda conn, s=sql, a=args: conn.execute(s, a).rowcount,
                                       False)
    return counts


async def chunked(j: Journal, ids_before: datetime, before: datetime, chunk: int
                  ) -> dict[str, int]:
    ids = await j.prune_ids(ids_before, chunk_rows=chunk)
    counts = await j.compact(before, vacuum_pages=0, chunk_rows=chunk)
    return {"ids": ids, **counts}


async def measure(path: Path, mode: str, rate: float, warm_s: float, chunk: int
                  ) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    ids_before, before = now - timedelta(days=7), now - timedelta(days=14)
    async with Journal(path, SYSTEM_CLOCK) as j:
        producer = Producer(j, rate, mode)
        runner = asyncio.create_task(producer.run())
        opened = time.perf_counter()
        await asyncio.sleep(warm_s)                       # the baseline: records, no retention
        t0 = time.perf_counter()
        if mode == "one-shot":
            counts = await one_shot(j, _ts(ids_before), _ts(before))
        else:
            counts = await chunked(j, ids_before, before, chunk)
        t1 = time.perf_counter()
        await asyncio.sleep(0.5)
        await producer.stop()
        await runner
    # the baseline: records committed before the retention began (one scheduled just before it
    # but still waiting when it began is the retention's stall, counted in neither)
    base = producer.window(opened + warm_s / 4, t0, committed_by=t0)
    during = producer.window(opened, t1, committed_after=t0)   # every record that waited on it
    return {"retention_s": t1 - t0, "deleted": counts,
            "baseline_p50_ms": pct(base, 50) * 1e3, "baseline_max_ms": max(base or [0]) * 1e3,
            "during_records": len(during), "during_p50_ms": pct(during, 50) * 1e3,
            "during_p99_ms": pct(during, 99) * 1e3, "stall_max_ms": max(during or [0]) * 1e3}


async def run(old: int, rate: float, directory: Path, warm_s: float, chunk: int
              ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        base = Path(tmp) / "base.sqlite"
        build_s = await build(base, old)
        out: dict[str, Any] = {"old_proposals": old, "rate_per_s": rate, "build_s": build_s,
                               "chunk_rows": chunk}
        # a throw-away round on an empty journal first: the first records of a process pay for
        # its warm-up (imports, caches), which is neither mode's doing
        await measure(Path(tmp) / "warm.sqlite", "chunked", rate, warm_s / 2, chunk)
        for mode in ("one-shot", "chunked"):
            copy = Path(tmp) / f"{mode}.sqlite"
            shutil.copy(base, copy)
            os.sync()   # the copy's dirty pages written back now, not during the first fsyncs
            out[mode] = await measure(copy, mode, rate, warm_s, chunk)
            copy.unlink()
    out["stall_ratio"] = out["one-shot"]["stall_max_ms"] / max(1e-9, out["chunked"]["stall_max_ms"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=int, default=500_000, help="old proposals to compact")
    parser.add_argument("--rate", type=float, default=200.0, help="records/s while it runs")
    parser.add_argument("--warm", type=float, default=2.0, help="baseline seconds before")
    parser.add_argument("--chunk", type=int, default=journal_compact.CHUNK_ROWS,
                        help="rows per chunk (the default is the journal's)")
    parser.add_argument("--dir", type=Path, default=Path("data"), help="where the files go")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    configure_logging("json", "WARNING", stream=sys.stderr)
    args.dir.mkdir(parents=True, exist_ok=True)
    out = asyncio.run(run(args.old, args.rate, args.dir, args.warm, args.chunk))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"compaction bench: {out['old_proposals']} old proposals (+ id rows), records at"
          f" {out['rate_per_s']:.0f}/s open loop, chunks of {out['chunk_rows']} rows,"
          f" sqlite {sqlite3.sqlite_version} (built in {out['build_s']:.1f} s)")
    for mode in ("one-shot", "chunked"):
        r = out[mode]
        print(f"  {mode:<9} retention {r['retention_s']:6.2f} s  deleted {r['deleted']}\n"
              f"            baseline p50 {r['baseline_p50_ms']:6.2f} ms max"
              f" {r['baseline_max_ms']:7.1f} ms | during: {r['during_records']} records"
              f" p50 {r['during_p50_ms']:7.2f} ms p99 {r['during_p99_ms']:7.1f} ms"
              f" max (stall) {r['stall_max_ms']:7.1f} ms")
    print(f"  longest writer stall, one-shot / chunked: x{out['stall_ratio']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
