"""Builders shared by the RiskGovernor tests: proposals, snapshots, fills, a governor.

The governors built here have no IB contract details, so each contract is known by its offline
stand-in conId (agents.rules.offline_con_id): `position`, `quote` and `fill` use the same one
for the same contract (symbol, sec_type, expiry, strike, right).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bracketgate.agents.risk import RiskGovernor
from bracketgate.agents.rules import offline_con_id, proposal_offline_con_id
from bracketgate.bus.messages import (
    ConnectionState,
    Fill,
    Leg,
    OrderEvent,
    PnL,
    PortfolioSnapshot,
    Position,
    Quote,
    Side,
    TradeProposal,
    WorkingOrder,
)
from bracketgate.config.limits import RiskLimits
from bracketgate.core.clock import ManualClock

NLV = 1_000_000.0

# limits that let a plain 10 x AAPL @100 bracket through every check but the one under test
OPEN: dict[str, Any] = dict(
    max_snapshot_age_s=10.0, daily_loss_limit=1e9, per_trade_loss_limit=1e9, per_trade_loss_pct=100.0,
    max_drawdown_pct=None, slippage_ticks=0.0, slippage_pct=0.0, min_reward_risk=0.0,
    min_stop_distance_pct=0.0, max_stop_distance_pct=100.0, max_order_quantity=10_000_000,
    max_order_notional=1e12, max_position_units=1e12, max_position_notional=1e12,
    max_gross_exposure_pct=1e9, max_net_exposure_pct=1e9, max_open_brackets=1_000_000,
    max_proposals_per_s=1e9, proposal_burst=1_000_000_000, max_order_msgs_per_s=1e9,
    # the bands stay on (every default snapshot quotes its symbols) but wide: 1,000x the quote
    entry_band_pct=100_000.0, exit_band_pct=100_000.0,
    agent=dict(loss_limit=1e9, exposure_limit=1e12, max_open_brackets=1_000_000,
               max_proposals_per_s=1e9, proposal_burst=1_000_000_000),
)


def open_limits(**over: Any) -> RiskLimits:
    data = {**OPEN, **over}
    if "agent" in over:
        data["agent"] = {**OPEN["agent"], **over["agent"]}
    return RiskLimits.model_validate(data)


def proposal(pid: str = "p1", *, agent: str = "a1", symbol: str = "AAPL", side: str = "BUY",
             qty: int = 10, limit: float | None = 100.0, tp: float | None = None,
             sl: float | None = None, **kw: Any) -> TradeProposal:
    """A bracket; tp/sl default to +-2 / -+1 around the entry in the profitable direction."""
    ref = limit if limit is not None else 100.0
    s = 1 if side == "BUY" else -1
    return TradeProposal(
        proposal_id=pid, agent_id=agent, symbol=symbol, side=Side(side), quantity=qty,
        order_type="LMT" if limit is not None else "MKT", limit_price=limit,
        take_profit=tp if tp is not None else round(ref + 2 * s, 2),
        stop_loss=sl if sl is not None else round(ref - 1 * s, 2), **kw)


# every symbol the governor tests trade: the default snapshot quotes each (for the price bands)
QUOTED = ("AAPL", "MSFT", "TSLA", "SPY", "ES", "NQ", "EUR")
QUOTE_PX = 100.0


def snapshot(clock: ManualClock, *, nlv: float | None = NLV, funds: float | None = 900_000.0,
             daily: float | None = 0.0, positions: Iterable[Position] = (),
             quotes: dict[int, Quote] | Iterable[Quote] | None = None,
             working: Iterable[WorkingOrder] = (),
             connection: ConnectionState = ConnectionState.READY, reconciled: bool = True,
             ts: datetime | None = None) -> PortfolioSnapshot:
    """`quotes` None: every QUOTED symbol at QUOTE_PX (bid/ask a cent around it); {} none."""
    now = ts or clock.now()
    if quotes is None:
        quotes = [quote(clock, s, QUOTE_PX - 0.01, QUOTE_PX + 0.01, QUOTE_PX, now) for s in QUOTED]
    values = {}
    if nlv is not None:
        values["NetLiquidation"] = nlv
    if funds is not None:
        values["AvailableFunds"] = funds
    return PortfolioSnapshot(
        ts=now, connection=connection, reconciled=reconciled, account_values=values,
        account_values_ts=now, positions=list(positions), positions_ts=now, pnl=PnL(daily=daily),
        pnl_ts=now, working_orders=list(working), quotes=by_con_id(quotes))


def by_con_id(quotes: dict[int, Quote] | Iterable[Quote] | None) -> dict[int, Quote]:
    if quotes is None:
        return {}
    if isinstance(quotes, dict):   # keyed by anything (a symbol, a conId): each quote has its conId
        quotes = quotes.values()
    return {q.con_id: q for q in quotes}


def contract_id(symbol: str = "AAPL", sec_type: str = "STK", expiry: str | None = None,
                strike: float | None = None, right: str | None = None) -> int:
    """The offline conId the governor gives a proposal for this contract."""
    return offline_con_id(symbol, sec_type, expiry, strike, right)


def position(symbol: str, qty: float, price: float = 100.0, mult: float = 1.0,
             sec_type: str = "STK", expiry: str | None = None, strike: float | None = None,
             right: str | None = None) -> Position:
    return Position(con_id=contract_id(symbol, sec_type, expiry, strike, right), symbol=symbol,
                    sec_type=sec_type, quantity=qty, avg_cost=price * mult, multiplier=mult,
                    market_price=price, market_value=qty * price * mult, expiry=expiry,
                    strike=strike, right=right)


def quote(clock: ManualClock, symbol: str = "AAPL", bid: float | None = 99.99,
          ask: float | None = 100.01, last: float | None = 100.0,
          ts: datetime | None = None, sec_type: str = "STK", expiry: str | None = None,
          strike: float | None = None, right: str | None = None) -> Quote:
    return Quote(con_id=contract_id(symbol, sec_type, expiry, strike, right), symbol=symbol,
                 bid=bid, ask=ask, last=last, ts=ts or clock.now())


def fill(p: TradeProposal, clock: ManualClock, *, leg: Leg = Leg.ENTRY, qty: float | None = None,
         price: float | None = None, realized: float | None = None, exec_id: str | None = None,
         ) -> Fill:
    side = p.side if leg is Leg.ENTRY else p.side.opposite
    px = price if price is not None else (p.limit_price or 100.0)
    return Fill(proposal_id=p.proposal_id, agent_id=p.agent_id, order_id=1, leg=leg,
                exec_id=exec_id or f"{p.proposal_id}-{leg.value}-{clock.monotonic()}",
                symbol=p.symbol, con_id=proposal_offline_con_id(p), side=side,
                quantity=float(qty if qty is not None else p.quantity),
                price=px, realized_pnl=realized, ts=clock.now())


def order_event(p: TradeProposal, clock: ManualClock, status: str, *, leg: Leg = Leg.ENTRY,
                filled: float = 0.0) -> OrderEvent:
    return OrderEvent(proposal_id=p.proposal_id, agent_id=p.agent_id, order_id=1, leg=leg,
                      symbol=p.symbol, status=status, filled=filled,
                      remaining=max(0.0, p.quantity - filled), ts=clock.now())


def governor(limits: RiskLimits | None = None, clock: ManualClock | None = None,
             **kw: Any) -> tuple[RiskGovernor, ManualClock]:
    clock = clock or ManualClock()
    return RiskGovernor(limits or open_limits(), clock, **kw), clock
