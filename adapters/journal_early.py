"""A proposal's id look-up answered before its write commits.

The gate asks `Journal.first_seen(pid)` of every proposal id it has no decision for. For a
proposal this process is journaling right now, the answer is what the write's own look-up
finds (new id, or known before: then SQLite is asked, after the commit). The writer thread
gives that answer the moment the batch's inserts ran, before the commit's fsync, so the gate can
decide while the proposal's FULL commit is in flight. Nothing durable depends on it: the
proposal's PUBACK still waits for its commit, and whatever the gate then writes (an order
intent, a decision) is queued behind the proposal's write in the one writer's FIFO, so it is
never committed before it. A write that fails answers "ask SQLite" (None); its proposal is not
acknowledged and comes again.

State (on the Journal):
  _looking: proposal_id -> Future[(agent, first ts) | None]   (proposal writes in flight)
  _early:   proposal_ids answered early, their write not yet committed
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

# (proposal_id, future, the event's insert, the future's loop)
Looking = list[tuple[str, "asyncio.Future[Any]", Any, asyncio.AbstractEventLoop]]


def register(looking: dict[str, asyncio.Future[Any]], events: Sequence[Mapping[str, Any]],
             runs: Sequence[Any]) -> Looking:
    """The once-per-id proposal writes of `events` (the bridge's), each with a future in
    `looking` (an id already in flight keeps its first write's)."""
    out: Looking = []
    loop: asyncio.AbstractEventLoop | None = None
    for e, run in zip(events, runs):
        pid = e.get("proposal_id")
        if str(e.get("kind")) != "proposal" or not e.get("once") or not pid or pid in looking:
            continue
        loop = loop or asyncio.get_running_loop()
        fut = loop.create_future()
        looking[pid] = fut
        out.append((pid, fut, run, loop))
    return out


def _resolve(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, value in answers:
        if not fut.done():
            fut.set_result(value)


def answer(looking: Looking) -> None:
    """In the writer thread, the batch's inserts done, before its commit: each id's answer,
    (agent, first ts) when its row is new, else None (ask SQLite)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for _pid, fut, run, loop in looking:
        fresh = getattr(run, "fresh", None)
        by_loop.setdefault(loop, []).append((fut, (fresh[0][1], fresh[0][2]) if fresh else None))
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, answers)
        except RuntimeError:   # that loop is closed: nobody is waiting there any more
            continue


UNJOURNALED_MAX = 4096   # failed proposal writes remembered (ExecutionAgent asks, then places)


def settle(journal: Any, looking: Looking, committed: bool | None) -> None:
    """The write returned (committed, failed, or None: its caller was cancelled, the write
    goes on): its ids leave `_looking` and their waiters ask SQLite; a failed one's is noted
    in `_unjournaled` (until a write of it commits): the gate may have decided it meanwhile,
    nothing may be placed for it."""
    for pid, fut, _run, _loop in looking:
        if journal._looking.get(pid) is fut:
            del journal._looking[pid]
        if not fut.done():
            fut.set_result(None)
        if committed:
            journal._unjournaled.pop(pid, None)
            continue
        journal._early.discard(pid)     # no _note_fresh: later look-ups ask SQLite
        if committed is False:
            journal._unjournaled[pid] = None
            while len(journal._unjournaled) > UNJOURNALED_MAX:
                del journal._unjournaled[next(iter(journal._unjournaled))]


async def wait(journal: Any, proposal_id: str) -> tuple[str | None, str] | None:
    """The in-flight write's answer for proposal_id: (agent, first ts) when new, else None."""
    fut = journal._looking[proposal_id]
    hit = await asyncio.shield(fut)
    if hit is None:
        return None
    if journal._looking.get(proposal_id) is fut:
        journal._early.add(proposal_id)      # its commit need not remember it in _fresh
    else:
        journal._fresh.pop(proposal_id, None)   # committed meanwhile: taken from _fresh too
    return hit
