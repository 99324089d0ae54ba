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
`freeze()` (at ready): what start-up built (modules, classes, settings, the recovered book) goes
                       to the permanent generation, which no collection walks again.

Cycles are still collected: young ones within GEN0 allocations, older ones by the full
collections CPython still runs (after GEN1 x GEN2 young ones, once the old generation grew by a
quarter). Garbage cycles wait for at most GEN0 tracked objects (a few MB at worst, none on the
hot path as measured); 10,000 took the same CPU per proposal as 50,000 in the bench.
"""

from __future__ import annotations

import gc

GEN0 = 10_000   # allocations (net of frees) between young collections; CPython's default: 700
GEN1 = 20       # young collections per middle one (default 10)
GEN2 = 100      # middle collections before a full one is considered (default 10)


def tune() -> tuple[int, int, int]:
    """Set the thresholds; returns the previous ones."""
    before = gc.get_threshold()
    gc.set_threshold(GEN0, GEN1, GEN2)
    return before   # type: ignore[return-value]


def freeze() -> int:
    """Collect once, then move every object alive now to the permanent generation; returns how
    many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
