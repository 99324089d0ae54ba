"""An open-loop schedule kept to the tenth of a millisecond, for the latency benches.

`await asyncio.sleep(wait)` wakes late: the selector's timeout is rounded up to a whole
millisecond (epoll counts in ms), so a send due at t went out 0.5 ms late on average and up to
1.3 ms, and every latency measured from the scheduled time carried the load generator's own
lateness (the raw client's "due -> what-if sent" was 1.19 ms p50 for a call that takes 20 µs).
Here a thread sleeps to each due time (`time.sleep`: nanosleep, ~60 µs late on Linux) and wakes
the loop through its self-pipe (`call_soon_threadsafe`), so the loop is never blocked by a spin
(it keeps reading the answers whose arrival times are measured) and a stall of the system under
test still shows: latency stays measured from the scheduled time, the sender is just on time.

    async for i, at in ticks(t0, n, rate): ...
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator


async def ticks(t0: float, n: int, rate: float) -> AsyncIterator[tuple[int, float]]:
    """(i, due time) for i in range(n), each handed over at t0 + i / rate (perf_counter)."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    stop = threading.Event()

    def run() -> None:
        for i in range(n):
            at = t0 + i / rate
            wait = at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if stop.is_set():
                return
            loop.call_soon_threadsafe(q.put_nowait, (i, at))
        loop.call_soon_threadsafe(q.put_nowait, None)

    thread = threading.Thread(target=run, name="bench-ticks", daemon=True)
    thread.start()
    try:
        while (item := await q.get()) is not None:
            yield item
    finally:
        stop.set()


async def _sleeping(t0: float, n: int, rate: float) -> AsyncIterator[tuple[int, float]]:
    """The same schedule by `asyncio.sleep` to each due time (what the benches did)."""
    for i in range(n):
        at = t0 + i / rate
        wait = at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        yield i, at


def lateness_ms(schedule=ticks, n: int = 500, rate: float = 200.0) -> tuple[float, float]:
    """(p50, p99) ms of how late `schedule` hands a due time over, on an idle loop."""
    async def main() -> list[float]:
        out = []
        async for _, at in schedule(time.perf_counter() + 0.02, n, rate):
            out.append((time.perf_counter() - at) * 1e3)
        return out

    got = sorted(asyncio.run(main()))
    return got[len(got) // 2], got[int(len(got) * 0.99)]


if __name__ == "__main__":
    print("ticks lateness p50/p99 ms: %.3f / %.3f" % lateness_ms(ticks))
    print("asyncio.sleep lateness p50/p99 ms: %.3f / %.3f" % lateness_ms(_sleeping))
