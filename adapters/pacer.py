"""One pacer for every message the daemon sends to IB (IB answers error 100 above 50/s).

A token bucket: `rate` messages per second, at most `burst` at once. The adapter awaits
`acquire(priority, n)` right before it sends `n` messages (a bracket's three legs are one
acquire of 3, so its transmit chain is never split by a wait) and then sends them in the same
step. Every message that really leaves (the adapter wraps the client's `sendMsg`) is counted by
`note_sent`: one paid by an acquire spends that credit, one nobody acquired (what
`connectAsync` sends at start) is taken from the bucket anyway, even below zero, so the next
acquires wait for it. Any interval of T seconds thus carries at most `burst + rate x T`
messages, which is what IB's per-second window sees, give or take network jitter: the default
40/s with a burst of 4 leaves 6 messages of margin under 50 for that jitter.

Waiters are served by priority class, FIFO within a class; a lower class never passes a
waiting higher one: PROTECT (cancels, protective orders) > ORDER (placements, what-ifs) >
DATA (contract details, quotes, P&L, executions, heartbeats, resync).

Jitter on IB's side (a stalled reader, the network) can still bunch messages sent within the
budget into one of IB's windows: IB then answers error 100 and drops the message. The adapter
calls `violation()` on that error: the bucket is drained and nothing but PROTECT goes for
`hold_s` (1 s: IB's window empties; cancels are never held, they go at the rate), logged as
`ib_pacing_violation` with the pacer's own count of the last second; then the rate is lowered
by `backoff` (x0.875: 40 -> 35/s) for `recover_s` (60 s) and comes back by itself.

The governor reads `headroom(horizon_s)` (order messages that can still go within the horizon,
given the PROTECT + ORDER backlog and what it has already promised) and `promise(n, within_s,
key)` for each approval; promises are consumed by ORDER acquires (those of the same key when
the acquire names one: a bracket's late legs never use up another approval's promise) and
expire after their horizon.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from bracketgate.bus.errors import BrokerNotConnected
from bracketgate.core.logs import get_logger

log = get_logger("adapters.pacer")

DEFAULT_RATE = 40.0
IB_LIMIT_PER_S = 50
HOLD_S = 1.0         # after an error 100: only PROTECT goes for this long
BACKOFF = 0.875      # ... then the rate is this share of the configured one (40 -> 35)
RECOVER_S = 60.0     # ... for this long


class Priority(IntEnum):
    PROTECT = 0   # cancels and protective orders: they only lower risk
    ORDER = 1     # bracket placements and what-ifs
    DATA = 2      # contract details, quotes, P&L, executions, heartbeats, resync


class PacerClosed(BrokerNotConnected):
    """The pacer was closed while a request waited for its turn (nothing was sent)."""


@dataclass(eq=False)
class _Waiter:
    n: int
    future: asyncio.Future[None]


@dataclass
class PacerStats:
    sent: int = 0                                   # messages that left, all of them
    unpaced: int = 0                                # of which sent without an acquire
    acquired: dict[str, int] = field(default_factory=lambda: {p.name: 0 for p in Priority})
    peak_per_s: int = 0                             # most messages in any 1 s window
    max_wait_s: float = 0.0                         # longest an acquire waited
    max_wait_by: dict[str, float] = field(default_factory=lambda: {p.name: 0.0 for p in Priority})
    violations: int = 0                             # IB error 100 answers (pacing violations)


class Pacer:
    """The bucket and its queues. `time` is the loop's clock unless injected (unit tests call
    `grant()` by hand after moving an injected clock; the loop timer is armed either way)."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: float | None = None, *,
                 time: Callable[[], float] | None = None, hold_s: float = HOLD_S,
                 backoff: float = BACKOFF, recover_s: float = RECOVER_S) -> None:
        if rate <= 0:
            raise ValueError("pacer rate must be > 0 messages per second")
        if not 0 < backoff <= 1:
            raise ValueError("pacer backoff must be in (0, 1]")
        self.rate = float(rate)
        self.base_rate = self.rate
        self.hold_s, self.backoff, self.recover_s = hold_s, backoff, recover_s
        self._hold_until = float("-inf")    # only PROTECT is granted before this
        self._slow_until = float("-inf")    # the rate is lowered (backoff) before this
        self.burst = float(burst if burst is not None else max(3.0, round(rate / 10)))
        if self.burst < 3:
            raise ValueError("pacer burst must admit one bracket (3 messages)")
        self._time = time
        self._tokens = self.burst
        self._stamp: float | None = None   # set on first use (built outside a running loop)
        self._queues: tuple[deque[_Waiter], ...] = tuple(deque() for _ in Priority)
        self._credits = 0              # messages paid by acquires of this loop step, not sent yet
        self._credit_reset: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._promises: deque[list] = deque()   # [expires_at, n, key] oldest first
        self._promised: dict[str, list] = {}    # key -> its entry in _promises (while live)
        self._sent_times: deque[float] = deque()       # send times in the last second (peak)
        self._closed = False
        self.stats = PacerStats()

    # ------------------------------------------------------------------ clock and bucket

    def _now(self) -> float:
        return self._time() if self._time is not None else asyncio.get_running_loop().time()

    def _refill(self, now: float) -> None:
        if self.rate != self.base_rate and now >= self._slow_until and self._stamp is not None:
            self._refill_at(min(now, self._slow_until))   # the slow part at the slow rate
            self.rate = self.base_rate
            log.info("ib_pacer_rate_restored", rate=self.rate)
        self._refill_at(now)

    def _refill_at(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
        elif now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def tokens(self) -> float:
        self._refill(self._now())
        return self._tokens

    def queued(self, through: Priority = Priority.DATA) -> int:
        """Messages waiting in the classes up to and including `through`."""
        return sum(w.n for q in self._queues[: through + 1] for w in q if not w.future.done())

    # ------------------------------------------------------------------ acquiring

    async def acquire(self, priority: Priority, n: int = 1, key: str | None = None) -> None:
        """Wait for the turn of `n` messages the caller sends right after, in the same step
        (`key`: the approval whose promise they use, see `promise`).
        Cancellation-safe: a cancelled waiter sends nothing and spends nothing."""
        if self._closed:
            raise PacerClosed("the IB pacer is closed")
        if n <= 0:
            return
        if priority is Priority.ORDER:
            self._consume_promises(n, key)
        now = self._now()
        self._refill(now)
        ahead = any(self._queues[p] for p in range(priority + 1))
        if not ahead and self._tokens >= min(n, self.burst) and not self._held(priority, now):
            self._take(priority, n)
            self._credit(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(n, fut)
        self._queues[priority].append(waiter)
        if priority is Priority.PROTECT and self._timer is not None:
            self._timer.cancel()     # the armed timer may be a held class's (hold end)
            self._timer = None
        self._arm()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._refund(n)        # granted, then cancelled before it could send
            else:
                self._discard(priority, waiter)
            raise
        finally:
            waited = self._now() - now
            self.stats.max_wait_s = max(self.stats.max_wait_s, waited)
            if waited > self.stats.max_wait_by[priority.name]:
                self.stats.max_wait_by[priority.name] = waited
        # the grant paid the tokens; the credit starts now, in the step the caller sends in
        # (given at grant time, it was reset before this task ran: each send paid twice)
        self._credit(n)

    def _take(self, priority: Priority, n: int) -> None:
        self._tokens -= n
        self.stats.acquired[priority.name] += n

    def _credit(self, n: int) -> None:
        """`n` sends of the acquirer's current step are paid (by its `_take`)."""
        self._credits += n
        if self._credit_reset is None:
            # credits live for this loop step only: the caller sends right after its acquire
            self._credit_reset = asyncio.get_running_loop().call_soon(self._reset_credits)

    def _reset_credits(self) -> None:
        self._credits = 0
        self._credit_reset = None

    def _refund(self, n: int) -> None:
        self._tokens = min(self.burst, self._tokens + n)   # granted, never credited: unsent
        self.grant()

    def _discard(self, priority: Priority, waiter: _Waiter) -> None:
        try:
            self._queues[priority].remove(waiter)
        except ValueError:
            pass
        self.grant()   # the head may have changed

    def grant(self) -> None:
        """Hand the turn to every head waiter the bucket can pay for, highest class first."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._now()
        self._refill(now)
        for priority in Priority:
            q = self._queues[priority]
            while q:
                head = q[0]
                if head.future.done():          # cancelled meanwhile
                    q.popleft()
                    continue
                if self._tokens < min(head.n, self.burst) or self._held(priority, now):
                    self._arm()
                    return                      # lower classes wait behind this one
                q.popleft()
                self._take(priority, head.n)
                head.future.set_result(None)

    def _arm(self) -> None:
        if self._timer is not None or self._closed:
            return
        first = next(((p, w) for p in Priority for w in self._queues[p] if not w.future.done()),
                     None)
        if first is None:
            return
        head_class, head = first
        missing = min(head.n, self.burst) - self._tokens
        delay = max(0.0, missing / self.rate)
        if self._held(head_class, self._now()):
            delay = max(delay, self._hold_until - self._now())
        self._timer = asyncio.get_running_loop().call_later(delay, self.grant)

    def _held(self, priority: Priority, now: float) -> bool:
        return priority is not Priority.PROTECT and now < self._hold_until

    # ------------------------------------------------------------------ IB said: too fast

    def violation(self) -> int:
        """IB answered error 100 (a message was dropped): drain the bucket, hold everything
        but PROTECT for `hold_s`, then lower the rate by `backoff` for `recover_s`. Returns
        the messages the pacer saw leave in the last second."""
        now = self._now()
        self._refill(now)
        last_s = self.sent_last_second()
        self.stats.violations += 1
        self._tokens = min(self._tokens, 0.0)
        self._hold_until = now + self.hold_s
        self._slow_until = now + self.hold_s + self.recover_s
        self.rate = max(1.0, self.base_rate * self.backoff)
        log.warning("ib_pacing_violation", sent_last_s=last_s, rate=self.rate,
                    base_rate=self.base_rate, burst=self.burst, hold_s=self.hold_s,
                    violations=self.stats.violations, code=100)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._arm()
        return last_s

    # ------------------------------------------------------------------ what really left

    def note_sent(self, count: int = 1) -> None:
        """Called for every message written to IB: spends an acquire's credit, else the bucket."""
        now = self._now()
        for _ in range(count):
            self.stats.sent += 1
            if self._credits > 0:
                self._credits -= 1
            else:
                self._refill(now)
                self._tokens -= 1
                self.stats.unpaced += 1
            times = self._sent_times
            times.append(now)
            while times and now - times[0] >= 1.0:
                times.popleft()
            self.stats.peak_per_s = max(self.stats.peak_per_s, len(times))

    def sent_last_second(self) -> int:
        """Messages that left in the last second (what IB's 50/s window sees; metrics)."""
        now, times = self._now(), self._sent_times
        while times and now - times[0] >= 1.0:
            times.popleft()
        return len(times)

    # ------------------------------------------------------------------ the governor's view

    def headroom(self, horizon_s: float) -> float:
        """Order messages that can still go within `horizon_s`: what the bucket pays in that
        time, less the PROTECT + ORDER backlog and what approvals were already promised."""
        now = self._now()
        self._refill(now)
        self._expire_promises(now)
        promised = sum(entry[1] for entry in self._promises)
        paying = max(0.0, horizon_s - max(0.0, self._hold_until - now))   # none while held
        return self._tokens + self.rate * paying - self.queued(Priority.ORDER) - promised

    def promise(self, n: int, within_s: float, key: str | None = None) -> None:
        """An approval will send `n` order messages within `within_s` (expires after it).
        With a `key` (its proposal_id), only ORDER acquires of that key use it up; a keyed
        acquire whose promise expired uses none (its messages count as backlog while queued)."""
        entry = [self._now() + within_s, float(n), key]
        self._promises.append(entry)
        if key is not None:
            self._promised[key] = entry

    def _expire_promises(self, now: float) -> None:
        while self._promises and self._promises[0][0] <= now:
            self._drop_promise(self._promises.popleft())

    def _drop_promise(self, entry: list) -> None:
        if entry[2] is not None and self._promised.get(entry[2]) is entry:
            del self._promised[entry[2]]

    def _consume_promises(self, n: int, key: str | None = None) -> None:
        if key is not None:
            entry = self._promised.get(key)
            if entry is not None and entry[0] > self._now():
                entry[1] = max(0.0, entry[1] - n)   # left in place (0) until it expires
            return                                  # expired or never promised: none used
        left = float(n)
        while left > 0 and self._promises:
            first = self._promises[0]
            used = min(first[1], left)
            first[1] -= used
            left -= used
            if first[1] <= 0:
                self._drop_promise(self._promises.popleft())

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Fail every waiter with PacerClosed; later acquires fail at once."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for q in self._queues:
            while q:
                w = q.popleft()
                if not w.future.done():
                    w.future.set_exception(PacerClosed("the IB pacer closed before this request's turn"))

    @property
    def closed(self) -> bool:
        return self._closed
