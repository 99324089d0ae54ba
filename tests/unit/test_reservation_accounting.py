"""A fresh reservation's share of the ledger's totals (ReservationLedger._account_new, the
approval's path) is the generic _account(res, +1) bit for bit; a used one takes the generic."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from bracketgate.agents.reservations import Reservation, ReservationLedger

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)
prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)


def _res(pid: str, agent: str, con_id: int, sign: int, qty: float, px: float, mult: float,
         wcl: float) -> Reservation:
    return Reservation(proposal_id=pid, agent_id=agent, symbol="X", con_id=con_id, sign=sign,
                       quantity=qty, entry_price=px, stop_price=px / 2, multiplier=mult,
                       worst_case_loss=wcl, created_at=NOW)


def _totals(led: ReservationLedger) -> tuple[object, ...]:
    return (led.total_worst_case, led.total_margin, led.gross_pending_notional,
            tuple(led.side_pending_notional), dict(led.agent_worst_case),
            dict(led.agent_pending_notional), {k: tuple(v) for k, v in led.contract_pending.items()})


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 3), st.sampled_from([1, -1]),
                          st.one_of(st.integers(1, 10_000), st.floats(0.5, 1e4)), prices,
                          st.sampled_from([1.0, 50.0, 100.0]), prices), min_size=1, max_size=8))
def test_fresh_accounting_is_the_generic_one(rows: list[tuple]) -> None:
    fast, generic = ReservationLedger(), ReservationLedger()
    for n, (agent, cid, sign, qty, px, mult, wcl) in enumerate(rows):
        fast.reserve(_res(f"p{n}", agent, cid, sign, qty, px, mult, wcl))
        res = _res(f"p{n}", agent, cid, sign, qty, px, mult, wcl)
        generic._by_id[res.proposal_id] = res
        generic._by_contract.setdefault(res.con_id, {})[res.proposal_id] = res
        generic._by_agent.setdefault(res.agent_id, {})[res.proposal_id] = res
        generic._account(res, +1)
        assert _totals(fast) == _totals(generic)
    for n in range(len(rows)):
        fast.release(f"p{n}")
        generic.release(f"p{n}")
        assert _totals(fast) == _totals(generic)


def test_a_used_reservation_is_accounted_by_the_generic_rule() -> None:
    """Re-reserved after a release (check_as_new): its fills are counted, not its quantity."""
    led = ReservationLedger()
    res = _res("p1", "a", 1, 1, 10, 100.0, 1.0, 50.0)
    led.reserve(res)
    led.entry_fill("p1", 4, NOW)
    led.settle(NOW)
    before = _totals(led)
    led.release("p1")
    led.reserve(res)
    assert _totals(led) == before
    assert led.contract_pending[1][0] == 6.0     # 6 units still pending, not 10
