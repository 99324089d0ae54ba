"""Paper TWS combos (BAG): contracts from legs, combo quotes, atomic combo fills, combo margin.

The engine (sim/engine.py) and the server (sim/server.py) call in here through small hooks
wherever a contract can be a BAG; everything combo-specific lives in this module.

Conventions (IB's, for a BUY of the combo):
  * A BAG is `SimContract(con_id=BAG_CON_ID, sec_type="BAG", combo_legs=(ComboLeg(conId,
    ratio, action, exchange), ...))`. Every BAG has conId 28812380, as real TWS reports it.
  * Leg side = the leg's action when the combo is bought, reversed when it is sold.
  * Combo prices are per combo in leg price units: last = sum(s_i * ratio_i * last_i) with
    s_i = +1 for a BUY leg, -1 for a SELL leg. Debit combos are positive, credit combos
    negative (a bought short vertical is quoted e.g. -1.50).
  * Combo quote: bid = sum(BUY: +ratio*leg_bid, SELL: -ratio*leg_ask); ask = sum(BUY:
    +ratio*leg_ask, SELL: -ratio*leg_bid); last and close the signed sums of the legs' last
    and close; sizes = min over legs of leg size // ratio.
  * Matching uses the combo prices exactly as single contracts use theirs (sim/engine.py):
    BUY LMT fills when combo last <= limit, SELL LMT when combo last >= limit; a SELL STP
    triggers when combo last <= stop, a BUY STP when combo last >= stop; MKT (and a stop
    already through on arrival) fill at the combo ask (BUY) / bid (SELL). Tick 0.01; zero
    and negative prices are valid for combos.
  * A fill is atomic: all legs at once for the same number of combos. Each leg gets its own
    execution (the leg's contract, side, shares = combos x ratio, a leg price) and then one
    execution for the BAG itself (shares = combos, price = the combo price). Leg prices are
    the legs' last prices with the difference to the combo price put on the first leg where
    it keeps the price positive and on the leg's tick, so sum(s_i * ratio_i * p_i) == combo
    price exactly.
  * Commission is per leg (sim/margin.py CommissionModel, per leg order: options $0.65 per
    contract, $1 minimum per leg); the BAG execution carries none and gets no
    commissionReport (the legs' reports carry it). Positions exist per leg only.
  * Margin / what-if of a combo: the legs' requirements added to the account (sum of legs,
    as sim/margin.py rules), but the increase is capped at the structure's maximum loss when
    that is bounded (legs on one underlying, one expiry: verticals, straddles, strangles,
    butterflies...). Undefined risk (e.g. a short straddle) pays the sum of the legs.
    Positions already filled are margined per leg (no spread offsets in the account).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bracketgate.sim.model import (
    AccountChanged,
    ComboLeg,
    ExecutionAdded,
    OrderRejected,
    PositionChanged,
    SimContract,
    SimExecution,
    SimOrder,
    SimPosition,
    WhatIfResult,
)
from bracketgate.sim.universe import round_to_tick

if TYPE_CHECKING:  # pragma: no cover
    from bracketgate.sim.engine import Brokerage

BAG_CON_ID = 28812380
COMBO_TICK = 0.01
LEG_SEC_TYPES = ("OPT", "STK")
MSG_NO_LEGS = ("Error validating request.-'bN' : cause - Security type 'BAG' requires combo leg "
               "details.")


def is_bag(contract: Any) -> bool:
    return getattr(contract, "sec_type", "") == "BAG"


def leg_sign(leg: ComboLeg) -> int:
    return 1 if leg.action == "BUY" else -1


def _bad_leg(index: int, leg: ComboLeg) -> OrderRejected:
    side = {"BUY": 1, "SELL": 2}.get(str(leg.action).upper(), 0)
    return OrderRejected(
        321, f"Error validating request.-'bj' : cause - The combo details for leg '{index}' are "
             f"invalid. -  conid, ratio, side: {leg.con_id}, {leg.ratio}, {side}")


def bag_contract(universe: Any, symbol: str, currency: str, exchange: str,
                 legs: Iterable[ComboLeg]) -> SimContract:
    """The BAG a client described, its legs checked against the universe. Raises
    OrderRejected(321) for no legs or a leg TWS would refuse (unknown conId, not OPT/STK,
    ratio < 1, bad action, a conId twice, another underlying than the combo's symbol)."""
    legs = tuple(legs)
    if not legs:
        raise OrderRejected(321, MSG_NO_LEGS)
    out: list[ComboLeg] = []
    seen: set[int] = set()
    underlying = symbol.upper()
    for i, leg in enumerate(legs, start=1):
        action = str(leg.action).upper()
        c = universe.get(int(leg.con_id)) if leg.con_id else None
        if c is None or c.sec_type not in LEG_SEC_TYPES or int(leg.ratio) < 1 \
                or action not in ("BUY", "SELL") or c.con_id in seen:
            raise _bad_leg(i, leg)
        if not underlying:
            underlying = c.symbol
        if c.symbol != underlying:
            raise _bad_leg(i, leg)
        seen.add(c.con_id)
        out.append(ComboLeg(c.con_id, int(leg.ratio), action, (leg.exchange or "SMART").upper()))
    return SimContract(
        con_id=BAG_CON_ID, symbol=underlying, sec_type="BAG",
        exchange=(exchange or "SMART").upper(), primary_exchange="",
        currency=(currency or "USD").upper(), local_symbol="", trading_class="",
        multiplier=1.0, min_tick=COMBO_TICK, combo_legs=tuple(out),
    )


def check_bag(universe: Any, contract: SimContract) -> SimContract:
    """Engine-side check of an order's BAG (the server built it with bag_contract)."""
    return bag_contract(universe, contract.symbol, contract.currency, contract.exchange,
                        contract.combo_legs)


def legs_of(universe: Any, bag: SimContract) -> list[tuple[SimContract, ComboLeg]]:
    out = []
    for leg in bag.combo_legs:
        c = universe.get(leg.con_id)
        if c is None:
            raise OrderRejected(200, "No security definition has been found for the request")
        out.append((c, leg))
    return out


def priced_con_ids(contract: SimContract) -> tuple[int, ...]:
    """The conIds whose prices make this contract's price (a BAG: its legs)."""
    if is_bag(contract):
        return tuple(leg.con_id for leg in contract.combo_legs)
    return (contract.con_id,)


def touches(contract: SimContract, con_ids: set[int]) -> bool:
    if is_bag(contract):
        return any(leg.con_id in con_ids for leg in contract.combo_legs)
    return contract.con_id in con_ids


def open_orders_on(eng: Brokerage, con_ids: set[int]) -> set[int]:
    """permIds of open BAG orders with a leg in `con_ids` (they trade when a leg moves)."""
    return {p for p in eng._open_by_con.get(BAG_CON_ID, ())
            if touches(eng.orders[p].contract, con_ids)}


# ---------------------------------------------------------------------- prices


def _d(x: float) -> Decimal:
    return Decimal(repr(float(x)))


def _signed_sum(parts: Iterable[tuple[int, int, float]]) -> float:
    """sum(sign * ratio * price), exact in decimal, as a float without artefacts."""
    total = sum((_d(p) * s * r for s, r, p in parts), Decimal(0))
    return float(round(total, 8))


def last(eng: Brokerage, bag: SimContract) -> float:
    return _signed_sum((leg_sign(leg), leg.ratio, eng.price(c.con_id))
                       for c, leg in legs_of(eng.universe, bag))


def bid_ask(eng: Brokerage, bag: SimContract) -> tuple[float, float]:
    bids, asks = [], []
    for c, leg in legs_of(eng.universe, bag):
        b, a = eng._bid_ask(c)
        s = leg_sign(leg)
        bids.append((s, leg.ratio, b if s > 0 else a))
        asks.append((s, leg.ratio, a if s > 0 else b))
    return _signed_sum(bids), _signed_sum(asks)


def combine_quote(legs: list[tuple[ComboLeg, tuple[float, float, float, float, float, float]]]
                  ) -> tuple[float, float, float, float, float, float]:
    """(bid, ask, last, bidSize, askSize, lastSize) of a combo from its legs' quotes."""
    bid = _signed_sum((leg_sign(leg), leg.ratio, q[0] if leg_sign(leg) > 0 else q[1])
                      for leg, q in legs)
    ask = _signed_sum((leg_sign(leg), leg.ratio, q[1] if leg_sign(leg) > 0 else q[0])
                      for leg, q in legs)
    lst = _signed_sum((leg_sign(leg), leg.ratio, q[2]) for leg, q in legs)
    bid_size = min((q[3] if leg_sign(leg) > 0 else q[4]) // leg.ratio for leg, q in legs)
    ask_size = min((q[4] if leg_sign(leg) > 0 else q[3]) // leg.ratio for leg, q in legs)
    last_size = min(q[5] // leg.ratio for leg, q in legs)
    return bid, ask, lst, float(bid_size), float(ask_size), float(last_size)


def leg_prices(legs: list[tuple[SimContract, ComboLeg]], lasts: list[float],
               combo_price: float) -> list[float]:
    """Leg fill prices that add up (signed, by ratio) to `combo_price` exactly: the legs'
    last prices, the difference put on the first leg that stays positive and on its tick."""
    prices = [_d(p) for p in lasts]
    diff = _d(combo_price) - sum((p * leg_sign(leg) * leg.ratio
                                  for p, (_, leg) in zip(prices, legs)), Decimal(0))
    if diff != 0:
        for i, (c, leg) in enumerate(legs):
            candidate = prices[i] + diff / (leg_sign(leg) * leg.ratio)
            tick = _d(c.min_tick)
            if candidate > 0 and (candidate / tick) == (candidate / tick).to_integral_value():
                prices[i] = candidate
                break
        else:  # no leg can take it exactly: the closest on-tick price on the first leg
            c, leg = legs[0]
            p = float(prices[0] + diff / (leg_sign(leg) * leg.ratio))
            prices[0] = _d(max(round_to_tick(p, c.min_tick), c.min_tick))
    return [float(p) for p in prices]


def exact_avg(prev_avg: float, prev_qty: float, price: float, qty: float) -> float:
    """Average price after a fill, computed in decimal and rounded to 8 places as IB reports
    it (one fill at 233.71 averages 233.71, never 233.70999999999998)."""
    total = _d(prev_qty) + _d(qty)
    if total == 0:
        return 0.0
    return float(round((_d(prev_avg) * _d(prev_qty) + _d(price) * _d(qty)) / total, 8))


# ---------------------------------------------------------------------- fills


def execute(eng: Brokerage, order: SimOrder, qty: float, price: float, liquidity: int) -> None:
    """Fill `qty` combos of a BAG order at `price`: every leg, then the BAG, atomically.
    Mirrors Brokerage._execute (sim/engine.py) for the order, bracket and OCA bookkeeping."""
    from bracketgate.sim.engine import _apply_fill, _exec_exchange, _fmt_qty, log

    bag = order.contract
    legs = legs_of(eng.universe, bag)
    pxs = leg_prices(legs, [eng.price(c.con_id) for c, _ in legs], price)
    order_sign = 1 if order.action == "BUY" else -1
    now = eng.clock()
    prev_combos = order.filled
    executions: list[SimExecution] = []
    positions: list[SimPosition] = []
    for (c, leg), px in zip(legs, pxs):
        leg_qty = qty * leg.ratio
        side = order_sign * leg_sign(leg)
        earlier = [e for e in eng.executions
                   if e.perm_id == order.perm_id and e.contract.con_id == c.con_id]
        prev_qty = sum(e.shares for e in earlier)
        prev_value = sum(e.shares * e.price for e in earlier) * c.multiplier
        prev_avg = earlier[-1].avg_price if earlier else 0.0
        commission = eng.commission_model.execution_commission(c, prev_qty, prev_value,
                                                               leg_qty, px)
        pos = eng._positions.get(c.con_id)
        if pos is None:
            pos = eng._positions[c.con_id] = SimPosition(contract=c)
        realized, cash_delta = _apply_fill(pos, float(side), leg_qty, px, commission, c)
        eng.account.cash += cash_delta
        eng.account.commissions_today += commission
        if realized is not None:
            eng.account.realized_pnl_today += realized
            pos.realized_pnl += realized
        executions.append(SimExecution(
            exec_id=eng._new_exec_id(order), time=now, client_id=order.client_id,
            order_id=order.order_id, perm_id=order.perm_id, contract=c,
            side="BOT" if side > 0 else "SLD", shares=leg_qty, price=px,
            cum_qty=prev_qty + leg_qty, avg_price=exact_avg(prev_avg, prev_qty, px, leg_qty),
            order_ref=order.order_ref, account=order.account, exchange=_exec_exchange(c),
            commission=commission, realized_pnl=realized, liquidity=liquidity,
        ))
        eng.executions.append(executions[-1])
        positions.append(pos)
    order.avg_fill_price = exact_avg(order.avg_fill_price, prev_combos, price, qty)
    order.filled += qty
    order.last_fill_price = price
    executions.append(SimExecution(
        exec_id=eng._new_exec_id(order), time=now, client_id=order.client_id,
        order_id=order.order_id, perm_id=order.perm_id, contract=bag,
        side="BOT" if order_sign > 0 else "SLD", shares=qty, price=price, cum_qty=order.filled,
        avg_price=order.avg_fill_price, order_ref=order.order_ref, account=order.account,
        exchange=bag.exchange, commission=0.0, realized_pnl=None, liquidity=liquidity,
    ))
    eng.executions.append(executions[-1])
    parent_perm = eng._parent_of.get(order.perm_id)
    parent = eng.orders[parent_perm] if parent_perm is not None else None
    if parent is not None:
        eng._update_child(order, parent)
    elif order.remaining <= 1e-9:
        eng._finish(order, "Filled", f"Filled Size: {_fmt_qty(order.filled)}")
    else:
        order.status = "Submitted"
    log.info("combo_fill", client_id=order.client_id, order_id=order.order_id,
             perm_id=order.perm_id, qty=qty, price=price, leg_prices=pxs,
             commission=sum(e.commission for e in executions))
    eng._order_changed(order)
    for e in executions:
        eng._emit(ExecutionAdded(e))
    for pos in positions:
        eng._emit(PositionChanged(copy.copy(pos)))
    eng._emit(AccountChanged())
    if parent is not None:
        eng._sync_children(parent)
    else:
        eng._oca_standalone(order, qty)
    eng._sync_children(order)


# ---------------------------------------------------------------------- margin / what-if


def max_loss(legs: list[tuple[SimContract, ComboLeg]], leg_fill: list[float], side: int
             ) -> float | None:
    """Worst loss at expiry of one combo bought (side +1) or sold (-1) at `leg_fill`, or None
    when unbounded or not defined by one expiry (calendars, diagonals)."""
    opts = [(c, leg) for c, leg in legs if c.sec_type == "OPT"]
    if len({c.expiry for c, _ in opts}) > 1:
        return None
    cost = sum(side * leg_sign(leg) * leg.ratio * p * c.multiplier
               for (c, leg), p in zip(legs, leg_fill))

    def value(spot: float) -> float:
        total = 0.0
        for c, leg in legs:
            q = side * leg_sign(leg) * leg.ratio * c.multiplier
            if c.sec_type == "STK":
                total += q * spot
            elif c.right == "C":
                total += q * max(spot - c.strike, 0.0)
            else:
                total += q * max(c.strike - spot, 0.0)
        return total

    slope_up = sum(side * leg_sign(leg) * leg.ratio * c.multiplier
                   for c, leg in legs if c.sec_type == "STK" or c.right == "C")
    if slope_up < -1e-9:
        return None
    points = [0.0] + [c.strike for c, _ in opts]
    worst = min(value(s) for s in points) - cost
    return max(-worst, 0.0)


def _margins_with(eng: Brokerage, extras: dict[int, tuple[SimContract, float]]) -> Any:
    from bracketgate.sim.margin import ZERO_MARGIN

    quantities = {cid: (p.contract, p.quantity) for cid, p in eng._positions.items()}
    for cid, (c, dq) in extras.items():
        quantities[cid] = (c, quantities.get(cid, (c, 0.0))[1] + dq)
    total = ZERO_MARGIN
    for contract, q in quantities.values():
        if abs(q) <= 1e-9:
            continue
        has_under = contract.sec_type == "OPT" and contract.under_con_id in eng.universe
        under = eng.price(contract.under_con_id) if has_under else None
        total = total + eng.margin_model.position(contract, q, eng.price(contract.con_id), under)
    return total


def project(eng: Brokerage, bag: SimContract, action: str, qty: float,
            fill_px: float) -> WhatIfResult:
    """What-if of `qty` combos at the combo price `fill_px` (see the module docstring)."""
    side = 1 if action == "BUY" else -1
    legs = legs_of(eng.universe, bag)
    lasts = [eng.price(c.con_id) for c, _ in legs]
    fills = leg_prices(legs, lasts, fill_px)
    before = _margins_with(eng, {})
    elv_before = eng._net_liquidation()
    commission = 0.0
    slippage = 0.0
    extras: dict[int, tuple[SimContract, float]] = {}
    for (c, leg), lst, px in zip(legs, lasts, fills):
        leg_qty = qty * leg.ratio
        s = side * leg_sign(leg)
        commission += eng.commission_model.order_commission(c, leg_qty,
                                                            leg_qty * px * c.multiplier)
        slippage += s * (lst - px) * leg_qty * c.multiplier
        extras[c.con_id] = (c, s * leg_qty)
    after = _margins_with(eng, extras)
    init_change = after.initial - before.initial
    maint_change = after.maintenance - before.maintenance
    bound = max_loss(legs, fills, side)
    if bound is not None:
        init_change = min(init_change, bound * qty)
        maint_change = min(maint_change, bound * qty)
    commission = round(commission, 4)
    elv_after = elv_before - commission + slippage
    return WhatIfResult(
        init_margin_before=before.initial, maint_margin_before=before.maintenance,
        equity_with_loan_before=elv_before, init_margin_change=init_change,
        maint_margin_change=maint_change, equity_with_loan_change=elv_after - elv_before,
        init_margin_after=before.initial + init_change,
        maint_margin_after=before.maintenance + maint_change,
        equity_with_loan_after=elv_after, commission=commission, currency=bag.currency,
    )


# ---------------------------------------------------------------------- server helpers


def quote(tws: Any, bag: SimContract) -> tuple[float, float, float, float, float, float]:
    """The server's combo quote from its legs' quotes (PaperTWS._quote per leg)."""
    return combine_quote([(leg, tws._quote(c)) for c, leg in legs_of(tws.universe, bag)])


def close(tws: Any, bag: SimContract) -> float:
    return _signed_sum((leg_sign(leg), leg.ratio, tws._close_price(c))
                       for c, leg in legs_of(tws.universe, bag))


def send_quote(tws: Any, s: Any, req_id: int, bag: SimContract, first: bool = False) -> None:
    from bracketgate.sim import codec

    bid, ask, lst, bid_size, ask_size, last_size = quote(tws, bag)
    s.send(codec.tick_price(req_id, codec.BID, bid, bid_size))
    s.send(codec.tick_price(req_id, codec.ASK, ask, ask_size))
    s.send(codec.tick_price(req_id, codec.LAST, lst, last_size))
    if first:
        s.send(codec.tick_price(req_id, codec.CLOSE, close(tws, bag), 0))


def start_quotes(tws: Any, s: Any, m: Any) -> None:
    """reqMktData on a BAG: marketDataType, the combo's bid/ask/last/close, then a tick
    snapshot end (snapshot) or streaming on every leg move (Session.combo_quotes)."""
    from bracketgate.sim import codec

    spec = m.contract
    try:
        bag = bag_contract(tws.universe, spec.symbol, spec.currency, spec.exchange, m.combo_legs)
    except OrderRejected as e:
        s.send(codec.error(m.req_id, e.code, e.message, s.version))
        return
    s.send(codec.market_data_type(m.req_id, 1))
    send_quote(tws, s, m.req_id, bag, first=True)
    if m.snapshot or m.regulatory_snapshot:
        s.send(codec.tick_snapshot_end(m.req_id))
    else:
        s.combo_quotes[m.req_id] = bag


def on_price(tws: Any, con_id: int) -> None:
    """A leg moved: re-quote every streaming combo that has it."""
    for s in list(tws._sessions.values()):
        for req_id, bag in list(s.combo_quotes.items()):
            if any(leg.con_id == con_id for leg in bag.combo_legs):
                send_quote(tws, s, req_id, bag)


MSG_BAG_DETAILS = ("Error validating request.-'bI' : cause - 'BAG' isn't supported for contract "
                   "data request. Please enter a valid security type")
