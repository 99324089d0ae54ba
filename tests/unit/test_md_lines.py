"""The market-data line budget alone (adapters/md_lines.py): LRU, pins, refusals, IB's 101."""

from __future__ import annotations

import pytest

from bracketgate.adapters.md_lines import REFUSALS_MAX, LineBudget, LinesFull


def test_the_least_recently_used_unpinned_line_is_given_up():
    b = LineBudget(3)
    assert [b.claim(c) for c in (1, 2, 3)] == [[], [], []]
    b.touch(1)                                   # 2 is now the oldest
    assert b.claim(4) == [2] and b.held() == [3, 1, 4]
    assert b.claim(4) == [] and b.held() == [3, 1, 4]   # held already: only touched
    b.add_pins(lambda: {3})
    assert b.claim(5) == [1] and b.evictions == 2
    assert b.claim(6, hold={4}) == [5]           # the same proposal's other leg is kept


def test_every_line_pinned_refuses_and_gives_nothing_up():
    b = LineBudget(2)
    b.claim(1)
    b.claim(2)
    with pytest.raises(LinesFull) as e:
        b.claim(3, own_pins=lambda: {1, 2})
    r = e.value.refusal
    assert (r.limit, r.in_use, r.pinned, r.ib_code) == (2, 2, 2, None)
    assert "line budget is full: 2 of 2 lines, 2 pinned" in r.detail()
    assert b.held() == [1, 2] and b.refusals[3] is r and b.full_refusals == 1
    b.claim(3, own_pins=lambda: {1})             # one unpinned: it goes, the refusal is forgotten
    assert b.held() == [1, 3] and 3 not in b.refusals


def test_ibs_101_lowers_the_ceiling_until_the_next_connection():
    b = LineBudget(4)
    for c in (1, 2, 3):
        b.claim(c)
    r = b.refused_by_ib(3)                       # IB took two: other tools hold the rest
    assert (r.limit, r.in_use, r.ib_code) == (2, 2, 101) and "error 101" in r.detail()
    assert b.ceiling == 2 and b.held() == [1, 2] and b.ib_refusals == 1
    assert b.claim(3) == [1]                      # within what IB accepts
    b.new_connection()
    assert b.ceiling == 4 and b.claim(5) == []


def test_refusals_are_bounded_and_the_budget_must_be_positive():
    b = LineBudget(1)
    b.claim(0)
    for c in range(1, REFUSALS_MAX + 50):
        with pytest.raises(LinesFull):
            b.claim(c, own_pins=lambda: {0})
    assert len(b.refusals) == REFUSALS_MAX and REFUSALS_MAX + 49 in b.refusals
    with pytest.raises(ValueError):
        LineBudget(0)
