"""sim.wire and the client side of sim.codec: framing, values, handshake, and every client
request decoded from frames the installed IB library itself writes, at every version."""

from __future__ import annotations

import struct

import pytest

from bracketgate.sim import codec
from bracketgate.sim.wire import (
    FrameDecoder,
    VersionOffer,
    WireError,
    f_decimal,
    f_double,
    f_multiplier,
    f_strike,
    java_double,
    pack,
    parse_version_offer,
    split_fields,
)
from tests.iblib import LIBRARY, Contract, ExecutionFilter, LimitOrder, Order, Stock, ib

MAX = 178 if LIBRARY == "ib_async" else 176


# ---------------------------------------------------------------- framing and values


def test_pack_and_split_round_trip():
    frame = pack(["4", "2", "-1", "2104", "Market data farm connection is OK:usfarm", ""])
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4 and frame.endswith(b"\0\0")
    assert split_fields(frame[4:]) == ["4", "2", "-1", "2104",
                                       "Market data farm connection is OK:usfarm", ""]


def test_frame_decoder_handles_split_and_joined_frames():
    data = pack(["9", "1", "217"]) + pack(["15", "1", "DU1"])
    dec = FrameDecoder()
    out = []
    for i in range(len(data)):  # one byte at a time
        out += dec.feed(data[i:i + 1])
    assert [split_fields(p) for p in out] == [["9", "1", "217"], ["15", "1", "DU1"]]
    assert [split_fields(p) for p in FrameDecoder().feed(data)] == [["9", "1", "217"],
                                                                   ["15", "1", "DU1"]]


def test_frame_decoder_refuses_absurd_lengths():
    with pytest.raises(WireError):
        FrameDecoder(max_frame=100).feed(struct.pack(">I", 101) + b"x")


@pytest.mark.parametrize("text,expected", [
    ("v157..176", 176), ("v157..178", 178), ("v157..200 +PACEAPI", 178), ("v176", 176),
])
def test_version_negotiation_takes_the_lower_max(text, expected):
    offer = parse_version_offer(text.encode())
    assert offer.negotiate(178) == expected
    if "+PACEAPI" in text:
        assert offer.options == "+PACEAPI"


def test_version_negotiation_refuses_old_clients():
    with pytest.raises(WireError):
        VersionOffer(100, 150).negotiate(178)
    with pytest.raises(WireError):
        parse_version_offer(b"hello")


@pytest.mark.parametrize("value,text", [
    (0.0, "0.0"), (100.0, "100.0"), (2.61, "2.61"), (-2.059999999939464, "-2.059999999939464"),
    (1038470.3, "1038470.3"), (12_000_000.0, "1.2E7"), (1e-4, "1.0E-4"),
    (1.7976931348623157e308, "1.7976931348623157E308"),
])
def test_doubles_are_formatted_like_java(value, text):
    assert java_double(value) == text


def test_field_formats():
    assert f_double(None) == "1.7976931348623157E308"
    assert f_decimal(100.0) == "100" and f_decimal(1.5) == "1.5"
    assert f_strike(0.0) == "0" and f_strike(257.5) == "257.5" and f_strike(230.0) == "230"
    assert f_multiplier(1.0) == "" and f_multiplier(50.0) == "50" and f_multiplier(100.0) == "100"


# ---------------------------------------------------------------- client requests


class _Recorder:
    """The library's own Client writing into a list instead of a socket (needs a running loop,
    hence the async tests)."""

    def __init__(self, version: int) -> None:
        self.client = ib.client.Client(ib.wrapper.Wrapper(ib.IB()))
        self.client.connState = self.client.CONNECTED
        self.client._serverVersion = version
        self.client.MaxRequests = 0
        self.frames: list[list[str]] = []
        self.client.conn.sendMsg = self._capture

    def _capture(self, data: bytes) -> None:
        self.frames += [split_fields(p) for p in FrameDecoder().feed(data)]

    def last(self, version: int):
        return codec.decode_client(self.frames[-1], version)


VERSIONS = sorted({157, 166, 170, 176, MAX})


@pytest.mark.parametrize("version", VERSIONS)
async def test_place_order_is_decoded_at_every_version(version):
    rec = _Recorder(version)
    contract = Stock("AAPL", "SMART", "USD")
    order = LimitOrder("SELL", 12, 231.25, orderRef="ref-42", tif="GTC", transmit=False,
                       parentId=40, ocaGroup="oca-1", ocaType=3, outsideRth=True)
    rec.client.placeOrder(41, contract, order)
    m = rec.last(version)
    assert isinstance(m, codec.PlaceOrder)
    assert (m.order_id, m.action, m.total_quantity, m.order_type) == (41, "SELL", 12, "LMT")
    assert (m.lmt_price, m.aux_price, m.tif, m.order_ref) == (231.25, None, "GTC", "ref-42")
    assert (m.transmit, m.parent_id, m.oca_group, m.oca_type) == (False, 40, "oca-1", 3)
    assert m.outside_rth and not m.what_if
    assert (m.contract.symbol, m.contract.sec_type, m.contract.exchange) == ("AAPL", "STK", "SMART")


@pytest.mark.parametrize("version", VERSIONS)
async def test_what_if_stop_limit_is_decoded(version):
    rec = _Recorder(version)
    order = Order(action="BUY", totalQuantity=3, orderType="STP LMT", lmtPrice=5901.0,
                  auxPrice=5900.0, whatIf=True)
    rec.client.placeOrder(7, Contract(conId=515416632, exchange="CME"), order)
    m = rec.last(version)
    assert m.what_if and (m.lmt_price, m.aux_price, m.order_type) == (5901.0, 5900.0, "STP LMT")
    assert m.contract.con_id == 515416632 and m.transmit


async def test_requests_are_decoded():
    rec = _Recorder(MAX)
    c = rec.client
    cases = [
        (lambda: c.reqMktData(5, Stock("MSFT", "SMART", "USD"), "", True, False, []),
         lambda m: isinstance(m, codec.ReqMktData) and m.req_id == 5 and m.snapshot
         and m.contract.symbol == "MSFT"),
        (lambda: c.cancelMktData(5), lambda m: m == codec.ReqId(2, 5)),
        (lambda: c.cancelOrder(9), lambda m: m == codec.CancelOrder(9)),
        (lambda: c.reqOpenOrders(), lambda m: m == codec.Simple(5)),
        (lambda: c.reqAllOpenOrders(), lambda m: m == codec.Simple(16)),
        (lambda: c.reqAccountUpdates(True, "DU1"),
         lambda m: m == codec.ReqAccountUpdates(True, "DU1")),
        (lambda: c.reqExecutions(8, ExecutionFilter(clientId=3, symbol="AAPL", side="BUY")),
         lambda m: m.req_id == 8 and m.filter.client_id == 3 and m.filter.symbol == "AAPL"
         and m.filter.side == "BUY"),
        (lambda: c.reqIds(1), lambda m: m == codec.ReqFlag(8, 1)),
        (lambda: c.reqContractDetails(11, Contract(secType="FUT", symbol="ES", exchange="CME")),
         lambda m: m.req_id == 11 and m.contract.sec_type == "FUT" and m.contract.symbol == "ES"),
        (lambda: c.reqAutoOpenOrders(True), lambda m: m == codec.ReqFlag(15, 1)),
        (lambda: c.reqCurrentTime(), lambda m: m == codec.Simple(49)),
        (lambda: c.reqGlobalCancel(), lambda m: m == codec.Simple(58)),
        (lambda: c.reqPositions(), lambda m: m == codec.Simple(61)),
        (lambda: c.reqAccountSummary(12, "All", "NetLiquidation,BuyingPower"),
         lambda m: m == codec.ReqAccountSummary(12, "All", "NetLiquidation,BuyingPower")),
        (lambda: c.reqPositionsMulti(13, "DU1", ""), lambda m: m.msg_id == 74 and m.req_id == 13),
        (lambda: c.reqAccountUpdatesMulti(14, "DU1", "", False),
         lambda m: m.msg_id == 76 and m.req_id == 14 and m.account == "DU1"),
        (lambda: c.reqSecDefOptParams(15, "AAPL", "", "STK", 265598),
         lambda m: m == codec.ReqSecDefOptParams(15, "AAPL", "", "STK", 265598)),
        (lambda: c.reqPnL(16, "DU1", ""), lambda m: m == codec.ReqPnL(16, "DU1", "")),
        (lambda: c.reqPnLSingle(17, "DU1", "", 265598),
         lambda m: m == codec.ReqPnL(17, "DU1", "", 265598)),
        (lambda: c.cancelPnL(16), lambda m: m == codec.ReqId(93, 16)),
        (lambda: c.cancelPnLSingle(17), lambda m: m == codec.ReqId(95, 17)),
        (lambda: c.reqCompletedOrders(False), lambda m: m == codec.ReqFlag(99, 0)),
        (lambda: c.reqMarketRule(26), lambda m: m == codec.ReqId(91, 26)),
        (lambda: c.reqHistoricalData(18, Stock("AAPL", "SMART", "USD"), "", "1 D", "1 hour",
                                     "TRADES", 1, 1, False, []),
         lambda m: isinstance(m, codec.Unsupported) and m.req_id == 18),
    ]
    for send, check in cases:
        send()
        msg = rec.last(MAX)
        assert check(msg), (rec.frames[-1], msg)


async def test_start_api_is_decoded():
    rec = _Recorder(MAX)
    rec.client.clientId = 12
    rec.client.startApi()
    assert rec.last(MAX) == codec.StartApi(12, "")
