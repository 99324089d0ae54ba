"""The RiskGovernor: gates every bracket proposal, as one unit, against the live account.

The core is synchronous and pure of I/O: `evaluate(proposal, snapshot)` decides and, when it
approves, reserves the bracket in the same step, so proposals handled concurrently on the event
loop can never jointly breach a limit. Around it: trading state (ACTIVE / REDUCING / HALTED),
fills and order events that move reservations, the async margin confirmation (IB what-if), and
a thin bus wiring (`attach`) that places approved brackets through `execution.place`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo

from bracketgate.agents.combo_risk import (
    ComboBook,
    apply_combo,
    combo_contract,
    combo_market_price,
    combo_quote,
    combo_rules,
    gate_combo_numbers,
)
from bracketgate.agents.decision_archive import pack, unpack
from bracketgate.agents.exec_ids import ExecIds
from bracketgate.agents import fastpath
from bracketgate.agents.fastgate import fast_path_for
from bracketgate.agents.reservations import TERMINAL_STATUSES, Reservation, ReservationLedger
from bracketgate.agents.rules import (
    ORDER_MSGS_PER_BRACKET,
    RULES,
    Rule,
    RuleContext,
    construct,
    default_contract_facts,
    deny,
    fresh_until,
    gate_account_values,
    gate_connection,
    gate_freshness,
    gate_numbers,
    gate_trading_state,
    market_entry_price,
    proposal_offline_con_id,
    quote_for,
    rule_price_band,
    rule_reducing_only,
    rule_trading_hours,
    worst_case_loss,
)
from bracketgate.bus.errors import ConfigError
from bracketgate.bus.messages import (
    ApprovedBracket,
    ControlCommand,
    DenialCode,
    Fill,
    Leg,
    OrderEvent,
    OrderType,
    PlacementResult,
    PortfolioSnapshot,
    PriorPlacement,
    Reason,
    ResolvedContract,
    RiskDecision,
    Side,
    TradeProposal,
    TradingState,
    TradingStateChanged,
    Verdict,
    WorkingOrder,
    WorstCase,
)
from bracketgate.config.agents import AgentsFile, diff_agents, load_agents
from bracketgate.config.limits import AgentLimits, RiskLimits, SymbolLimits, diff_limits, load_limits
from bracketgate.core.clock import Clock
from bracketgate.core.logs import get_logger

if TYPE_CHECKING:
    from bracketgate.bus.bus import Bus

log = get_logger("bracketgate.risk")

# a proposal's contract as IB confirmed it (its conId keys quotes, positions, reservations);
# None = not resolved, and the proposal is rejected UNKNOWN_CONTRACT
ContractInfo = Callable[[TradeProposal], ResolvedContract | None]
MultiplierFor = Callable[[int, str], float]      # (conId, symbol) -> contract multiplier
WhatIf = Callable[[ApprovedBracket], Awaitable[Mapping[str, Any]]]
# awaited before the synchronous check-and-reserve step: resolves the contract (and a quote
# for market entries) so that `contract_info` and the snapshot's quotes can answer at once
Prepare = Callable[[TradeProposal], Awaitable[None]]
# what IB has (or had) for a proposal_id the gate has no decision for (agents/execution.py)
PriorLookup = Callable[[TradeProposal], "PriorPlacement | None"]


class OrderBudget(Protocol):
    """The IB pacer as the order-rate rule sees it (adapters/pacer.py `Pacer`)."""

    def headroom(self, horizon_s: float) -> float: ...
    def promise(self, n: int, within_s: float, key: str | None = None) -> None: ...


StateBy = Literal["operator", "auto", "startup"]
# proposal_id -> what the journal remembers of it (adapters/journal_ids.py SeenId: first_seen,
# proposal, decision), or None
IdLookup = Callable[[str], Awaitable[Any]]

PLACE_SERVICE = "execution.place"
OUTCOME_SERVICE = "execution.outcome"   # a placement past its deadline: wait for what IB took
OUTCOME_GRACE_S = 60.0

_APPROVED, _REJECTED = Verdict.APPROVED, Verdict.REJECTED
_BUY, _MKT = Side.BUY, OrderType.MKT
_REDUCING, _HALTED = TradingState.REDUCING, TradingState.HALTED
_INFO = logging.INFO
_set_attr = object.__setattr__
_new_decision = RiskDecision.__new__
_new_worst_case = WorstCase.__new__
_DECISION_FIELDS = frozenset(("proposal_id", "agent_id", "verdict", "reasons", "order_ids",
                              "trading_state", "ts", "worst_case"))
_OFFLINE_FACTS_MAX = 10_000     # contracts remembered by the offline stand-in (tests, benches)
# the one budget every unregistered agent_id shares when there is no agents file (not a valid
# agent_id, so no agent can be it)
SHARED_BUDGET = "*unregistered*"


class TokenBucket:
    """`rate` tokens per second on the monotonic clock, holding at most `capacity`."""

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity, self.tokens, self.stamp = rate, capacity, capacity, now

    def available(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float, n: float = 1.0) -> bool:
        if now > self.stamp:   # available(now), inline (min spelled out): for every proposal
            tokens = self.tokens + (now - self.stamp) * self.rate
            cap = self.capacity
            self.tokens = tokens if tokens < cap else cap
            self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def retune(self, rate: float, capacity: float, now: float) -> None:
        self.available(now)
        self.rate, self.capacity = rate, capacity
        self.tokens = min(self.tokens, capacity)


@dataclass(slots=True)
class _ForeignBracket:
    """Working orders at IB with no open reservation (placed before a restart, or by hand)."""

    symbol: str
    con_id: int                 # the working orders' contract (0 = not known)
    sign: int                   # entry direction (+1 buy)
    pending_units: float        # entry quantity still working
    pending_notional: float
    worst_case_loss: float


class SnapshotView:
    """What the checks need from one PortfolioSnapshot, computed once per snapshot.

    Every per-contract figure is keyed by IB's conId, never by symbol (a stock and its options,
    or two expiries of one future, are different contracts):
    positions: conId -> signed units; position_notional: conId -> signed notional;
    marks: conId -> per-unit price; multipliers: conId -> multiplier (from positions);
    foreign: order_ref -> _ForeignBracket.
    """

    def __init__(self, snap: PortfolioSnapshot, ledger: ReservationLedger,
                 multiplier_for: MultiplierFor, limits: RiskLimits) -> None:
        self.snapshot = snap
        # the fail-closed gates' snapshot-only parts, decided once per snapshot
        self.connection_gate = gate_connection(snap)
        self.values_gate = gate_account_values(snap)
        stamps = (snap.account_values_ts, snap.pnl_ts, snap.positions_ts)
        self.oldest: datetime | None = None if None in stamps else min(stamps)  # type: ignore[type-var]
        self.positions: dict[int, float] = {}
        self.position_notional: dict[int, float] = {}
        self.marks: dict[int, float] = {}
        self.multipliers: dict[int, float] = {}
        for con_id, q in snap.quotes.items():
            px = _mid(q.bid, q.ask) or q.last
            if px is not None and px > 0 and math.isfinite(px):
                self.marks[con_id] = px
        for p in snap.positions:
            cid = p.con_id
            if p.multiplier and p.multiplier > 0:
                self.multipliers[cid] = p.multiplier
            if p.market_price is not None and p.market_price > 0:
                self.marks[cid] = p.market_price
            elif cid not in self.marks and p.avg_cost > 0:
                self.marks[cid] = p.avg_cost / (p.multiplier or 1.0)
            if p.market_value is not None and math.isfinite(p.market_value):
                notional = p.market_value
            elif p.market_price is not None:
                notional = p.quantity * p.market_price * p.multiplier
            else:
                notional = p.quantity * p.avg_cost
            self.positions[cid] = self.positions.get(cid, 0.0) + p.quantity
            self.position_notional[cid] = self.position_notional.get(cid, 0.0) + notional
        self.gross_positions = sum(abs(n) for n in self.position_notional.values())
        self.net_positions = sum(self.position_notional.values())
        self.foreign = self._foreign_brackets(snap.working_orders, ledger, multiplier_for, limits)
        # conId -> [buy units, sell units, buy notional, sell notional]
        self.foreign_pending: dict[int, list[float]] = {}
        self.foreign_worst_case = 0.0
        self.foreign_gross = 0.0
        self.foreign_side = [0.0, 0.0]          # pending notional of [BUY, SELL] entries
        for fb in self.foreign.values():
            self.foreign_worst_case += fb.worst_case_loss
            self.foreign_gross += fb.pending_notional
            self.foreign_side[0 if fb.sign > 0 else 1] += fb.pending_notional
            row = self.foreign_pending.setdefault(fb.con_id, [0.0, 0.0, 0.0, 0.0])
            i = 0 if fb.sign > 0 else 1
            row[i] += fb.pending_units
            row[i + 2] += fb.pending_notional
        # what every proposal's context reads of the account, read once (valid once
        # values_gate passed; the gate runs first)
        self.net_liquidation = snap.account_values.get("NetLiquidation")
        self.daily_pnl = snap.pnl.daily
        self.gross_base = self.gross_positions + self.foreign_gross
        self.open_foreign = len(self.foreign)

    def _foreign_brackets(self, orders: list[WorkingOrder], ledger: ReservationLedger,
                          multiplier_for: MultiplierFor,
                          limits: RiskLimits) -> dict[str, _ForeignBracket]:
        groups: dict[str, list[WorkingOrder]] = {}
        for o in orders:
            if o.remaining <= 0 or o.status.lower() in TERMINAL_STATUSES:
                continue
            ref = o.order_ref or f"#{o.order_id}"
            if ref in ledger:
                continue
            groups.setdefault(ref, []).append(o)
        out: dict[str, _ForeignBracket] = {}
        unprotected_pct = limits.max_stop_distance_pct / 100.0
        for ref, legs in groups.items():
            entry = next((o for o in legs if not o.parent_id), None)
            stop = next((o for o in legs if o.stop_price is not None and o.parent_id), None)
            if entry is not None and stop is None and entry.stop_price is not None and len(legs) == 1:
                entry, stop = None, entry  # a lone stop protecting a position
            if entry is None and stop is None:
                continue  # only a take-profit left: the bracket is closing
            first = entry or stop
            assert first is not None
            sym, cid = first.symbol, first.con_id
            mult = first.multiplier or self.multipliers.get(cid) or multiplier_for(cid, sym)
            mark = self.marks.get(cid)
            if entry is not None:
                sign = entry.side.sign
                px = entry.limit_price or entry.stop_price or mark or 0.0
                units = entry.remaining
                notional = units * abs(px) * mult     # a combo's price may be a credit (< 0)
                if stop is not None and stop.stop_price is not None:
                    qty = max(entry.remaining, stop.remaining)
                    worst = qty * abs(px - stop.stop_price) * mult
                else:  # unprotected entry: as if stopped at the widest allowed stop
                    worst = units * px * mult * unprotected_pct
            else:
                assert stop is not None and stop.stop_price is not None
                sign, units, notional = -stop.side.sign, 0.0, 0.0
                ref_px = mark if mark is not None else stop.stop_price * (1 + sign * unprotected_pct)
                worst = stop.remaining * max(0.0, sign * (ref_px - stop.stop_price)) * mult
            out[ref] = _ForeignBracket(sym, cid, sign, units, notional, worst)
        return out

    def pending(self, con_id: int, sign: int) -> tuple[float, float]:
        row = self.foreign_pending.get(con_id)
        if row is None:
            return 0.0, 0.0
        return (row[0], row[2]) if sign > 0 else (row[1], row[3])


def _mid(bid: float | None, ask: float | None) -> float | None:
    if bid is not None and ask is not None and bid > 0 and ask > 0:
        return (bid + ask) / 2.0
    return None


class DecisionMemory:
    """proposal_id -> the first proposal and its current decision, for idempotency.

    A hot cache, bounded by `capacity` (limits `max_remembered_decisions`): the journal keeps
    every id with its first decision for `proposal_id_retention_days` and answers a miss
    (RiskGovernor.use_id_memory), so only open brackets must stay here.
    The newest `recent` entries are kept as objects, so a re-delivery gets the very same
    decision object back. Older ones are archived as their JSON text deflated (agents/
    decision_archive.py: ~0.2 KB with the key instead of ~1.5 KB as text, ~5 KB as objects) —
    bytes, which the garbage collector never scans, so a day of ids does not turn into
    second-long full collections — up to `capacity` in all, oldest forgotten first, except ids
    `keep(pid)` says are still open (a bracket at IB must never be decided a second time). A
    repeat answered from the archive gets the decision first published, byte for byte.
    """

    RECENT = 512   # 4096 before: ~20 MB of objects; a re-delivery comes within seconds

    def __init__(self, capacity: int, keep: Callable[[str], bool]) -> None:
        self._keep = keep
        self.resize(capacity)
        self._hot: OrderedDict[str, tuple[TradeProposal, RiskDecision]] = OrderedDict()
        self._cold: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()   # pid -> (proposal, decision) JSON packed

    def __len__(self) -> int:
        return len(self._hot) + len(self._cold)

    def __contains__(self, pid: object) -> bool:
        return pid in self._hot or pid in self._cold

    def resize(self, capacity: int) -> None:
        self.capacity, self.recent = capacity, min(self.RECENT, capacity)

    def get(self, pid: str) -> tuple[TradeProposal | str, RiskDecision] | None:
        """(the first proposal — as JSON text if archived —, its decision) or None."""
        hot = self._hot.get(pid)
        if hot is not None:
            return hot
        cold = self._cold.get(pid)
        if cold is None:
            return None
        return unpack(cold[0]), RiskDecision.model_validate_json(unpack(cold[1]))

    @staticmethod
    def same(first: TradeProposal | str, proposal: TradeProposal) -> bool:
        if isinstance(first, str):
            return first == proposal.model_dump_json()
        return first == proposal

    def put(self, pid: str, proposal: TradeProposal, decision: RiskDecision) -> None:
        self._hot[pid] = (proposal, decision)
        if len(self._hot) > 4 * self.recent:   # nobody called compact(): do it now
            self.compact()

    def replace(self, decision: RiskDecision) -> None:
        pid = decision.proposal_id
        hot = self._hot.get(pid)
        if hot is not None:
            self._hot[pid] = (hot[0], decision)
        elif pid in self._cold:
            self._cold[pid] = (self._cold[pid][0], pack(decision.model_dump_json()))

    def compact(self) -> None:
        """Archive all but the `recent` newest; forget the oldest past `capacity`."""
        hot, cold = self._hot, self._cold
        while len(hot) > self.recent:
            pid, (proposal, decision) = hot.popitem(last=False)
            cold[pid] = (pack(proposal.model_dump_json()), pack(decision.model_dump_json()))
        for _ in range(len(hot) + len(cold) - self.capacity):
            if not cold:
                break
            pid, entry = cold.popitem(last=False)
            if self._keep(pid):
                cold[pid] = entry   # still open: keep it (moves to the newest end)


class RiskGovernor:
    """Gates proposals; owns the trading state and the reservations ledger. See module doc."""

    def __init__(self, limits: RiskLimits, clock: Clock, *,
                 contract_info: ContractInfo | None = None,
                 initial_state: TradingState = TradingState.ACTIVE,
                 agents: AgentsFile | None = None) -> None:
        self._clock = clock
        self._agents = agents
        self._contract_info = contract_info
        self._state = initial_state
        self.ledger = ReservationLedger()
        self._snapshot: PortfolioSnapshot | None = None
        self._view: SnapshotView | None = None
        self._decisions = DecisionMemory(limits.max_remembered_decisions,
                                         keep=self.ledger.__contains__)
        # agent_id -> realized P&L today; budget -> conId -> signed units held
        self._agent_realized: dict[str, float] = {}
        self._budget_realized: dict[str, float] = {}  # the same by budget (see budget_of)
        self._agent_positions: dict[str, dict[int, float]] = {}
        self._exec_ids: dict[str, bool] = ExecIds()   # exec_id -> realized P&L counted (bounded)
        self._last_price: dict[int, float] = {}       # conId -> last fill price
        self._multipliers: dict[int, float] = {}      # conId -> multiplier seen on a reservation
        self._combos = ComboBook()                    # open combo reservations' legs
        self._equity_peak: float | None = None        # today's NetLiquidation peak
        self._inflight: dict[str, asyncio.Future[RiskDecision]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bus: Bus | None = None
        self._whatif: WhatIf | None = None
        self._prepare: Prepare | None = None
        # proposal_id -> the prepare hook's word on a missing quote (no market-data line); it
        # stands in for the rules' QUOTE_UNAVAILABLE and is taken by the proposal's evaluation
        self._quote_notes: dict[str, Reason] = {}
        self._prior: PriorLookup | None = None
        self._order_msgs_per_bracket = ORDER_MSGS_PER_BRACKET
        # with an IB pacer attached, the order-rate rule reads its headroom (no second count);
        # without one (unit tests), the max_order_msgs_per_s token bucket below
        self._order_budget: OrderBudget | None = None
        now = clock.monotonic()
        self._proposal_bucket = TokenBucket(limits.max_proposals_per_s, limits.proposal_burst, now)
        self._order_bucket = TokenBucket(limits.max_order_msgs_per_s, limits.max_order_msgs_per_s, now)
        # budget -> proposal bucket; budget -> order-message bucket (its share of the pacer)
        self._agent_buckets: dict[str, TokenBucket] = {}
        self._agent_order_buckets: dict[str, TokenBucket] = {}
        self._replays = _Replays()
        # (agent_id | None, symbol | None): halted by a scoped flatten until resume
        self.scoped_halts: set[tuple[str | None, str | None]] = set()
        # (by, who, reason) -> saved before a change is published (adapters/journal_state.py)
        self._save_state: Callable[[str, str, str], Awaitable[None]] | None = None
        self._apply_limits(limits)

    # ================================================================== limits

    def _apply_limits(self, limits: RiskLimits) -> None:
        self._limits = limits
        self._decisions.resize(limits.max_remembered_decisions)
        self._tz = ZoneInfo(limits.timezone)
        h = limits.trading_hours
        self._hours: tuple[time, time, frozenset[int]] | None = (
            None if h is None else (h.start, h.end, frozenset(h.weekdays)))
        self._symbol_limits: dict[str, SymbolLimits] = {}   # symbol -> resolved limits
        self._day_ends = self._next_midnight(self._clock.now())
        # the rules that can deny under these limits, in RULES order (a rule switched off by
        # the limits file always passes): (any state but REDUCING, REDUCING)
        active = tuple(r for r in RULES if not (
            (r is rule_trading_hours and self._hours is None)
            or (r is rule_price_band and not limits.price_bands)))
        self._rules: tuple[tuple[Rule, ...], tuple[Rule, ...]] = (
            tuple(r for r in active if r is not rule_reducing_only), active)
        self._fast = fast_path_for(active)   # agents/fastgate.py; None: the full chain only
        # its per-limits constants and per-snapshot caps, (re)made on first use
        self._fast_limits: tuple[Any, ...] = (None,)
        self._fast_snapshot: tuple[Any, ...] = (None, None)
        self._fresh: tuple[Any, ...] = (None, None, None)   # (view, limits, fresh_until)
        self._fast_hours: tuple[Any, ...] = (None, None, None, False)   # fastgate.hours_window
        # (symbol, sec_type, expiry, strike, right, currency) -> (stand-in conId, multiplier,
        # min tick) when no IB contract details are wired (tests, benches)
        self._offline_facts: dict[tuple[Any, ...], tuple[int, float | None, float]] = {}
        now = self._clock.monotonic()
        self._proposal_bucket.retune(limits.max_proposals_per_s, limits.proposal_burst, now)
        self._order_bucket.retune(limits.max_order_msgs_per_s, limits.max_order_msgs_per_s, now)
        self._apply_agents()

    def _apply_agents(self) -> None:
        """Resolve budgets afresh (limits or agents file changed): drop the cached per-budget
        limits and retune the buckets of budgets that exist."""
        self._agent_limits: dict[str, AgentLimits] = {}     # budget -> resolved limits
        self._budgets: dict[str, str] = {}                  # agent_id -> budget (cache)
        now = self._clock.monotonic()
        for budget, bucket in self._agent_buckets.items():
            al = self._agent(budget)
            bucket.retune(al.max_proposals_per_s, al.proposal_burst, now)
        for budget, bucket in self._agent_order_buckets.items():
            rate, cap = self._order_share(self._agent(budget))
            bucket.retune(rate, cap, now)

    @property
    def limits(self) -> RiskLimits:
        return self._limits

    @property
    def agents(self) -> AgentsFile | None:
        return self._agents

    def set_agents(self, agents: AgentsFile | None) -> list[str]:
        """Use another agents file (None: none). Returns what changed. Open reservations stay
        counted under the budget they were made in until they close."""
        changes = diff_agents(self._agents, agents)
        self._agents = agents
        self._apply_agents()
        return changes

    def reload_agents(self, path: str | Path) -> list[str]:
        """Re-read the agents file (SIGHUP). Returns what changed; an invalid file raises
        ConfigError and the current agents stay in force."""
        try:
            new = load_agents(path)
        except ConfigError as e:
            log.error("agents_reload_failed", path=str(path), error=str(e))
            raise
        changes = self.set_agents(new)
        log.info("agents_reloaded", path=str(path), changes=changes,
                 agents=len(new.agents), enabled=sum(e.enabled for e in new.agents.values()))
        return changes

    def budget_of(self, agent_id: str) -> str:
        """Whose budget an agent_id spends: its own when the agents file or the limits file's
        `[agents.<id>]` names it, else (no agents file) the one SHARED_BUDGET."""
        b = self._budgets.get(agent_id)
        if b is None:
            known = (self._agents is not None and agent_id in self._agents.agents) \
                or agent_id in self._limits.agents
            b = agent_id if known else SHARED_BUDGET
            if len(self._budgets) >= _OFFLINE_FACTS_MAX:
                self._budgets.clear()
            self._budgets[agent_id] = b
        return b

    def reload_limits(self, path: str | Path) -> list[str]:
        """Re-read the limits file (SIGHUP). Returns what changed; an invalid file raises
        ConfigError and the current limits stay in force."""
        try:
            new = load_limits(path)
        except ConfigError as e:
            log.error("risk_limits_reload_failed", path=str(path), error=str(e))
            raise
        changes = diff_limits(self._limits, new)
        self._apply_limits(new)
        log.info("risk_limits_reloaded", path=str(path), changes=changes)
        return changes

    def _symbol(self, symbol: str) -> SymbolLimits:
        sl = self._symbol_limits.get(symbol)
        if sl is None:
            sl = self._symbol_limits[symbol] = self._limits.for_symbol(symbol)
        return sl

    def _agent(self, budget: str) -> AgentLimits:
        """A budget's limits. Precedence (lowest first): the limits file's `[agent]`, its
        `[agents.<id>]`, the agents file's `[agents.<id>]`; the shared budget: `[agent]`."""
        al = self._agent_limits.get(budget)
        if al is None:
            al = self._limits.agent if budget == SHARED_BUDGET else self._limits.for_agent(budget)
            if self._agents is not None and budget != SHARED_BUDGET:
                al = self._agents.limits_for(budget, al)
            self._agent_limits[budget] = al
        return al

    def _agent_bucket(self, budget: str, now: float) -> TokenBucket:
        b = self._agent_buckets.get(budget)
        if b is None:
            al = self._agent(budget)
            b = self._agent_buckets[budget] = TokenBucket(al.max_proposals_per_s,
                                                          al.proposal_burst, now)
        return b

    def _order_share(self, al: AgentLimits) -> tuple[float, float]:
        """(rate, capacity) of a budget's order-message bucket: its share of the IB pacer's
        rate and of the headroom the pacer offers when idle (burst + rate x horizon)."""
        share = al.max_order_share_pct / 100.0
        budget = self._order_budget
        rate = getattr(budget, "rate", None)
        if budget is None or rate is None:
            return math.inf, math.inf    # no pacer: the global order bucket alone
        burst = float(getattr(budget, "burst", 0.0))
        return share * rate, max(float(self._order_msgs_per_bracket),
                                 share * (burst + rate * self._order_horizon_s()))

    def _agent_order_bucket(self, budget: str, now: float) -> TokenBucket:
        b = self._agent_order_buckets.get(budget)
        if b is None:
            rate, cap = self._order_share(self._agent(budget))
            b = self._agent_order_buckets[budget] = TokenBucket(rate, cap, now)
        return b

    def use_order_budget(self, budget: OrderBudget | None) -> None:
        """The IB pacer the order-rate rule reads (attach() sets it); each budget may take
        at most its max_order_share_pct of it."""
        self._order_budget = budget
        self._agent_order_buckets.clear()

    def _multiplier_for(self, con_id: int, symbol: str) -> float:
        """A contract's multiplier: as reserved, else the snapshot's positions, else the
        symbol's configured one, else 1."""
        m = self._multipliers.get(con_id)
        if m is None:
            view = self._view
            m = view.multipliers.get(con_id) if view is not None else None
            if m is None:
                m = (self._symbol(symbol).multiplier or 1.0) if symbol else 1.0
        return m

    # ================================================================== state

    @property
    def state(self) -> TradingState:
        return self._state

    @property
    def snapshot(self) -> PortfolioSnapshot | None:
        return self._snapshot

    def set_state(self, new: TradingState, reason: str, by: StateBy) -> TradingStateChanged | None:
        """Move the trading state; the event to publish, or None if nothing changed."""
        if new is self._state:
            return None
        event = TradingStateChanged(old=self._state, new=new, reason=reason, by=by,
                                    ts=self._clock.now())
        self._state = new
        log.warning("trading_state_changed", old=event.old.value, new=new.value, reason=reason,
                    by=by)
        return event

    @property
    def timezone(self) -> ZoneInfo:
        return self._tz

    def use_state_journal(self, save: Callable[[str, str, str], Awaitable[None]] | None) -> None:
        """Every state or scoped-halt change is saved (awaited) before it is published."""
        self._save_state = save

    def restore_state(self, state: TradingState, scoped: set[tuple[str | None, str | None]],
                      reason: str) -> TradingStateChanged | None:
        """At start-up, before anything is decided: the saved state and scoped halts."""
        self.scoped_halts = set(scoped)
        return self.set_state(state, reason, "startup")

    def on_control(self, cmd: ControlCommand) -> TradingStateChanged | None:
        if cmd.action == "flatten" and (cmd.agent_id is not None or cmd.symbol is not None):
            # a scoped flatten halts only its scope (agents/flatten.py); the rest trades on
            self.scoped_halts.add((cmd.agent_id, cmd.symbol))
            log.warning("trading_halted_scoped", agent_id=cmd.agent_id, symbol=cmd.symbol,
                        reason=cmd.reason, by=cmd.by)
            return None
        if cmd.action == "resume":
            self.scoped_halts.clear()
        new = {"halt": TradingState.HALTED, "reduce": TradingState.REDUCING,
               "resume": TradingState.ACTIVE, "flatten": TradingState.HALTED}[cmd.action]
        reason = f"{cmd.action} by {cmd.by}" + (f": {cmd.reason}" if cmd.reason else "")
        if new is TradingState.ACTIVE:
            # resume re-bases the drawdown: it is measured from here on
            nlv = self._snapshot.net_liquidation if self._snapshot is not None else None
            self._equity_peak = nlv if nlv is not None and math.isfinite(nlv) else None
        return self.set_state(new, reason, "operator")

    def on_snapshot(self, snapshot: PortfolioSnapshot) -> list[TradingStateChanged]:
        """Keep the latest snapshot; settle fills it shows; apply the automatic transitions.

        Daily P&L at or below -daily_loss_limit HALTs; a drawdown from today's NetLiquidation
        peak at or past max_drawdown_pct moves ACTIVE to REDUCING. Automatic transitions only
        tighten: they never lift a state (only an operator's resume does).
        """
        self._snapshot = snapshot
        self._decisions.compact()
        self.ledger.settle(snapshot.positions_ts)
        self._view = SnapshotView(snapshot, self.ledger, self._multiplier_for, self._limits)
        fastpath.warm(self)   # its per-snapshot figures now, not in the next decision
        now = self._clock.now()
        if now >= self._day_ends:
            self._roll_day(now)
        events: list[TradingStateChanged] = []
        lim = self._limits
        daily = snapshot.pnl.daily
        if (daily is not None and math.isfinite(daily) and daily <= -lim.daily_loss_limit
                and self._state is not TradingState.HALTED):
            ev = self.set_state(TradingState.HALTED,
                                f"daily P&L {daily:.2f} at or past the loss limit "
                                f"-{lim.daily_loss_limit:.2f}", "auto")
            if ev is not None:
                events.append(ev)
        nlv = snapshot.net_liquidation
        if nlv is not None and math.isfinite(nlv) and nlv > 0 and snapshot.reconciled:
            peak = self._equity_peak = max(self._equity_peak or nlv, nlv)
            dd_pct = (peak - nlv) / peak * 100.0
            if (lim.max_drawdown_pct is not None and dd_pct >= lim.max_drawdown_pct
                    and self._state is TradingState.ACTIVE):
                ev = self.set_state(TradingState.REDUCING,
                                    f"drawdown {dd_pct:.2f}% from today's peak {peak:.2f} at or "
                                    f"past {lim.max_drawdown_pct}%", "auto")
                if ev is not None:
                    events.append(ev)
        return events

    def _next_midnight(self, now: datetime) -> datetime:
        local = now.astimezone(self._tz)
        tomorrow = (local + timedelta(days=1)).date()
        # kept in UTC: compared with the clock's UTC now on every decision, same offsets = cheap
        return datetime.combine(tomorrow, time(0), tzinfo=self._tz).astimezone(timezone.utc)

    def _roll_day(self, now: datetime) -> None:
        """A new trading day: per-agent realized P&L and the equity peak start over."""
        log.info("risk_day_rolled", agents=len(self._agent_realized))
        self._agent_realized.clear()
        self._budget_realized.clear()
        self._exec_ids.clear()
        self._equity_peak = None
        self._day_ends = self._next_midnight(now)

    # ================================================================== the decision

    def evaluate(self, proposal: TradeProposal,
                 snapshot: PortfolioSnapshot | None) -> RiskDecision:
        """Decide one proposal; an approval is reserved before this returns.

        A repeated proposal_id gets its first decision back (the same object, or its
        successor once placement or margin replaced it); the same id with other content is
        rejected DUPLICATE_PROPOSAL. Neither ever reserves a second time.
        """
        return self._evaluate(proposal, snapshot)[0]

    def _evaluate(self, proposal: TradeProposal,
                  snapshot: PortfolioSnapshot | None) -> tuple[RiskDecision, bool]:
        """(decision, fresh): fresh is False for a repeat or a duplicate id."""
        pid = proposal.proposal_id
        note = self._quote_notes.pop(pid, None) if self._quote_notes else None
        memory = self._decisions
        seen = memory._hot.get(pid)      # memory.get(pid), the hot half inline
        if seen is None and pid in memory._cold:
            seen = memory.get(pid)
        now = self._clock.now()
        if seen is None and pid in self._replays.unknown:
            return self._replays.cannot_tell(proposal, now, self._state), False
        if seen is not None:
            if DecisionMemory.same(seen[0], proposal):
                if log.is_enabled_for(_INFO):
                    log.info("risk_decision_repeated", proposal_id=pid,
                             agent_id=proposal.agent_id, verdict=seen[1].verdict._value_)
                return seen[1], False
            decision = self._decision(proposal, [deny(DenialCode.DUPLICATE_PROPOSAL, value=pid)],
                                      now)
            self._log_decision(proposal, decision, None)
            return decision, False
        if self._prior is not None:
            prior = self._prior(proposal)
            if prior is not None:  # IB has (or had) it: report that, never a fresh verdict
                decision = self._from_prior(proposal, prior, now)
                self._decisions.put(pid, proposal, decision)
                log.warning("risk_decision", proposal_id=pid, agent_id=proposal.agent_id,
                            verdict=decision.verdict.value,
                            codes=[r.code.value for r in decision.reasons], prior=prior.outcome,
                            detail=prior.detail, trading_state=self._state.value)
                return decision, False
        if self._agents is not None:
            refused = self._agent_gate(proposal.agent_id)
            if refused is not None:   # before any other check: no token spent, nothing placed
                decision = self._decision(proposal, [refused], now)
                self._decisions.put(pid, proposal, decision)
                self._log_decision(proposal, decision, None)
                return decision, True
        expired = (self._replays.expired(proposal, now, self._limits)
                   if self._replays.first_seen or proposal.created_at is not None else None)
        if expired is not None:
            decision = self._decision(proposal, [expired], now)
            self._decisions.put(pid, proposal, decision)
            self._log_decision(proposal, decision, None)
            return decision, True
        if now >= self._day_ends:
            self._roll_day(now)
        if self._fast is not None:   # _check to the log line in one pass (fastpath.py)
            fused = fastpath.decide(self, proposal, snapshot, now, note)
            if fused is not None:
                return fused, True
        reasons, ctx = self._check(proposal, snapshot, now)
        if note is not None and reasons:
            reasons = _explained(reasons, note)
        if not reasons:
            assert ctx is not None
            self._reserve(proposal, ctx, now)
        decision = self._decision(proposal, reasons, now)
        if not reasons:   # the loss it was admitted with, and which bound applied (combos)
            wc = _new_worst_case(WorstCase)   # construct(WorstCase, ...) spelled out
            _set_attr(wc, "__dict__", {"loss": round(ctx.worst_case_loss, 2),  # type: ignore[union-attr]
                                       "bound": "stop" if ctx.combo is None else ctx.combo.bound})  # type: ignore[union-attr]
            _set_attr(wc, "__pydantic_fields_set__", {"loss", "bound"})
            _set_attr(wc, "__pydantic_extra__", None)
            _set_attr(wc, "__pydantic_private__", None)
            decision.__dict__["worst_case"] = wc
        memory.put(pid, proposal, decision)
        self._log_decision(proposal, decision, ctx)
        return decision, True

    def explain_quote(self, proposal_id: str, reason: Reason) -> None:
        """Why this proposal's quote is missing, from the prepare hook (core/app.py: the
        market-data line budget full, IB's 101): its QUOTE_UNAVAILABLE says so."""
        if len(self._quote_notes) >= 1_000:   # never taken (a decision found first): bounded
            self._quote_notes.clear()
        self._quote_notes[proposal_id] = reason

    def quote_needs(self) -> set[int]:
        """conIds the open reservations need quoted: their contracts, a combo's legs."""
        out = {res.con_id for res in self.ledger}
        out.update(self._combos.con_ids())
        return out

    def _agent_gate(self, agent_id: str) -> Reason | None:
        """With an agents file: UNKNOWN_AGENT / AGENT_DISABLED, else None."""
        assert self._agents is not None
        entry = self._agents.agents.get(agent_id)
        if entry is None:
            return deny(DenialCode.UNKNOWN_AGENT, value=agent_id, field="agent_id",
                        detail="not in the agents file")
        if not entry.enabled:
            return deny(DenialCode.AGENT_DISABLED, value=agent_id, field="agent_id",
                        detail="enabled = false in the agents file")
        return None

    def _check(self, p: TradeProposal, snapshot: PortfolioSnapshot | None,
               now: datetime) -> tuple[list[Reason], RuleContext | None]:
        lim = self._limits
        mono = self._clock.monotonic()
        # every attempt spends a token of its agent's budget, so a flood is limited whatever
        # else fails; the global bucket is charged only for what the agent's own bucket admits
        # (fair share: a flooding agent spends its own tokens, never the other agents')
        rate_denied: tuple[str, float] | None = None
        agent = p.agent_id
        budget = self._budgets.get(agent) or self.budget_of(agent)
        agent_bucket = self._agent_buckets.get(budget) or self._agent_bucket(budget, mono)
        if not agent_bucket.take(mono):
            rate_denied = (f"agent {agent}" if budget != SHARED_BUDGET
                           else "unregistered agents (one shared budget)", agent_bucket.rate)
        elif not self._proposal_bucket.take(mono):
            agent_bucket.tokens += 1.0   # not the agent's fault: its token back
            rate_denied = ("global", lim.max_proposals_per_s)

        if snapshot is None:
            return [gate_connection(None)], None  # type: ignore[list-item]
        view = self._view
        if view is None or view.snapshot is not snapshot:
            view = self._view = SnapshotView(snapshot, self.ledger, self._multiplier_for, lim)
        fresh = self._fresh
        if fresh[0] is not view or fresh[1] is not lim:   # once per snapshot (and limits)
            fresh = self._fresh = (view, lim, fresh_until(view.oldest, lim.max_snapshot_age_s))
        until = fresh[2]
        gate = view.connection_gate or (None if until is not None and now <= until else gate_freshness(
            math.inf if view.oldest is None else (now - view.oldest).total_seconds(), lim)
        ) or view.values_gate or (None if self._state is not _HALTED
                                  else gate_trading_state(self._state))
        if gate is None and self.scoped_halts:
            gate = _scoped_halt(self.scoped_halts, p)
        if gate is None:
            # never arithmetic on a number it cannot take
            gate = gate_numbers(p) if p.__dict__["legs"] is None else gate_combo_numbers(p)
        if gate is not None:
            return [gate], None
        sym = self._symbol_limits.get(p.symbol) or self._symbol(p.symbol)
        combo = None
        if p.legs is not None:   # a combo (BAG): its legs' contracts and quotes (combo_risk.py)
            combo = combo_contract(p, self._contract_info, lim, sym)
            cq = combo if isinstance(combo, Reason) else combo_quote(combo, p, snapshot, view)
            if isinstance(cq, Reason):
                return [cq], None
            con_id, mult, tick = combo.con_id, combo.multiplier, combo.tick  # type: ignore[union-attr]
        elif self._contract_info is not None:
            contract = self._contract_info(p)
            if contract is None:
                return [deny(DenialCode.UNKNOWN_CONTRACT, value=p.symbol, field="symbol")], None
            mult: float | None = contract.multiplier
            tick = contract.min_tick if contract.min_tick > 0 else lim.default_min_tick
            con_id = contract.con_id
        else:  # no IB contract details (tests, benches): a stand-in conId per contract
            con_id, mult, tick = self._offline(p, sym)
            if mult is None:
                return [deny(DenialCode.UNKNOWN_CONTRACT, value=p.symbol, field="multiplier",
                             detail=f"no contract details; set [symbols.{p.symbol}] multiplier")], None
        market = p.order_type is _MKT
        if market:
            px = (market_entry_price(p, snapshot, now, lim, con_id=con_id) if combo is None
                  else combo_market_price(cq, p, now, lim))
            if isinstance(px, Reason):
                return [px], None
            entry = px
        else:
            entry = p.limit_price  # type: ignore[assignment]
        if self._fast is not None:   # every rule tested in one pass (fastgate.py)
            fast = self._fast(self, p, snapshot, view, now, mono, budget, rate_denied, sym,
                              con_id, mult, tick, entry, market)
            if fast is not None:
                return fast

        ledger = self.ledger
        sign = 1 if p.side is _BUY else -1
        qty = p.quantity
        # position and pending figures are the proposal's own contract's (exposure sums all)
        row = view.foreign_pending.get(con_id) if view.foreign_pending else None
        lp = ledger.contract_pending.get(con_id)
        i = 0 if sign > 0 else 1

        c = RuleContext.__new__(RuleContext)
        c.proposal = p
        c.limits = lim
        c.agent_limits = self._agent_limits.get(budget) or self._agent(budget)
        c.symbol_limits = sym
        c.now = now
        c.state = state = self._state
        c.tz = self._tz
        c.hours = self._hours
        c.sign = sign
        c.quantity = qty
        c.entry = entry
        c.market_entry = market
        c.quote = snapshot.quotes.get(con_id)          # quote_for(snapshot, con_id)
        c.tick = tick
        c.multiplier = mult
        c.worst_case_loss = worst_case_loss(qty, entry, p.stop_loss, mult, tick, lim,
                                            market_entry=market)
        c.notional = notional = qty * entry * mult
        c.net_liquidation = view.net_liquidation
        c.daily_pnl = view.daily_pnl
        c.con_id = con_id
        c.position = view.positions.get(con_id, 0.0)
        c.position_notional = view.position_notional.get(con_id, 0.0)
        c.pending_same = (row[i] if row else 0.0) + (lp[i] if lp else 0.0)
        c.pending_same_notional = (row[i + 2] if row else 0.0) + (lp[i + 2] if lp else 0.0)
        if self._combos and combo is None:   # this contract as a leg of a pending combo
            cp = self._combos.pending(ledger).get(con_id)
            if cp is not None:
                c.pending_same += cp[i]
                c.pending_same_notional += cp[i + 2]
        c.gross_exposure = view.gross_base + ledger.gross_pending_notional
        # net exposure if every pending entry on this side fills (and none on the other)
        c.net_exposure = view.net_positions + sign * (view.foreign_side[i]
                                                      + ledger.side_pending_notional[i])
        c.open_brackets = len(ledger) + view.open_foreign
        c.open_worst_case = ledger.total_worst_case + view.foreign_worst_case
        # per-agent figures are the budget's (the ledger and the fills are kept by budget)
        c.agent_open_brackets = ledger.agent_open(budget)
        c.agent_worst_case = ledger.agent_worst_case.get(budget, 0.0)
        c.agent_realized = self._budget_realized.get(budget, 0.0)
        held = self._agent_positions.get(budget)
        exposure = ledger.agent_pending_notional.get(budget, 0.0)
        c.agent_position_notional = 0.0
        if held:
            for cid, units in held.items():
                own = cid == con_id
                n = (units * self._mark(cid, view, entry if own else None)
                     * (mult if own else self._multiplier_for(cid, "")))
                exposure += abs(n)
                if own:
                    c.agent_position_notional = n
        c.agent_exposure = exposure
        c.proposal_rate_denied = rate_denied
        if self._order_budget is not None:
            c.order_horizon_s = self._order_horizon_s()
            c.order_tokens = self._order_budget.headroom(c.order_horizon_s)
            ob = self._agent_order_buckets.get(budget) or self._agent_order_bucket(budget, mono)
            c.agent_order_tokens = ob.available(mono)
        else:
            c.order_horizon_s = None
            c.order_tokens = self._order_bucket.available(mono)
            c.agent_order_tokens = math.inf
        c.order_msgs_needed = self._order_msgs_per_bracket

        c.combo = combo
        if combo is not None:    # per-leg figures, the worst case with its bound, combo rules
            apply_combo(c, combo, snapshot, view, ledger, self._combos, held, cq)
            return [r for rule in combo_rules(self._rules[state is _REDUCING])
                    if (r := rule(c)) is not None], c
        reasons = [r for rule in self._rules[state is _REDUCING] if (r := rule(c)) is not None]
        return reasons, c

    def check_as_new(self, proposal: TradeProposal, replaces: str | None = None
                     ) -> tuple[list[Reason], RuleContext | None]:
        """Every check a new bracket passes, for a changed bracket (agents/commands.py): the
        bracket it `replaces` is left out of the ledger's totals while checking (its place is
        what the change asks for). Nothing is reserved; the caller amends the reservation."""
        res = self.ledger.release(replaces) if replaces else None
        try:
            return self._check(proposal, self._snapshot, self._clock.now())
        finally:
            if res is not None:
                self.ledger.reserve(res)

    def _offline(self, p: TradeProposal, sym: SymbolLimits) -> tuple[int, float | None, float]:
        """(stand-in conId, multiplier or None, min tick) without IB's contract details."""
        key = (p.symbol, p.sec_type, p.expiry, p.strike, p.right, p.currency)
        facts = self._offline_facts.get(key)
        if facts is None:
            if len(self._offline_facts) >= _OFFLINE_FACTS_MAX:
                self._offline_facts.clear()
            mult, tick = default_contract_facts(p, sym, self._limits)
            facts = self._offline_facts[key] = (proposal_offline_con_id(p), mult, tick)
        return facts

    def _mark(self, con_id: int, view: SnapshotView, fallback: float | None) -> float:
        px = view.marks.get(con_id) or self._last_price.get(con_id) or fallback
        return px or 0.0

    def _order_horizon_s(self) -> float:
        """Within this, an approval's order messages must have left: half the tighter of the
        what-if and placement deadlines (the rest is for IB's answers)."""
        lim = self._limits
        deadline = lim.placement_timeout_s
        if self._whatif is not None:
            deadline = min(deadline, lim.whatif_timeout_s)
        return deadline / 2

    def _reserve(self, p: TradeProposal, c: RuleContext, now: datetime) -> None:
        budget = self._budgets.get(p.agent_id) or self.budget_of(p.agent_id)
        mono = self._clock.monotonic()
        if self._order_budget is not None:
            self._order_budget.promise(self._order_msgs_per_bracket, self._order_horizon_s(),
                                       p.proposal_id)
            self._agent_order_bucket(budget, mono).take(mono, self._order_msgs_per_bracket)
        else:
            self._order_bucket.take(mono, self._order_msgs_per_bracket)
        self._multipliers[c.con_id] = c.multiplier
        combo = c.combo
        if combo is not None:   # its legs pend by contract; its notional is the legs' gross
            self._combos.add(p.proposal_id, combo)
        # kept under its budget: the ledger's per-agent totals are the budget's
        self.ledger.reserve(Reservation(
            proposal_id=p.proposal_id, agent_id=budget, symbol=p.symbol, con_id=c.con_id,
            sign=c.sign, quantity=c.quantity,
            entry_price=c.entry if combo is None else combo.gross_per_combo, stop_price=p.stop_loss,
            multiplier=c.multiplier, worst_case_loss=c.worst_case_loss, created_at=now))

    def _decision(self, p: TradeProposal, reasons: list[Reason], now: datetime) -> RiskDecision:
        # every field is built here from validated inputs: skip re-validation on the hot path
        # (construct(RiskDecision, ...) spelled out: no keyword dict to build and copy)
        d = _new_decision(RiskDecision)
        _set_attr(d, "__dict__", {"proposal_id": p.proposal_id, "agent_id": p.agent_id,
                                  "verdict": _REJECTED if reasons else _APPROVED,
                                  "reasons": reasons, "order_ids": None,
                                  "trading_state": self._state, "ts": now, "worst_case": None})
        _set_attr(d, "__pydantic_fields_set__", set(_DECISION_FIELDS))
        _set_attr(d, "__pydantic_extra__", None)
        _set_attr(d, "__pydantic_private__", None)
        return d

    def use_prior_lookup(self, prior: PriorLookup) -> None:
        """Consulted for every proposal_id the gate has no decision for (see _evaluate)."""
        self._prior = prior

    _PRIOR_CODES = {"cancelled": DenialCode.BRACKET_CANCELLED_AT_IB,
                    "finished": DenialCode.BRACKET_FINISHED_AT_IB,
                    "not_at_ib": DenialCode.PLACEMENT_FAILED}

    def _from_prior(self, p: TradeProposal, prior: PriorPlacement, now: datetime) -> RiskDecision:
        """The decision that agrees with what IB has for this orderRef (no reservation: a
        working bracket is counted from IB's working orders, as after any restart)."""
        if prior.outcome == "placed" and prior.order_ids is not None and all(
                (prior.order_ids.entry, prior.order_ids.take_profit, prior.order_ids.stop_loss)):
            return construct(RiskDecision, proposal_id=p.proposal_id, agent_id=p.agent_id,
                             verdict=_APPROVED, reasons=[], order_ids=prior.order_ids,
                             trading_state=self._state, ts=now)
        code = self._PRIOR_CODES.get(prior.outcome, DenialCode.BRACKET_CANCELLED_AT_IB)
        return self._decision(p, [deny(code, value=prior.outcome, detail=prior.detail[:300])], now)

    def restore_decision(self, proposal: TradeProposal, decision: RiskDecision) -> None:
        """A decision taken by an earlier run (from the journal): a re-delivered proposal_id gets
        it back and never a second order. No reservation: the bracket, if still working, is
        counted from IB's working orders like any order without a reservation."""
        if proposal.proposal_id not in self._decisions:
            self._decisions.put(proposal.proposal_id, proposal, decision)

    def restore_attribution(self, realized: Mapping[str, float],
                            positions: Mapping[str, Mapping[int, float]],
                            last_price: Mapping[int, float]) -> None:
        """Earlier runs' fills, summed per agent_id (adapters/journal_attrib.py): what on_fill
        of each of them, on an empty ledger, would have left (core/recovery.py)."""
        for agent_id, value in realized.items():
            self._count_realized(agent_id, self.budget_of(agent_id), value)
        for agent_id, units_by_con in positions.items():
            held = self._agent_positions.setdefault(self.budget_of(agent_id), {})
            for cid, units in units_by_con.items():
                units += held.get(cid, 0.0)
                if abs(units) < 1e-9:
                    held.pop(cid, None)
                else:
                    held[cid] = units
        self._last_price.update(last_price)

    def note_exec_counted(self, exec_id: str, realized_counted: bool) -> None:
        """A fill already in the restored attribution: on_fill of it again counts nothing."""
        self._exec_ids[exec_id] = realized_counted

    def decision_for(self, proposal_id: str) -> RiskDecision | None:
        """The current decision for an id (None if never seen or long forgotten)."""
        seen = self._decisions.get(proposal_id)
        return None if seen is None else seen[1]

    def _log_decision(self, p: TradeProposal, d: RiskDecision, c: RuleContext | None) -> None:
        # nothing is built for a line the level filters out; enum values read as attributes
        # (`.value` is a Python-level property on every read); log.info: core/logs.py's fast
        # path (log.bound().info would take structlog's own, three times the cost)
        if not log.is_enabled_for(_INFO):
            return
        log.info(
            "risk_decision", proposal_id=p.proposal_id, agent_id=p.agent_id,
            verdict=d.verdict._value_, codes=[r.code._value_ for r in d.reasons],
            symbol=p.symbol, con_id=None if c is None else c.con_id, side=p.side._value_,
            quantity=p.quantity,
            worst_case_loss=None if c is None else round(c.worst_case_loss, 2),
            trading_state=self._state._value_)

    def _reject(self, decision: RiskDecision, reasons: list[Reason], why: str) -> RiskDecision:
        """Replace an approval with a rejection and release its reservation."""
        self.release(decision.proposal_id, why)
        new = construct(RiskDecision, proposal_id=decision.proposal_id,
                        agent_id=decision.agent_id, verdict=_REJECTED, reasons=reasons,
                        order_ids=None, trading_state=self._state, ts=self._clock.now())
        self._decisions.replace(new)
        log.info("risk_decision", proposal_id=new.proposal_id, agent_id=new.agent_id,
                 verdict=new.verdict.value, codes=[r.code.value for r in reasons],
                 replaces="approved", trading_state=self._state.value)
        return new

    # ================================================================== margin (async step)

    async def confirm_margin(self, decision: RiskDecision, whatif: WhatIf) -> RiskDecision:
        """Confirm a provisional approval with IB's what-if; replace it on failure.

        The init-margin change must fit AvailableFunds x (1 - cushion) less the margin already
        confirmed for other open, not-yet-filled brackets. A timeout or error is WHATIF_FAILED.
        The check and the margin booking happen in one synchronous step after the await.
        """
        if decision.verdict is not Verdict.APPROVED:
            return decision
        pid = decision.proposal_id
        seen = self._decisions.get(pid)
        if seen is None or pid not in self.ledger:
            return decision
        first = seen[0] if isinstance(seen[0], TradeProposal) else \
            TradeProposal.model_validate_json(seen[0])
        bracket = ApprovedBracket(proposal=first, contract=self._contract_for(first),
                                  approved_at=decision.ts)
        lim = self._limits
        try:
            async with asyncio.timeout(lim.whatif_timeout_s):
                result = await whatif(bracket)
        except TimeoutError:
            return self._reject(decision, [deny(DenialCode.WHATIF_FAILED, lim.whatif_timeout_s,
                                                detail="timed out", field="timeout_s")],
                                "what-if timed out")
        except Exception as e:  # any failure of the what-if is a typed rejection, logged
            log.warning("whatif_failed", proposal_id=pid, error=repr(e), exc_info=True)
            return self._reject(decision, [deny(DenialCode.WHATIF_FAILED, value=repr(e)[:200])],
                                "what-if failed")
        if pid not in self.ledger:
            return self.decision_for(pid) or decision   # released meanwhile (e.g. cancelled)
        if self._state is TradingState.HALTED:
            return self._reject(decision, [deny(DenialCode.TRADING_HALTED, value="HALTED",
                                                detail="halted during the what-if")], "halted")
        change = _float(result.get("init_margin_change", result.get("initMarginChange")))
        if change is None:
            return self._reject(decision, [deny(DenialCode.WHATIF_FAILED, value=str(result)[:200],
                                                detail="no init margin change in the answer")],
                                "what-if unusable")
        snap = self._snapshot
        funds = _float(snap.account_values.get("AvailableFunds")) if snap is not None else None
        if funds is None:
            return self._reject(decision, [deny(DenialCode.ACCOUNT_VALUES_UNKNOWN,
                                                field="AvailableFunds")], "funds unknown")
        room = funds * (1 - lim.margin_cushion_pct / 100.0) - self._margin_committed()
        if change > room:
            return self._reject(decision, [deny(DenialCode.INSUFFICIENT_MARGIN, room, change)],
                                "insufficient margin")
        self.ledger.set_margin(pid, max(0.0, change))
        return decision

    def _margin_committed(self) -> float:
        """Margin confirmed for open brackets whose entry the snapshot does not show yet."""
        return sum(r.margin for r in self.ledger if r.margin and r.pending_units > 0)

    def _contract_for(self, p: TradeProposal) -> ResolvedContract | None:
        return self._contract_info(p) if self._contract_info is not None else None

    # ================================================================== fills and order events

    def on_fill(self, fill: Fill) -> Reservation | None:
        """Attribute a fill to its agent; move its reservation. The released one if it closed.
        A combo's BAG execution moves the bracket (quantity in combos); each leg's execution
        moves the agent's position in that leg and carries the realized P&L."""
        bag = fill.sec_type == "BAG"
        combo_leg = not bag and fill.proposal_id in self._combos
        budget = self.budget_of(fill.agent_id)
        realized = fill.realized_pnl if (not bag and fill.realized_pnl is not None
                                         and math.isfinite(fill.realized_pnl)) else None
        seen = self._exec_ids.get(fill.exec_id)
        if seen is not None:
            if not seen and realized is not None:  # the commission report came later
                self._count_realized(fill.agent_id, budget, realized)
                self._exec_ids[fill.exec_id] = True
            return None
        self._exec_ids[fill.exec_id] = realized is not None
        if realized is not None:
            self._count_realized(fill.agent_id, budget, realized)
        res = self.ledger.get(fill.proposal_id)
        if not bag:
            cid = fill.con_id or (res.con_id if res is not None else 0)
            held = self._agent_positions.setdefault(budget, {})
            units = held.get(cid, 0.0) + fill.side.sign * fill.quantity
            if abs(units) < 1e-9:
                held.pop(cid, None)
            else:
                held[cid] = units
            self._last_price[cid] = fill.price
            if combo_leg:
                return None
        if fill.leg is Leg.ENTRY:
            self.ledger.entry_fill(fill.proposal_id, fill.quantity, fill.ts)
            return None
        if self.ledger.exit_fill(fill.proposal_id, fill.quantity):
            return self.release(fill.proposal_id, f"{fill.leg.value} filled")
        return None

    def _count_realized(self, agent_id: str, budget: str, realized: float) -> None:
        # by agent_id (attribution, status) and by budget (what the loss rule reads)
        self._agent_realized[agent_id] = self._agent_realized.get(agent_id, 0.0) + realized
        self._budget_realized[budget] = self._budget_realized.get(budget, 0.0) + realized

    def on_order_event(self, ev: OrderEvent) -> Reservation | None:
        """An order-status step of one leg. The released reservation if the bracket closed."""
        if self.ledger.leg_status(ev.proposal_id, ev.leg, ev.status, ev.filled, ev.ts):
            return self.release(ev.proposal_id, f"{ev.leg.value} {ev.status}")
        return None

    def release(self, proposal_id: str, why: str) -> Reservation | None:
        """Stop counting a bracket (closed, cancelled, rejected, or never placed)."""
        res = self.ledger.release(proposal_id)
        if res is not None:
            log.info("reservation_released", proposal_id=proposal_id, budget=res.agent_id,
                     why=why, worst_case_loss=round(res.worst_case_loss, 2),
                     open_brackets=len(self.ledger))
        return res

    # ================================================================== introspection

    def summary(self) -> dict[str, Any]:
        """The governor's state at a glance (status command, logs)."""
        view = self._view
        lim = self._limits
        daily = self._snapshot.pnl.daily if self._snapshot is not None else None
        open_worst = self.ledger.total_worst_case + (view.foreign_worst_case if view else 0.0)
        return {
            "trading_state": self._state.value,
            "open_brackets": len(self.ledger) + (len(view.foreign) if view else 0),
            "reserved_brackets": len(self.ledger),
            "open_worst_case": round(open_worst, 2),
            "daily_pnl": daily,
            "daily_loss_budget_left": None if daily is None else round(
                lim.daily_loss_limit + min(0.0, daily) - open_worst, 2),
            "equity_peak": self._equity_peak,
            "agent_realized": dict(self._agent_realized),
            "decisions_remembered": len(self._decisions),
        }

    # ================================================================== bus wiring (thin)

    def attach(self, bus: Bus, *, whatif: WhatIf | None = None, prepare: Prepare | None = None,
               intake_maxsize: int = 1_000, order_budget: OrderBudget | None = None) -> None:
        """Subscribe to the bus. Proposals are queued REJECT-on-full (the bridge answers
        OVERLOADED); snapshots keep only the newest; order events, fills and commands BLOCK."""
        from bracketgate.bus.bus import Overflow

        self._bus = bus
        self._whatif = whatif
        self._prepare = prepare
        # an IB what-if is an order message too (placeOrder with whatIf=1)
        self._order_msgs_per_bracket = ORDER_MSGS_PER_BRACKET + (1 if whatif is not None else 0)
        self.use_order_budget(order_budget)
        bus.subscribe(TradeProposal, self._on_proposal_msg, name="risk", maxsize=intake_maxsize,
                      overflow=Overflow.REJECT)
        bus.subscribe(PortfolioSnapshot, self._on_snapshot_msg, name="risk", maxsize=4,
                      overflow=Overflow.DROP_OLDEST)
        bus.subscribe(OrderEvent, self._on_order_event_msg, name="risk")
        bus.subscribe(Fill, self._on_fill_msg, name="risk")
        bus.subscribe(ControlCommand, self._on_control_msg, name="risk")

    async def aclose(self) -> None:
        """Wait for in-flight placements (call before closing the bus)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def handle_proposal(self, proposal: TradeProposal) -> RiskDecision:
        """The async intake path: decide, confirm margin, place, publish the final decision."""
        await self._prepare_proposal(proposal)
        decision, fresh = self._evaluate(proposal, self._snapshot)
        if fresh and decision.verdict is Verdict.APPROVED:
            return await self._place_approved(proposal, decision,
                                              self._in_flight(proposal.proposal_id))
        return await self._answer(proposal, decision)

    async def _answer(self, proposal: TradeProposal, decision: RiskDecision) -> RiskDecision:
        """Publish a rejection or a repeat; a repeat of an approval still being placed waits
        for the placement's outcome, so it carries the order ids too."""
        pending = self._inflight.get(proposal.proposal_id)
        if pending is not None and decision.verdict is Verdict.APPROVED:
            decision = await asyncio.shield(pending)
        await self._require_bus().publish(decision)
        return decision

    def _in_flight(self, proposal_id: str) -> asyncio.Future[RiskDecision]:
        """Mark an approval as being placed: a re-delivery from now on waits for its outcome."""
        fut: asyncio.Future[RiskDecision] = asyncio.get_running_loop().create_future()
        self._inflight[proposal_id] = fut
        return fut

    async def _place_approved(self, p: TradeProposal, decision: RiskDecision,
                              fut: asyncio.Future[RiskDecision]) -> RiskDecision:
        try:
            decision = await self._confirm_and_place(p, decision)
        finally:
            del self._inflight[p.proposal_id]
            fut.set_result(self.decision_for(p.proposal_id) or decision)
        await self._require_bus().publish(decision)
        return decision

    def use_staging(self, stage: Callable[[ApprovedBracket], bool],
                    unstage: Callable[[str], None]) -> None:
        """The order intent is written while the what-if is asked (ExecutionAgent.stage,
        agents/staging.py); `unstage` voids it when the approval does not get to its placement."""
        self._stage, self._unstage = stage, unstage

    _stage: Callable[[ApprovedBracket], bool] | None = None
    _unstage: Callable[[str], None] | None = None

    def _drop_staged(self, staged: bool, proposal_id: str) -> None:
        if staged and self._unstage is not None:
            self._unstage(proposal_id)

    async def _confirm_and_place(self, p: TradeProposal, decision: RiskDecision) -> RiskDecision:
        bus = self._require_bus()
        staged = False
        if self._whatif is not None:
            staged = self._stage is not None and self._stage(ApprovedBracket(
                proposal=p, contract=self._contract_for(p), approved_at=decision.ts))
            try:
                decision = await self.confirm_margin(decision, self._whatif)
            except BaseException:   # cancelled: never placed
                self._drop_staged(staged, p.proposal_id)
                raise
            if decision.verdict is not Verdict.APPROVED:
                self._drop_staged(staged, p.proposal_id)
                return decision
        bracket = ApprovedBracket(proposal=p, contract=self._contract_for(p),
                                  approved_at=decision.ts)
        try:
            await bus.publish(bracket)
        except BaseException:
            self._drop_staged(staged, p.proposal_id)
            raise
        try:
            result: PlacementResult = await self._place_and_wait(bus, bracket)
        except Exception as e:  # any failure to place is a typed, logged rejection
            log.warning("placement_failed", proposal_id=p.proposal_id, agent_id=p.agent_id,
                        error=repr(e), exc_info=True)
            return self._reject(decision, [deny(DenialCode.PLACEMENT_FAILED,
                                                value=repr(e)[:200])], "placement failed")
        finally:   # a placement takes its staged intent; one never taken is voided
            self._drop_staged(staged, p.proposal_id)
        ids = result.order_ids
        if not result.ok or ids is None or not all((ids.entry, ids.take_profit, ids.stop_loss)):
            return self._reject(decision, [deny(DenialCode.PLACEMENT_FAILED, result.code,
                                                result.error or "no order ids")],
                                "placement refused")
        placed = decision.model_copy(update={"order_ids": result.order_ids})
        self._decisions.replace(placed)
        log.info("bracket_placed", proposal_id=p.proposal_id, agent_id=p.agent_id,
                 order_ids=result.order_ids.model_dump())
        return placed

    async def _place_and_wait(self, bus: Bus, bracket: ApprovedBracket) -> PlacementResult:
        """The placement's result. Past `placement_timeout_s` the placement is not abandoned
        (IB may be taking the legs right now): its outcome is awaited, bounded by
        OUTCOME_GRACE_S, so the decision says what IB has, never a guess."""
        from bracketgate.bus.errors import RequestTimeout

        p = bracket.proposal
        try:
            return await bus.request(PLACE_SERVICE, bracket,
                                     timeout=self._limits.placement_timeout_s)
        except RequestTimeout:
            if not bus.has_service(OUTCOME_SERVICE):
                raise
            log.warning("placement_slow", proposal_id=p.proposal_id, agent_id=p.agent_id,
                        timeout_s=self._limits.placement_timeout_s, code="PLACEMENT_SLOW")
            result = await bus.request(OUTCOME_SERVICE, p.proposal_id, timeout=OUTCOME_GRACE_S)
            if result is None:
                raise
            return result

    def _require_bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("RiskGovernor.attach(bus) first")
        return self._bus

    async def _on_proposal_msg(self, proposal: TradeProposal) -> None:
        # decided inline, in arrival order; an approval's margin check and placement run as
        # their own task so intake keeps moving while IB answers
        await self._prepare_proposal(proposal)
        decision, fresh = self._evaluate(proposal, self._snapshot)
        if fresh and decision.verdict is Verdict.APPROVED:
            fut = self._in_flight(proposal.proposal_id)
            task = asyncio.create_task(self._place_approved(proposal, decision, fut),
                                       name=f"risk:place:{proposal.proposal_id}")
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        else:
            await self._answer(proposal, decision)

    # ================================================================== replays (see _Replays)

    def use_id_memory(self, lookup: IdLookup) -> None:
        """Ask `lookup` (the journal's first_seen) about every id the DecisionMemory does not
        hold: a re-sent id gets its first decision back however long ago it was decided."""
        self._replays.lookup = lookup

    async def _recall(self, proposal: TradeProposal) -> None:
        pid = proposal.proposal_id
        if self._replays.lookup is None or pid in self._decisions:
            return
        seen = await self._replays.recall(proposal)
        if seen is not None and seen[1] is not None and pid not in self._decisions:
            self.restore_decision(seen[0], seen[1])
            log.info("proposal_id_recalled", proposal_id=pid, agent_id=proposal.agent_id,
                     verdict=seen[1].verdict.value)

    async def _prepare_proposal(self, proposal: TradeProposal) -> None:
        """Run the prepare hook; a failure only means the checks see less (they fail closed)."""
        await self._recall(proposal)
        if self._prepare is None or proposal.proposal_id in self._decisions:
            return
        try:
            await self._prepare(proposal)
        except Exception as e:  # logged with its reason; the gate then rejects on what it lacks
            log.warning("proposal_prepare_failed", proposal_id=proposal.proposal_id,
                        agent_id=proposal.agent_id, error=repr(e))

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("placement_task_failed", task=task.get_name(),
                      error=repr(task.exception()))

    async def _on_snapshot_msg(self, snapshot: PortfolioSnapshot) -> None:
        events = self.on_snapshot(snapshot)
        if events and self._save_state is not None:
            await self._save_state("auto", "auto", events[-1].reason)
        for ev in events:
            await self._require_bus().publish(ev)

    async def _on_order_event_msg(self, ev: OrderEvent) -> None:
        self.on_order_event(ev)

    async def _on_fill_msg(self, fill: Fill) -> None:
        self.on_fill(fill)

    async def _on_control_msg(self, cmd: ControlCommand) -> None:
        before = (self._state, frozenset(self.scoped_halts))
        ev = self.on_control(cmd)
        if self._save_state is not None and before != (self._state, frozenset(self.scoped_halts)):
            await self._save_state("operator", cmd.by, cmd.reason or cmd.action)
        if ev is not None:
            await self._require_bus().publish(ev)


def _explained(reasons: list[Reason], note: Reason) -> list[Reason]:
    """The rules' QUOTE_UNAVAILABLE reasons as one: the prepare hook's (why no quote)."""
    if not any(r.code is DenialCode.QUOTE_UNAVAILABLE for r in reasons):
        return reasons
    out: list[Reason] = []
    for r in reasons:
        if r.code is not DenialCode.QUOTE_UNAVAILABLE:
            out.append(r)
        elif note is not None:
            out.append(note)
            note = None  # type: ignore[assignment]
    return out


def _scoped_halt(halts: set[tuple[str | None, str | None]], p: TradeProposal) -> Reason | None:
    """TRADING_HALTED for a proposal inside a scoped flatten's halt (agent, symbol or both)."""
    for agent, symbol in halts:
        if (agent is None or agent == p.agent_id) and (symbol is None or symbol == p.symbol):
            scope = " ".join(f"{k} {v}" for k, v in (("agent", agent), ("symbol", symbol)) if v)
            return deny(DenialCode.TRADING_HALTED, value=f"HALTED ({scope})",
                        detail=f"a flatten halted {scope}")
    return None


class _Replays:
    """How old a proposal is, and what the journal remembers of ids the DecisionMemory forgot.

    Age: from the proposal's `created_at`, and from when the id was first journaled (a proposal
    resubmitted after a restart keeps its first time); the older counts. Older than
    `max_proposal_age_s`, or a created_at more than `max_clock_skew_s` ahead of our clock, is
    refused PROPOSAL_EXPIRED (a gate decision: a re-send gets it again).
    A lookup that fails cannot tell whether the id was decided: that one delivery is refused
    OVERLOADED (not remembered, so a retry is decided) and never placed.
    """

    FIRST_SEEN_MAX = 4096

    def __init__(self) -> None:
        self.lookup: IdLookup | None = None
        self.first_seen: dict[str, datetime] = {}   # proposal_id -> first journaled, until decided
        self.unknown: set[str] = set()              # proposal_ids whose lookup failed

    async def recall(self, p: TradeProposal) -> tuple[TradeProposal, RiskDecision | None] | None:
        """(the first proposal, its first decision or None) when the journal knows the id."""
        assert self.lookup is not None
        try:
            seen = await self.lookup(p.proposal_id)
        except Exception as e:  # cannot tell: refuse this delivery (see class doc)
            log.error("proposal_id_lookup_failed", proposal_id=p.proposal_id,
                      agent_id=p.agent_id, error=repr(e), code=DenialCode.OVERLOADED.value)
            self.unknown.add(p.proposal_id)
            return None
        if seen is None:
            return None
        self.first_seen[p.proposal_id] = seen.first_seen
        if len(self.first_seen) > self.FIRST_SEEN_MAX:   # ids recalled but never decided
            del self.first_seen[next(iter(self.first_seen))]
        if seen.decision is None:
            return p, None
        first = p
        if seen.proposal is not None:
            try:
                first = TradeProposal.model_validate(seen.proposal)
            except ValueError:  # journaled by another version: answer with the first decision
                first = p
        return first, RiskDecision.model_validate(seen.decision)

    def cannot_tell(self, p: TradeProposal, now: datetime, state: TradingState) -> RiskDecision:
        self.unknown.discard(p.proposal_id)
        reason = deny(DenialCode.OVERLOADED, value=p.proposal_id,
                      detail="the journal did not answer whether this id was decided; retry")
        return construct(RiskDecision, proposal_id=p.proposal_id, agent_id=p.agent_id,
                         verdict=_REJECTED, reasons=[reason], order_ids=None,
                         trading_state=state, ts=now)

    def expired(self, p: TradeProposal, now: datetime, lim: RiskLimits) -> Reason | None:
        first = self.first_seen.pop(p.proposal_id, None) if self.first_seen else None
        if first is None and p.created_at is None:
            return None     # no age to judge (as below, with no ages)
        if p.created_at is not None:
            ahead = (p.created_at - now).total_seconds()
            if ahead > lim.max_clock_skew_s:
                return deny(DenialCode.PROPOSAL_EXPIRED, lim.max_clock_skew_s, round(-ahead, 3),
                            detail=f"created_at is {ahead:.1f} s ahead of the daemon's clock"
                                   " (beyond max_clock_skew_s)", field="created_at")
        ages = [((now - t).total_seconds(), name) for t, name in
                ((p.created_at, "created_at"), (first, "first journaled")) if t is not None]
        if not ages:
            return None
        age, since = max(ages)
        if age > lim.max_proposal_age_s:
            return deny(DenialCode.PROPOSAL_EXPIRED, lim.max_proposal_age_s, round(age, 3),
                        detail=f"{age:.1f} s old (since {since})",
                        field="created_at" if since == "created_at" else None)
        return None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
