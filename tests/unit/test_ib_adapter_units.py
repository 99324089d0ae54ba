"""Pure pieces of the IB adapter and tools: error classification, number conversion, the smoke rail."""

import math

import pytest

from bracketgate.adapters.ib import LIVE_PORTS, ErrorClass, IBBroker, classify_error, ib_number
from bracketgate.adapters.ib_tools import transmit_allowed
from bracketgate.bus.errors import BrokerConnectError


@pytest.mark.parametrize("code,cls", [
    (2104, ErrorClass.INFO), (2106, ErrorClass.INFO), (2158, ErrorClass.INFO),
    (1100, ErrorClass.CONNECTIVITY), (1101, ErrorClass.CONNECTIVITY), (1102, ErrorClass.CONNECTIVITY),
    (326, ErrorClass.CONNECTION), (502, ErrorClass.CONNECTION),
    (103, ErrorClass.ORDER), (110, ErrorClass.ORDER), (201, ErrorClass.ORDER), (202, ErrorClass.ORDER),
    (2103, ErrorClass.WARNING), (162, ErrorClass.REQUEST), (999999, ErrorClass.ERROR),
])
def test_classify_error(code, cls):
    assert classify_error(code) is cls


@pytest.mark.parametrize("raw,expected", [
    (1.5, 1.5), ("2.25", 2.25), (1.7976931348623157e308, None), ("1.7976931348623157E308", None),
    (math.nan, None), (math.inf, None), ("", None), (None, None), ("abc", None), (0, 0.0),
])
def test_ib_number(raw, expected):
    assert ib_number(raw) == expected


@pytest.mark.parametrize("port", sorted(LIVE_PORTS))
def test_live_port_needs_opt_in(port):
    async def publish(_):
        return None
    with pytest.raises(BrokerConnectError, match="LIVE"):
        IBBroker(host="127.0.0.1", port=port, client_id=1, publish=publish)


@pytest.mark.parametrize("env,port,account,ok", [
    ({}, 4002, "DU1", False),
    ({"ALLOW_ORDERS": "1"}, 4002, "DU1", False),
    ({"IBKR_PAPER": "1"}, 4002, "DU1", False),
    ({"ALLOW_ORDERS": "1", "IBKR_PAPER": "1"}, 4002, "DU1", True),
    ({"ALLOW_ORDERS": "1", "IBKR_PAPER": "1"}, 4001, "DU1", False),
    ({"ALLOW_ORDERS": "1", "IBKR_PAPER": "1"}, 7496, "DU1", False),
    ({"ALLOW_ORDERS": "1", "IBKR_PAPER": "1"}, 4002, "U1234", False),
])
def test_smoke_transmit_rail(env, port, account, ok):
    assert transmit_allowed(port, account, env)[0] is ok


async def test_data_changed_notices_wait_for_a_placements_acks_bounded(monkeypatch) -> None:
    """While a placement reads IB's acks, the data-changed notice (which rebuilds the portfolio
    snapshot) waits until they are read, and DIRTY_HOLD_S at most (placements back to back)."""
    import asyncio

    import bracketgate.adapters.ib as ibmod
    from bracketgate.bus.messages import BrokerDataChanged

    async def publish(_msg):
        return None

    b = IBBroker(host="127.0.0.1", port=4002, client_id=1, publish=publish)

    def notices() -> list[str]:
        out = []
        while b._outbox.qsize():
            msg = b._outbox._q.get_nowait()
            msg = getattr(msg, "msg", msg)
            if isinstance(msg, BrokerDataChanged):
                out.append(msg.kind)
        return out

    b._mark_dirty("orders")
    await asyncio.sleep(0)
    assert notices() == ["orders"]                      # no placement: at once
    waiter = lambda: None  # noqa: E731
    b._ack_waiters.add(waiter)                          # a placement reads its acks
    b._mark_dirty("orders")
    b._mark_dirty("quotes")
    await asyncio.sleep(0)
    assert notices() == [] and b._dirty_hold is not None
    b._ack_waiters.discard(waiter)                      # what _wait_ack's end does
    asyncio.get_running_loop().call_soon(b._flush_dirty)
    await asyncio.sleep(0)
    assert notices() == ["orders", "quotes"] and b._dirty_hold is None
    monkeypatch.setattr(ibmod, "DIRTY_HOLD_S", 0.02)
    b._ack_waiters.add(waiter)                          # acks that take long: held 20 ms at most
    b._mark_dirty("positions")
    await asyncio.sleep(0)
    assert notices() == []
    await asyncio.sleep(0.1)
    assert notices() == ["positions"] and b._dirty_hold is None
