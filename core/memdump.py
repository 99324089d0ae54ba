"""SIGUSR2: where the daemon's memory is, for an operator watching RSS grow.

With tracemalloc on (`PYTHONTRACEMALLOC=1`, or `PYTHONTRACEMALLOC=10` for ten frames; it costs
CPU and memory, so only for a diagnosis) a snapshot is written to `DATA_DIR/memory/<UTC
time>.tracemalloc` (compare two with `python -m bracketgate.core.memdump OLD NEW`) and the top
allocation sites are logged (`memory_top`: file:line, size_kib, count). Without it the live
objects are counted by type (`memory_types`: the 25 most numerous), which needs no restart; with `MEMDUMP_HOLDERS=<type>`
also who holds the newest three objects of that type (`memory_holders`, two levels up). Objects
frozen at ready (start-up's, core/gctune.py) are counted apart (`gc_frozen`), not listed. Both
log `memory_dump` first with the RSS, tracemalloc's traced size and the collector's counts,
then `memory_books`: the size of every id-keyed structure the composition root registered
(`register_sizes`; core/bounds.py names each one's bound).
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.memory")
TOP = 25
_sizers: dict[str, Callable[[], dict[str, int]]] = {}   # name -> what memory_books reports


def register_sizes(name: str, fn: Callable[[], dict[str, int]]) -> None:
    """`fn()` -> {structure: size}, logged by every dump as `memory_books` (core/bounds.py);
    registering a name again replaces it (a daemon started twice in one process)."""
    _sizers[name] = fn


def book_sizes() -> dict[str, int]:
    out: dict[str, int] = {}
    for fn in list(_sizers.values()):
        try:
            out.update(fn())
        except Exception as e:   # a diagnosis never takes the daemon down
            log.warning("memory_books_failed", error=repr(e))
    return out


def rss_kib(pid: int | str = "self") -> int:
    """A process's resident set (VmRSS) in KiB, 0 when it cannot be read (this one by default)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _holders(obj: object, skip: list) -> list[str]:
    """The referrers of `obj` and theirs, by type (frames and our own lists left out)."""
    out: list[str] = []
    first = [r for r in gc.get_referrers(obj)
             if not any(r is x for x in skip) and not isinstance(r, types.FrameType)]
    for r in first[:8]:
        up = [type(u).__qualname__ for u in gc.get_referrers(r)
              if u is not first and not any(u is x for x in skip)
              and not isinstance(u, types.FrameType)][:6]
        out.append(f"{type(r).__qualname__} <- {', '.join(up)}")
    return out


def dump(data_dir: Path) -> Path | None:
    """Log where the memory is; with tracemalloc on, write a snapshot and return its path."""
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    # start-up's objects, frozen at ready (core/gctune.py), are neither listed nor unfrozen:
    # freezing again would make every cycle alive now immortal (the IB library's trades are)
    frozen = gc.get_freeze_count()
    wanted = os.environ.get("MEMDUMP_HOLDERS", "")
    objects = gc.get_objects()
    samples = [o for o in objects if type(o).__qualname__ == wanted][-3:] if wanted else []
    holders = [_holders(o, [objects, samples]) for o in samples]
    log.warning("memory_dump", rss_kib=rss_kib(), traced_kib=None if traced is None else traced // 1024,
                gc_counts=list(gc.get_count()), gc_objects=len(objects), gc_frozen=frozen)
    if _sizers:
        log.warning("memory_books", sizes=book_sizes())
    counts = None if tracemalloc.is_tracing() else Counter(type(o).__qualname__ for o in objects)
    del objects, samples
    for held in holders:   # who holds the newest few of that type (two levels up)
        log.warning("memory_holders", type=wanted, holders=held)
    if counts is not None:
        for name, n in counts.most_common(TOP):
            log.warning("memory_types", type=name, count=n)
        return None
    snap = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ))
    for stat in snap.statistics("lineno")[:TOP]:
        frame = stat.traceback[0]
        log.warning("memory_top", site=f"{frame.filename}:{frame.lineno}",
                    size_kib=round(stat.size / 1024, 1), count=stat.count)
    out = data_dir / "memory"
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = out / time.strftime("%Y%m%dT%H%M%SZ.tracemalloc", time.gmtime())
    snap.dump(str(path))
    log.warning("memory_snapshot", path=str(path))
    return path


def compare(old: str, new: str, top: int = TOP) -> list[str]:
    """What grew from snapshot `old` to `new`, by allocation site (largest growth first)."""
    a = tracemalloc.Snapshot.load(old)
    b = tracemalloc.Snapshot.load(new)
    return [str(s) for s in b.compare_to(a, "lineno")[:top]]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bracketgate.core.memdump OLD.tracemalloc NEW.tracemalloc")
    print("\n".join(compare(sys.argv[1], sys.argv[2])))
