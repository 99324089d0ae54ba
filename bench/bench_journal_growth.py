"""Does the journal stay fast as it grows? Appending proposals to a big journal vs an empty one.

    .venv/bin/python bench/bench_journal_growth.py --big FILE [--n 20000] [--rounds 2]

FILE is a journal a long run left (bench/bench_soak.py --keep; a copy is written to, never
FILE itself). Each round appends --n proposals, as the daemon journals them (the proposal FULL,
its decision, the delivery record; 4 % with an intent sent and done), with 200 in flight (the
soak's window), first to a new empty journal (the baseline, same run) and then to the copy of
FILE, and prints proposals/s and this process's CPU per proposal (the writer thread included)
for each, and the ratio big / empty. Rounds alternate the order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.adapters.journal import Journal  # noqa: E402
from bracketgate.core.logs import configure_logging  # noqa: E402

WINDOW = 200


async def append(path: Path, n: int) -> tuple[float, float]:
    """(proposals/s, CPU ms per proposal) of n proposals appended to the journal at `path`."""
    now = datetime.now(timezone.utc).isoformat()
    tag = uuid.uuid4().hex[:6]
    async with Journal(path) as j:
        free = asyncio.Semaphore(WINDOW)

        async def one(i: int) -> None:
            pid = f"grow-{tag}-{i}"
            p = {"proposal_id": pid, "agent_id": f"soak{i % 5}", "symbol": "MSFT", "side": "BUY",
                 "quantity": 1 if i % 25 == 0 else 10, "order_type": "LMT", "limit_price": 230.0,
                 "take_profit": 240.0, "stop_loss": 225.0}
            approved = i % 25 == 0
            dec = {"proposal_id": pid, "agent_id": p["agent_id"], "ts": now,
                   "verdict": "approved" if approved else "rejected", "trading_state": "ACTIVE",
                   "order_ids": None, "reasons": [] if approved else [
                       {"code": c, "message": "past the limit"} for c in
                       ("MAX_ORDER_QUANTITY", "POSITION_LIMIT", "PER_TRADE_LOSS_LIMIT")]}
            try:
                await j.record("proposal", proposal_id=pid, agent_id=p["agent_id"], payload=p,
                               durable=True)
                if approved:
                    ids = (10_000_000 + 3 * i, 10_000_001 + 3 * i, 10_000_002 + 3 * i)
                    await j.record_intent({"proposal": p}, ids)
                    await j.mark_intent(pid, "sent")
                    await j.mark_intent(pid, "done")
                await j.record("decision", proposal_id=pid, agent_id=p["agent_id"], payload=dec,
                               durable=False)
                await j.record("ack", proposal_id=pid, agent_id=p["agent_id"],
                               payload={"delivered": "decision"}, durable=False)
            finally:
                free.release()

        tasks = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            await free.acquire()
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return n / wall, cpu / n * 1000


async def main(a: argparse.Namespace) -> None:
    configure_logging("json", "WARNING", stream=open(os.devnull, "w"))
    work = Path(tempfile.mkdtemp(prefix="bg-bench-jgrow-"))
    big = work / "big.sqlite"
    shutil.copyfile(a.big, big)
    rows = sqlite3.connect(big).execute("SELECT count(*) FROM events").fetchone()[0]
    print(f"bench_journal_growth: {a.n} proposals appended per run, {WINDOW} in flight; big = "
          f"copy of {a.big} ({os.path.getsize(big) / 1e6:.0f} MB, {rows} events)")
    try:
        for r in range(a.rounds):
            order = ("empty", "big") if r % 2 == 0 else ("big", "empty")
            got = {}
            for which in order:
                path = big if which == "big" else work / f"empty-{r}.sqlite"
                got[which] = await append(path, a.n)
            (e_rate, e_cpu), (b_rate, b_cpu) = got["empty"], got["big"]
            print(f"  round {r + 1}: empty {e_rate:,.0f}/s {e_cpu:.3f} ms CPU each | big "
                  f"{b_rate:,.0f}/s {b_cpu:.3f} ms CPU each | big/empty: rate "
                  f"{b_rate / e_rate:.2f}x, CPU {b_cpu / e_cpu:.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", required=True, help="a journal a long run left (copied, not written)")
    ap.add_argument("--n", type=int, default=20_000, help="proposals appended per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds")
    asyncio.run(main(ap.parse_args()))
