"""Shared builders for the brokerage engine tests: a fixed universe, a hand-moved clock, orders."""

from __future__ import annotations

from datetime import date

from bracketgate.sim.engine import Brokerage
from bracketgate.sim.model import BrokerEvent, SimContract, SimOrder
from bracketgate.sim.universe import Universe

AS_OF = date(2026, 11, 20)          # a Friday: the third Friday of November 2026
T0 = 1_795_176_000.0                # 2026-11-20 12:00 UTC


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_engine(clock: Clock | None = None) -> tuple[Brokerage, list[BrokerEvent], Clock]:
    clock = clock or Clock()
    eng = Brokerage(Universe(AS_OF), clock=clock)
    events: list[BrokerEvent] = []
    eng.subscribe(events.append)
    return eng, events, clock


def order(contract: SimContract, order_id: int, action: str, qty: float, order_type: str = "MKT",
          lmt: float | None = None, aux: float | None = None, *, client_id: int = 1,
          parent_id: int = 0, transmit: bool = True, order_ref: str = "", oca_group: str = "",
          oca_type: int = 0) -> SimOrder:
    return SimOrder(
        client_id=client_id, order_id=order_id, perm_id=0, contract=contract, action=action,
        total_quantity=qty, order_type=order_type, lmt_price=lmt, aux_price=aux,
        parent_id=parent_id, transmit=transmit, order_ref=order_ref, oca_group=oca_group,
        oca_type=oca_type,
    )


def bracket(eng: Brokerage, contract: SimContract, first_id: int, action: str, qty: float,
            entry: float | None, take_profit: float, stop: float, client_id: int = 1,
            order_ref: str = "") -> tuple[SimOrder, SimOrder, SimOrder]:
    """ib_async's bracketOrder: parent LMT (or MKT if entry is None), TP LMT, SL STP."""
    exit_action = "SELL" if action == "BUY" else "BUY"
    parent = eng.place(order(contract, first_id, action, qty, "LMT" if entry else "MKT", entry,
                             client_id=client_id, transmit=False, order_ref=order_ref))
    tp = eng.place(order(contract, first_id + 1, exit_action, qty, "LMT", take_profit,
                         client_id=client_id, parent_id=first_id, transmit=False,
                         order_ref=order_ref))
    sl = eng.place(order(contract, first_id + 2, exit_action, qty, "STP", aux=stop,
                         client_id=client_id, parent_id=first_id, order_ref=order_ref))
    return parent, tp, sl


def kinds(events: list[BrokerEvent]) -> list[str]:
    return [type(e).__name__ for e in events]
