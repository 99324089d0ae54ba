"""The IB pacer (adapters/pacer.py) on an injected clock: budget, priorities, a bracket's
three legs in one turn, what really left, cancellation and close. `grant()` is called by hand
after the clock moves (the loop timer it arms may also fire; with the clock still, it grants
nothing new)."""

from __future__ import annotations

import asyncio

import pytest

from bracketgate.adapters.pacer import Pacer, PacerClosed, Priority


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)   # let the waiting tasks run up to their await (no timing)


def drain(pacer: Pacer) -> None:
    """Spend the whole bucket as messages nobody acquired."""
    pacer.note_sent(int(pacer.tokens()))
    assert pacer.tokens() < 1


async def test_within_the_burst_acquires_at_once_and_each_send_is_counted_once() -> None:
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    await p.acquire(Priority.ORDER, 3)
    assert p.tokens() == pytest.approx(1)
    p.note_sent(3)                       # the three legs: paid by the acquire
    assert p.tokens() == pytest.approx(1)
    assert p.stats.sent == 3 and p.stats.unpaced == 0


async def test_a_send_nobody_acquired_is_taken_from_the_bucket_even_below_zero() -> None:
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    p.note_sent(6)                       # e.g. what connectAsync sends on its own
    assert p.tokens() == pytest.approx(-2)
    assert p.stats.unpaced == 6
    task = asyncio.create_task(p.acquire(Priority.DATA))
    await settle()
    clock.advance(0.25)                  # 2 tokens later: 0, still below 1
    p.grant()
    await settle()
    assert not task.done()
    clock.advance(0.125)                 # -2 + 3 = 1
    p.grant()
    await settle()
    assert task.done()


async def test_priorities_protect_then_order_then_data_fifo_within_a_class() -> None:
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    drain(p)
    order: list[str] = []

    async def want(name: str, prio: Priority) -> None:
        await p.acquire(prio)
        order.append(name)

    tasks = [asyncio.create_task(want(n, pr)) for n, pr in (
        ("data-1", Priority.DATA), ("order-1", Priority.ORDER), ("data-2", Priority.DATA),
        ("cancel-1", Priority.PROTECT), ("order-2", Priority.ORDER), ("cancel-2", Priority.PROTECT))]
    await settle()
    assert order == []
    for _ in range(6):
        clock.advance(0.125)               # one token each time
        p.grant()
        await settle()
    assert order == ["cancel-1", "cancel-2", "order-1", "order-2", "data-1", "data-2"]
    await asyncio.gather(*tasks)


async def test_a_bracket_waits_for_three_tokens_and_nothing_lower_passes_it() -> None:
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    drain(p)
    clock.advance(0.25)   # exactly 2 tokens
    assert p.tokens() == pytest.approx(2)
    bracket = asyncio.create_task(p.acquire(Priority.ORDER, 3))
    data = asyncio.create_task(p.acquire(Priority.DATA, 1))
    await settle()
    p.grant()
    await settle()
    assert not bracket.done() and not data.done()   # 2 tokens would pay the data, but it waits
    clock.advance(0.125)
    p.grant()
    await settle()
    assert bracket.done() and not data.done()
    assert p.tokens() == pytest.approx(0)
    clock.advance(0.125)
    p.grant()
    await settle()
    assert data.done()


async def test_a_cancelled_waiter_spends_nothing_and_the_next_one_moves_up() -> None:
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    drain(p)
    first = asyncio.create_task(p.acquire(Priority.ORDER, 3))
    second = asyncio.create_task(p.acquire(Priority.ORDER, 1))
    await settle()
    first.cancel()
    await settle()
    assert first.cancelled()
    assert p.queued() == 1
    clock.advance(0.125)
    p.grant()
    await settle()
    assert second.done() and not second.cancelled()


async def test_close_fails_every_waiter_and_later_acquires() -> None:
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    drain(p)
    waiters = [asyncio.create_task(p.acquire(pr)) for pr in Priority]
    await settle()
    p.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, PacerClosed) for r in results)
    with pytest.raises(PacerClosed):
        await p.acquire(Priority.PROTECT)


async def test_headroom_counts_the_backlog_and_promises_and_promises_expire() -> None:
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    assert p.headroom(2.0) == pytest.approx(4 + 16)
    p.promise(4, within_s=2.0)            # an approval: what-if + three legs to come
    assert p.headroom(2.0) == pytest.approx(16)
    await p.acquire(Priority.ORDER, 1)    # the what-if goes: one promised message used
    p.note_sent()
    assert p.headroom(2.0) == pytest.approx(3 + 16 - 3)
    drain(p)
    queued = asyncio.create_task(p.acquire(Priority.ORDER, 3))   # the legs wait: backlog
    await settle()
    assert p.queued(Priority.ORDER) == 3
    assert p.headroom(2.0) == pytest.approx(p.tokens() + 16 - 3)
    data = asyncio.create_task(p.acquire(Priority.DATA, 5))      # data does not delay orders
    await settle()
    assert p.headroom(2.0) == pytest.approx(p.tokens() + 16 - 3)
    p.promise(8, within_s=1.0)
    assert p.headroom(2.0) == pytest.approx(p.tokens() + 16 - 3 - 8)
    clock.advance(1.0)                    # the promise expired unused (rejected after approval)
    p.grant()
    await settle()
    assert queued.done()
    assert p.headroom(2.0) == pytest.approx(p.tokens() + 16 - p.queued(Priority.ORDER))
    p.close()
    await asyncio.gather(data, return_exceptions=True)


async def test_bucket_bound_any_second_carries_at_most_burst_plus_rate() -> None:
    """Driven by acquires only, sends per 1 s window never exceed burst + rate."""
    clock = FakeTime()
    p = Pacer(40, time=clock)             # default burst: 4
    sent_at: list[float] = []
    for _ in range(400):
        while p.tokens() < 1:
            clock.advance(0.005)
        await p.acquire(Priority.DATA)
        p.note_sent()
        sent_at.append(clock.t)
    worst = max(sum(1 for t in sent_at if s <= t < s + 1.0) for s in sent_at)
    assert worst <= 4 + 40
    assert p.stats.peak_per_s == worst


def test_rate_and_burst_are_checked() -> None:
    with pytest.raises(ValueError):
        Pacer(0)
    with pytest.raises(ValueError):
        Pacer(8, burst=2)


async def test_a_waiter_granted_later_sends_on_its_grant_not_on_the_bucket_again() -> None:
    """A waiter's turn pays its messages once: the send right after its acquire spends the
    grant's credit (it used to be reset before the waiting task ran, so each message that had
    waited was paid twice and a saturated pacer sent at half its rate)."""
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    drain(p)
    unpaced = p.stats.unpaced

    async def send_after_turn(n: int) -> None:
        await p.acquire(Priority.ORDER, n)
        p.note_sent(n)

    what_if = asyncio.create_task(send_after_turn(1))
    legs = asyncio.create_task(send_after_turn(3))
    await settle()
    clock.advance(0.125)                 # one token: the what-if's turn
    p.grant()
    await settle()
    assert what_if.done()
    assert p.tokens() == pytest.approx(0)
    clock.advance(0.375)                 # three more: the legs' turn
    p.grant()
    await settle()
    assert legs.done()
    assert p.stats.unpaced == unpaced    # every send after a wait was paid by its grant
    assert p.tokens() == pytest.approx(0)
    assert p.stats.max_wait_by["ORDER"] == pytest.approx(0.5)


async def test_saturated_a_what_if_admitted_by_the_headroom_gets_its_turn_within_the_horizon() -> None:
    """The governor's use of the pacer at saturation (the 1M soak's mix, on an injected clock):
    each step it admits every bracket the headroom has room for (what-if + 3 legs promised
    within the horizon), the what-if queues for its turn, its answer comes 50 ms after it
    left, then the legs queue; half the brackets' entries are cancelled (PROTECT, unpromised)
    1 s after the legs. An admitted what-if must leave within the horizon (its timeout is twice
    that), the bucket must send at its rate, and no 1 s window may carry more than burst + rate."""
    clock = FakeTime()
    rate, horizon, step = 40.0, 2.5, 0.01
    p = Pacer(rate, time=clock)          # burst 4
    waits: list[float] = []
    sent_at: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    brackets = 0

    async def send(prio: Priority, n: int) -> None:
        await p.acquire(prio, n)
        p.note_sent(n)
        sent_at.extend([clock.t] * n)

    async def bracket(k: int) -> None:
        admitted = clock.t
        await send(Priority.ORDER, 1)                  # the what-if
        waits.append(clock.t - admitted)
        answer = clock.t + 0.05
        while clock.t < answer:
            await asyncio.sleep(0)
        await send(Priority.ORDER, 3)                  # the legs, one turn
        if k % 2:
            cancel_at = clock.t + 1.0
            while clock.t < cancel_at:
                await asyncio.sleep(0)
            await send(Priority.PROTECT, 1)            # cancel_entry_after_s

    start = clock.t
    while clock.t - start < 30.0:
        while p.headroom(horizon) >= 4:                # the rate rule, then _reserve's promise
            p.promise(4, horizon)
            t = asyncio.create_task(bracket(brackets))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            brackets += 1
            await settle()                             # its what-if queues before the next check
        clock.advance(step)
        p.grant()
        await settle()
    for t in list(tasks):
        t.cancel()                                     # the clock stops: none would finish
    await asyncio.gather(*tasks, return_exceptions=True)
    assert max(waits) <= horizon + 0.5, f"a what-if waited {max(waits):.2f}s for its turn"
    steady = [t for t in sent_at if t - start >= 5.0]
    assert len(steady) / (clock.t - start - 5.0) >= 0.95 * rate    # the bucket's full rate
    assert p.stats.unpaced == 0
    worst = max(sum(1 for t in sent_at if s <= t < s + 1.0) for s in sent_at[::10])
    assert worst <= p.burst + rate


async def test_a_late_bracket_uses_its_own_promise_never_another_approvals() -> None:
    """Promises are keyed by proposal: legs that come after their own promise expired use up
    none (they count as backlog while queued), so a later approval's promise stays counted."""
    clock = FakeTime()
    p = Pacer(8, burst=4, time=clock)
    base = p.headroom(2.0)                    # 4 + 16
    p.promise(4, within_s=2.0, key="a")
    clock.advance(1.5)
    p.promise(4, within_s=2.0, key="b")
    await p.acquire(Priority.ORDER, 1, key="b")   # b's what-if: b's promise, 3 left
    p.note_sent()
    clock.advance(1.0)                        # a's promise expired (a's what-if was slow)
    assert p.headroom(2.0) == pytest.approx(p.tokens() + 16 - 3)
    await p.acquire(Priority.ORDER, 3, key="a")   # a's legs: nothing of b's is used up
    p.note_sent(3)
    assert p.headroom(2.0) == pytest.approx(p.tokens() + 16 - 3)
    clock.advance(0.25)                       # two more tokens: 3, the legs' turn at once
    await p.acquire(Priority.ORDER, 3, key="b")   # b's legs: b's promise done
    p.note_sent(3)
    assert p.headroom(2.0) == pytest.approx(p.tokens() + 16)
    clock.advance(10)
    assert p.headroom(2.0) == pytest.approx(base)
    assert p._promised == {}                  # expired keys are forgotten (bounded)


# --------------------------------------------------------------------------- error 100


async def test_a_violation_drains_the_bucket_and_holds_all_but_protect() -> None:
    clock = FakeTime()
    p = Pacer(40, burst=4, time=clock, hold_s=1.0, backoff=0.5, recover_s=10.0)
    p.note_sent(2)
    assert p.violation() == 2                       # its own count of the last second
    assert p.tokens() <= 0 and p.stats.violations == 1
    order = asyncio.create_task(p.acquire(Priority.ORDER, 3))
    data = asyncio.create_task(p.acquire(Priority.DATA))
    cancel = asyncio.create_task(p.acquire(Priority.PROTECT))
    await settle()
    clock.advance(0.06)                             # > 1 token at the lowered rate (20/s)
    p.grant()
    await settle()
    assert cancel.done() and not order.done() and not data.done()   # a cancel is not held
    clock.advance(0.5)                              # tokens enough, still within the hold
    p.grant()
    await settle()
    assert not order.done() and not data.done()
    assert p.headroom(0.2) <= p.tokens()            # nothing is paid while held
    clock.advance(0.5)                              # the hold is over
    p.grant()
    await settle()
    assert order.done() and data.done()


async def test_a_violation_lowers_the_rate_for_a_while_then_restores_it() -> None:
    clock = FakeTime()
    p = Pacer(40, burst=4, time=clock, hold_s=1.0, backoff=0.5, recover_s=10.0)
    p.violation()
    assert p.rate == 20 and p.base_rate == 40
    clock.advance(1.0 + 9.0)
    p.tokens()
    assert p.rate == 20
    clock.advance(1.5)
    assert p.tokens() == pytest.approx(4)          # refilled (capped at the burst)
    assert p.rate == 40


async def test_a_protect_acquire_during_a_hold_is_not_parked_behind_the_hold_timer() -> None:
    """The timer armed for a held ORDER waiter (the hold's end) is re-armed for a cancel:
    the loop's own timer grants it once a token is there, no manual grant()."""
    p = Pacer(40, burst=4, hold_s=5.0, backoff=1.0)   # the loop's clock
    p.violation()
    order = asyncio.create_task(p.acquire(Priority.ORDER))
    await settle()
    await asyncio.wait_for(p.acquire(Priority.PROTECT), 1.0)   # 1/40 s for its token
    assert not order.done()
    order.cancel()


def test_a_bad_backoff_is_refused() -> None:
    with pytest.raises(ValueError):
        Pacer(40, backoff=0.0)
