"""The cyclic garbage collector, tuned for a daemon whose objects die by reference count.

With CPython's default thresholds (700, 10, 10) the daemon ran a young collection every few
proposals, and each one promoted what was in flight at that moment (a burst's models, dicts,
futures) to the older generations, where it died: full collections came every second under
load, 60-210 ms each (they walk every remembered decision), ~30 % of the daemon's CPU at
2,000 proposals/s (bench/bench_throughput.py, issue 9). What the daemon allocates per proposal is
acyclic and freed by reference counting; the collector is only there for the rare cycle (an
exception kept with its traceback, a cancelled task).

`tune()` (at start):   young collections every GEN0 allocations (not 700), so a burst in
                       flight is rarely caught and promoted; middle and full ones as rarely.
                       And the GIL switch interval down to SWITCH_INTERVAL_S (from 5 ms).
`freeze()` (at ready): what start-up built (modules, classes, settings, the recovered book) goes
                       to the permanent generation, which no collection walks again.

`full_collections()` (from ready): a full collection every FULL_EVERY_S seconds, then `trim()`. With the
                       thresholds above CPython's own full collections (after GEN0 x GEN1 x GEN2
                       net allocations) almost never came, and cycles that had grown old first
                       were never freed: the IB library's trades, dropped from its books by
                       adapters/ib_prune.py minutes after they were placed, are such cycles, and
                       a soak at the IB pacer's full rate grew ~1 MB per 1k proposals with them
                       (bench/bench_soak.py --memdump-every: `Trade` objects no book held).

Young cycles are collected within GEN0 allocations, old ones within FULL_EVERY_S; 10,000 took
the same CPU per proposal as 50,000 in the bench. A full collection walks what is not frozen
(tens of ms on a large heap, logged when slower than SLOW_S).

`trim()` (after each full collection): glibc's malloc_trim(0) hands the free pages inside
malloc's heaps back to the kernel. What a burst allocated outside Python's own small-object
arenas (SQLite's statements and pages, the journal writer thread's arena, big strings) is freed
into malloc's free lists, which glibc only returns from the top of a heap; the rest stayed
resident. It runs in a worker thread (ctypes releases the GIL; ~20 ms on a fragmented 200 MB
heap), so the loop does not wait for it. A no-op off glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import sys
import time

from bracketgate.core.logs import get_logger

GEN0 = 10_000   # allocations (net of frees) between young collections; CPython's default: 700
GEN1 = 20       # young collections per middle one (default 10)
GEN2 = 100      # middle collections before a full one is considered (default 10)
FULL_EVERY_S = 30.0
SLOW_S = 0.1
# the GIL switch interval (CPython's default is 5 ms): a thread that wants the GIL waits up to
# this long for the one holding it, so with 5 ms the journal's writer thread, back from an
# fsync (or handed a write) while the loop ran Python, waited up to 5 ms at each of the
# approved path's three FULL commits, and the loop as long for the writer's batch. Never
# raised above what it already is.
SWITCH_INTERVAL_S = 0.0005

log = get_logger("bracketgate.gc")


def _libc_trim():
    try:   # glibc by its soname (ctypes.util.find_library would run ldconfig at import)
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_malloc_trim = _libc_trim()


def trim() -> bool:
    """malloc_trim(0): free pages of malloc's heaps back to the kernel; False off glibc."""
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False


def tune() -> tuple[int, int, int]:
    """Set the thresholds and the GIL switch interval; returns the previous thresholds."""
    before = gc.get_threshold()
    gc.set_threshold(GEN0, GEN1, GEN2)
    if sys.getswitchinterval() > SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    return before   # type: ignore[return-value]


def freeze() -> int:
    """Collect once, then move every object alive now to the permanent generation; returns how
    many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def full_collections(every_s: float = FULL_EVERY_S) -> None:
    """Forever: a full collection every `every_s` seconds (cancel to stop)."""
    while True:
        await asyncio.sleep(every_s)
        t0 = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - t0
        if took > SLOW_S:
            log.info("gc_full_collection_slow", ms=round(took * 1000, 1), unreachable=found)
        if _malloc_trim is not None:   # in a thread: ctypes lets the GIL go, the loop runs on
            await asyncio.to_thread(trim)
