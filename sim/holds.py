"""Paper TWS failure switches for answers (tests only): the next request of a kind is lost or late.

Beside sim/server.py, which asks `AnswerHolds.intercept` before it answers one of these:

    open_orders       reqOpenOrders / reqAllOpenOrders: its answer (every openOrder, orderStatus
                      and openOrderEnd) is never sent (`lose`) or sent `seconds` later (`delay`)
    completed_orders  reqCompletedOrders: the same for its completedOrder list and its end
    cancel            cancelOrder (of an order whose orderRef is `order_ref`, if one is named):
                      the message is lost on its way (`lose`: the order stays working, IB sends
                      nothing) or reaches the engine `seconds` later (`delay`)
    commission_reports  reqExecutions: the commissionReports of its executions are not sent
                      after each execDetails but never (`lose`) or `seconds` after its
                      execDetailsEnd (`delay`): the captures do not settle that real TWS always
                      sends them before the end

Each switch serves `count` requests, then is gone; `POST /reset` clears them. What the real
gateway does under load (an answer queued behind a flood, a message dropped by pacing), made
deterministic so a test can show what the daemon does with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

KINDS = frozenset({"open_orders", "completed_orders", "cancel", "commission_reports"})
MODES = frozenset({"lose", "delay"})


@dataclass
class Hold:
    kind: str
    mode: str
    seconds: float = 0.0
    count: int = 1
    order_ref: str = ""      # cancel only: match this orderRef ("" = any order)


class AnswerHolds:
    """The switches set through the control port (`POST /answer_hold`)."""

    def __init__(self) -> None:
        self._holds: list[Hold] = []
        self.lost = 0          # answers / messages lost so far
        self.delayed = 0

    def set(self, kind: str, mode: str, *, seconds: float = 0.0, count: int = 1,
            order_ref: str = "") -> Hold:
        if kind not in KINDS:
            raise ValueError(f"answer_hold request must be one of {sorted(KINDS)}")
        if mode not in MODES:
            raise ValueError(f"answer_hold mode must be one of {sorted(MODES)}")
        if count < 1 or seconds < 0 or (mode == "delay" and seconds <= 0):
            raise ValueError("answer_hold needs count >= 1 and, to delay, seconds > 0")
        hold = Hold(kind, mode, float(seconds), int(count), order_ref)
        self._holds.append(hold)
        return hold

    def clear(self) -> None:
        self._holds.clear()

    def __bool__(self) -> bool:
        return bool(self._holds)

    def intercept(self, kind: str, answer: Callable[[], None], order_ref: str = "") -> bool:
        """True when a switch took this request (`answer` is then never or later called);
        False: the caller answers now."""
        hold = next((h for h in self._holds if h.kind == kind
                     and (not h.order_ref or h.order_ref == order_ref)), None)
        if hold is None:
            return False
        hold.count -= 1
        if hold.count <= 0:
            self._holds.remove(hold)
        if hold.mode == "lose":
            self.lost += 1
            return True
        self.delayed += 1
        asyncio.get_running_loop().call_later(hold.seconds, answer)
        return True
