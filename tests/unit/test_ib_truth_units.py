"""adapters/ib_truth.py's pieces without a socket: the bounded set that keeps what IB said is
dead or absent (the books _settled / _absent), oldest forgotten first."""

from __future__ import annotations

from bracketgate.adapters.ib_truth import SETTLED_MAX, BoundedSet


def test_bounded_set_forgets_the_oldest_past_its_cap() -> None:
    s = BoundedSet(3)
    for i in range(1, 6):
        s.add(i)
    assert len(s) == 3 and list(s) == [3, 4, 5]
    assert 1 not in s and 5 in s
    s.add(3)                      # re-added: the newest now
    s.add(6)
    assert list(s) == [5, 3, 6]
    s.discard(5)
    s.discard(42)                 # not there: nothing
    assert list(s) == [3, 6]


def test_the_default_cap_is_the_named_bound() -> None:
    s = BoundedSet()
    for i in range(SETTLED_MAX + 10):
        s.add(i)
    assert len(s) == SETTLED_MAX and 0 not in s and SETTLED_MAX + 9 in s
