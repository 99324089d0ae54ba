"""Paper TWS brokerage engine: account, orders, matching, brackets, fills, P&L. No wire, no sockets.

CONTRACT (sim/server.py codes against exactly this; keep signatures stable):

    eng = Brokerage(universe: Universe, account: AccountState | None = None, clock=time.time,
                    margin_model=..., commission_model=...)
    eng.subscribe(callback: Callable[[BrokerEvent], None])   # synchronous fan-out, in order
    eng.next_perm_id() -> int

    eng.place(order: SimOrder) -> SimOrder
        New order or modify (same (client_id, order_id) not terminal -> modify price/qty).
        Raises OrderRejected(code, msg): 103 duplicate/non-increasing id (new id <= the highest
        that client used, unless it is a modify of its own live order), 110 price not on
        min_tick, 200 unknown contract, 201 insufficient margin, 321 missing field
        (e.g. LMT without lmt_price, STP without aux_price, quantity <= 0).
        Bracket semantics: an order with transmit=False is held (status PreSubmitted... kept in
        a pending set, nothing works) until an order of the same client whose parent chain
        includes it arrives with transmit=True; then the whole chain is released. Children
        (parent_id != 0) work only after the parent has fully filled; partial parent fills
        leave the children's quantity following the parent's FILLED quantity
        (IB: child qty is amended as the parent fills). OCA group: when one member fills
        (even partially, ocaType 1 cancels the rest on first fill; ocaType 2/3 reduce), the
        others are Cancelled.
        MKT orders fill at once at the current price (+/- half spread); marketable LMT orders
        fill at once at the limit or better; others rest. Emits OrderChanged (and fills).

    eng.what_if(order: SimOrder) -> WhatIfResult   # no order is created, no id consumed
    eng.cancel(client_id: int, order_id: int) -> None
        Emits OrderError(202, "Order Canceled - reason:") + OrderChanged(status Cancelled).
        Cancelling a parent cancels its children. Raises OrderRejected(10147 or 161) if the
        order is unknown or already terminal.
    eng.global_cancel() -> None                    # every working order, any client
    eng.set_price(con_id: int, price: float) -> None
        Moves the market; trades through working orders crossing the move (a limit BUY at
        or above the new price fills at its limit, a STP SELL triggers when price <= aux and
        fills at the price...). Updates P&L. Emits PriceChanged, then fills.
    eng.set_price_fill_qty(max_qty: float | None)  # optional: cap per price move -> partial fills

    Reads (for the wire layer):
    eng.orders_for(client_id: int) -> list[SimOrder]       # client 0 sees all; open (non-terminal)
    eng.completed_orders() -> list[SimOrder]               # terminal orders of the day
    eng.executions_since(client_id: int | None, filter...) -> list[SimExecution]
    eng.positions() -> list[SimPosition]                   # non-zero + zeroed today
    eng.account_values() -> list[tuple[str, str, str]]     # (tag, value, currency), TWS tags
    eng.portfolio() -> list[tuple[SimPosition, float mkt_price, float mkt_value, float upnl, float rpnl]]
    eng.pnl() -> tuple[float daily, float unrealized, float realized]
    eng.pnl_single(con_id) -> tuple[int pos, float daily, float unrealized, float realized, float value]
    eng.price(con_id) -> float
    eng.to_dict() / Brokerage.from_dict(d, universe)       # --state FILE persistence (JSON)
    eng.reset()

This file is a placeholder until the engine lands; see sim/model.py for the shared types.
"""
