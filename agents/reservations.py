"""The ledger of open brackets the RiskGovernor approved: what they may still add and lose.

A reservation is made in the same synchronous step as the approval and lives until the bracket
closes (a child filled, or every leg ended) or placement fails. While it lives it counts its
worst-case loss against the loss budgets, and its *pending units* — entry quantity not yet
filled, plus filled quantity the latest snapshot's positions do not show yet — against the
position and exposure limits. Per-contract figures are keyed by IB's conId (a stock and its
options are different contracts). Aggregates are kept incrementally so a check is O(1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bracketgate.bus.messages import Leg

# IB order statuses after which a leg does nothing more (lower case)
TERMINAL_STATUSES = frozenset({"filled", "cancelled", "apicancelled", "inactive", "rejected"})
_CANCELLED = TERMINAL_STATUSES - {"filled"}


@dataclass(slots=True, eq=False)
class Reservation:
    """One approved, still-open bracket. `sign` is +1 for a BUY entry, -1 for a SELL entry."""

    proposal_id: str
    agent_id: str
    symbol: str
    con_id: int                          # the contract's IB conId: what the pending units are of
    sign: int
    quantity: float
    entry_price: float
    stop_price: float
    multiplier: float
    worst_case_loss: float
    created_at: datetime
    margin: float = 0.0                  # init margin change confirmed by IB what-if
    fills_qty: float = 0.0               # entry quantity from Fill messages
    status_filled: float = 0.0           # entry quantity from order-status events (cumulative)
    settled_qty: float = 0.0             # entry fills the snapshot's positions already include
    last_fill_at: datetime | None = None
    entry_done: bool = False             # the entry will fill no more (filled or ended)
    exit_filled: float = 0.0
    leg_status: dict[Leg, str] = field(default_factory=dict)

    @property
    def entry_filled(self) -> float:
        return min(self.quantity, max(self.fills_qty, self.status_filled))

    @property
    def pending_units(self) -> float:
        """Units (in the entry's direction) the snapshot's positions do not show yet."""
        unfilled = 0.0 if self.entry_done else self.quantity - self.entry_filled
        return unfilled + max(0.0, self.entry_filled - self.settled_qty)

    @property
    def pending_notional(self) -> float:
        return self.pending_units * self.entry_price * self.multiplier

    @property
    def entry_notional(self) -> float:
        return self.quantity * self.entry_price * self.multiplier


class ReservationLedger:
    """Open reservations and their running totals. Mutate only through its methods."""

    def __init__(self) -> None:
        self._by_id: dict[str, Reservation] = {}                      # proposal_id -> open reservation
        self._by_contract: dict[int, dict[str, Reservation]] = {}     # conId -> proposal_id -> res
        self._by_agent: dict[str, dict[str, Reservation]] = {}        # agent_id -> proposal_id -> res
        self.total_worst_case = 0.0
        self.total_margin = 0.0
        self.gross_pending_notional = 0.0                             # sum |pending notional|
        self.side_pending_notional = [0.0, 0.0]                       # [BUY entries, SELL entries]
        self.agent_worst_case: dict[str, float] = {}                  # agent_id -> sum worst case
        self.agent_pending_notional: dict[str, float] = {}            # agent_id -> sum |pending|
        # conId -> [pending BUY units, pending SELL units, BUY notional, SELL notional]
        self.contract_pending: dict[int, list[float]] = {}

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, proposal_id: object) -> bool:
        return proposal_id in self._by_id

    def get(self, proposal_id: str) -> Reservation | None:
        return self._by_id.get(proposal_id)

    def __iter__(self) -> Iterable[Reservation]:
        return iter(list(self._by_id.values()))

    def agent_open(self, agent_id: str) -> int:
        return len(self._by_agent.get(agent_id, ()))

    def pending_units(self, con_id: int, sign: int) -> float:
        """Units pending in direction `sign` (+1 buys, -1 sells) for one contract."""
        p = self.contract_pending.get(con_id)
        if p is None:
            return 0.0
        return p[0] if sign > 0 else p[1]

    # ------------------------------------------------------------------ changes

    def reserve(self, res: Reservation) -> None:
        if res.proposal_id in self._by_id:
            raise ValueError(f"reservation {res.proposal_id} already open")
        pid = res.proposal_id
        self._by_id[pid] = res
        for index, key in ((self._by_contract, res.con_id), (self._by_agent, res.agent_id)):
            bucket = index.get(key)
            if bucket is None:
                bucket = index[key] = {}
            bucket[pid] = res
        if (res.fills_qty or res.status_filled or res.settled_qty or res.entry_done
                or res.margin or res.last_fill_at is not None):
            self._account(res, +1)
        else:
            self._account_new(res)

    def release(self, proposal_id: str) -> Reservation | None:
        """Forget an open bracket (closed, or never placed). None if it was not open."""
        res = self._by_id.pop(proposal_id, None)
        if res is None:
            return None
        index: dict[Any, dict[str, Reservation]]
        for index, key in ((self._by_contract, res.con_id), (self._by_agent, res.agent_id)):
            bucket = index[key]
            del bucket[proposal_id]
            if not bucket:
                del index[key]
        self._account(res, -1)
        if not self._by_id:  # no float residue when nothing is open
            self.total_worst_case = self.total_margin = 0.0
            self.gross_pending_notional = 0.0
            self.side_pending_notional = [0.0, 0.0]
            self.agent_worst_case.clear()
            self.agent_pending_notional.clear()
            self.contract_pending.clear()
        return res

    def amend(self, proposal_id: str, *, quantity: float | None = None,
              stop_price: float | None = None, worst_case_loss: float | None = None) -> Reservation | None:
        """A bracket changed at IB (agents/commands.py): its size, stop and worst case follow."""
        res = self._by_id.get(proposal_id)
        if res is None:
            return None
        self._account(res, -1)
        if quantity is not None:
            res.quantity = quantity
            res.entry_done = res.entry_done or res.entry_filled >= quantity
        if stop_price is not None:
            res.stop_price = stop_price
        if worst_case_loss is not None:
            res.worst_case_loss = worst_case_loss
        self._account(res, +1)
        return res

    def set_margin(self, proposal_id: str, margin: float) -> None:
        res = self._by_id[proposal_id]
        self.total_margin += margin - res.margin
        res.margin = margin

    def entry_fill(self, proposal_id: str, qty: float, ts: datetime) -> Reservation | None:
        res = self._by_id.get(proposal_id)
        if res is not None:
            self._account(res, -1)
            res.fills_qty += qty
            res.last_fill_at = ts
            if res.entry_filled >= res.quantity:
                res.entry_done = True
            self._account(res, +1)
        return res

    def exit_fill(self, proposal_id: str, qty: float) -> bool:
        """A take-profit/stop fill. True when it closed the bracket (now flat): release it."""
        res = self._by_id.get(proposal_id)
        if res is None:
            return False
        res.exit_filled += qty
        return res.entry_done and res.exit_filled >= res.entry_filled

    def leg_status(self, proposal_id: str, leg: Leg, status: str, filled: float,
                   ts: datetime) -> bool:
        """An order-status step of one leg. True when the bracket is now closed: release it."""
        res = self._by_id.get(proposal_id)
        if res is None:
            return False
        status = status.lower()
        res.leg_status[leg] = status
        if leg is Leg.ENTRY:
            self._account(res, -1)
            if filled > res.status_filled:
                res.status_filled = filled
                res.last_fill_at = ts
            if status in TERMINAL_STATUSES:
                res.entry_done = True
            self._account(res, +1)
            # an entry that ended unfilled takes its children with it (IB cancels them)
            return status in _CANCELLED and res.entry_filled == 0
        if status == "filled":
            return True
        legs = res.leg_status
        children_ended = all(legs.get(x) in TERMINAL_STATUSES for x in (Leg.TAKE_PROFIT, Leg.STOP_LOSS))
        return children_ended and (res.entry_done or legs.get(Leg.ENTRY) in TERMINAL_STATUSES)

    def settle(self, positions_ts: datetime | None) -> None:
        """The snapshot's positions include every fill up to positions_ts."""
        if positions_ts is None:
            return
        for res in self._by_id.values():
            if (res.last_fill_at is not None and res.last_fill_at <= positions_ts
                    and res.settled_qty != res.entry_filled):
                self._account(res, -1)
                res.settled_qty = res.entry_filled
                self._account(res, +1)

    # ------------------------------------------------------------------ internals

    def _account_new(self, res: Reservation) -> None:
        """_account(res, +1) for a reservation nothing has happened to yet (no fill, no margin,
        entry working), spelled out with the same operations: its pending units are its
        quantity, `(q - 0.0) + max(0.0, 0.0 - 0.0)`, i.e. float(q)."""
        units = (res.quantity - 0.0) + 0.0
        notional = units * res.entry_price * res.multiplier
        wcl = res.worst_case_loss
        self.total_worst_case += wcl
        self.total_margin += 0.0
        self.gross_pending_notional += notional
        i = 0 if res.sign > 0 else 1
        self.side_pending_notional[i] += notional
        a = res.agent_id
        self.agent_worst_case[a] = self.agent_worst_case.get(a, 0.0) + wcl
        self.agent_pending_notional[a] = self.agent_pending_notional.get(a, 0.0) + notional
        p = self.contract_pending.get(res.con_id)
        if p is None:
            p = self.contract_pending[res.con_id] = [0.0, 0.0, 0.0, 0.0]
        p[i] += units
        p[i + 2] += notional

    def _account(self, res: Reservation, k: int) -> None:
        """Add (k=+1) or remove (k=-1) one reservation's share of the running totals."""
        # res.pending_units, spelled out (two properties deep; this runs per reserve and fill)
        q = res.quantity
        filled = min(q, max(res.fills_qty, res.status_filled))
        units = (0.0 if res.entry_done else q - filled) + max(0.0, filled - res.settled_qty)
        notional = units * res.entry_price * res.multiplier
        self.total_worst_case += k * res.worst_case_loss
        self.total_margin += k * res.margin
        self.gross_pending_notional += k * notional
        self.side_pending_notional[0 if res.sign > 0 else 1] += k * notional
        a = res.agent_id
        self.agent_worst_case[a] = self.agent_worst_case.get(a, 0.0) + k * res.worst_case_loss
        self.agent_pending_notional[a] = self.agent_pending_notional.get(a, 0.0) + k * notional
        p = self.contract_pending.get(res.con_id)
        if p is None:
            p = self.contract_pending[res.con_id] = [0.0, 0.0, 0.0, 0.0]
        i = 0 if res.sign > 0 else 1
        p[i] += k * units
        p[i + 2] += k * notional
        if k < 0 and res.agent_id not in self._by_agent:
            self.agent_worst_case.pop(a, None)
            self.agent_pending_notional.pop(a, None)
        if k < 0 and res.con_id not in self._by_contract:
            self.contract_pending.pop(res.con_id, None)
