"""core/gctune.py: the daemon's collector thresholds and the freeze at ready."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bracketgate.core import gctune


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_sets_rare_young_collections_and_returns_the_old_thresholds(restored: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert gctune.tune() == (700, 10, 10)
    assert gc.get_threshold() == (gctune.GEN0, gctune.GEN1, gctune.GEN2)
    assert gctune.GEN0 >= 10_000   # a burst in flight (a few thousand objects) is rarely caught


def test_freeze_moves_what_lives_now_out_of_every_collection(restored: None) -> None:
    kept = [[i] for i in range(3)]   # lists: tracked by the collector
    gc.collect()
    assert any(o is kept[0] for o in gc.get_objects(generation=2))       # old, walked by a full one
    frozen = gctune.freeze()
    assert frozen > 0 and gc.get_freeze_count() == frozen
    assert not any(o is kept[0] for o in gc.get_objects(generation=2))   # permanent now


def test_a_cycle_made_after_tuning_is_still_collected(restored: None) -> None:
    gctune.tune()
    gctune.freeze()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a   # type: ignore[attr-defined]
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


class _Node:
    def __init__(self) -> None:
        self.me = self   # a cycle: reference counting alone never frees it


async def test_an_old_cycle_is_freed_by_the_periodic_full_collection(restored: None) -> None:
    """With the tuned thresholds a cycle that grew old before it died waits for a full
    collection, which CPython itself would run only after ~GEN0*GEN1*GEN2 allocations:
    full_collections frees it within its interval."""
    import asyncio

    gctune.tune()
    node = _Node()
    ref = weakref.ref(node)
    gc.collect()                     # it survives a full collection: now in the oldest generation
    assert any(o is node for o in gc.get_objects(generation=2))
    del node
    for _ in range(3):
        gc.collect(0)                # young collections never reach it
    assert ref() is not None
    task = asyncio.create_task(gctune.full_collections(every_s=0.05))
    try:
        async with asyncio.timeout(5):
            while ref() is not None:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_trim_hands_mallocs_free_pages_back() -> None:
    """Memory freed inside malloc's heaps (blocks past Python's small-object allocator, a live
    one every few) stays resident until malloc_trim: what full_collections now runs after each
    full collection (glibc only)."""
    from bracketgate.core.memdump import rss_kib

    if gctune._malloc_trim is None:
        pytest.skip("no glibc malloc_trim here")
    blocks = [bytearray(2000) for _ in range(40_000)]   # ~80 MB in 2 KB blocks
    keep = blocks[::10]                                  # every tenth stays: no heap top to cut
    del blocks
    freed_but_resident = rss_kib()
    assert gctune.trim() is True
    assert freed_but_resident - rss_kib() > 30 * 1024, "malloc_trim gave back < 30 MB of ~70"
    del keep
