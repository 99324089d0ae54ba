"""Frames of the paper TWS against real TWS / IB Gateway captures: same field count, same order,
same values where the inputs are the same; and every frame accepted by the installed client's
decoder at every version it negotiates.

Captures: /work/shared/reference/tws176_startup_whatif.{txt,json} (TWS 176, raw frames) and
/work/shared/reference/captures/*.txt (other real sessions, one message per line, '|'-joined).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from bracketgate.sim import codec
from bracketgate.sim.engine import Brokerage
from bracketgate.sim.model import SimContract, SimExecution, SimOrder, SimPosition, WhatIfResult
from bracketgate.sim.universe import Universe
from bracketgate.sim.wire import API_PREFIX, FrameDecoder, pack, pack_raw, split_fields
from tests.fixtures.paper_tws import start_paper_tws, stop_paper_tws
from tests.iblib import LIBRARY, ib

# shared/ sits beside the repository (CI clones with shared/ beside it); /work/shared as fallback
REF = next((p for p in (Path(__file__).resolve().parents[3] / "shared" / "reference",
                        Path("/work/shared/reference")) if p.is_dir()),
           Path(__file__).resolve().parents[3] / "shared" / "reference")
MAX = 178 if LIBRARY == "ib_async" else 176

# in CI the captures must be there: a missing shared/ is a failure, not a silent skip
pytestmark = pytest.mark.skipif(
    not (REF / "tws176_startup_whatif.json").exists() and os.environ.get("CI") != "true",
    reason=f"real TWS captures not found at {REF}")


def raw_frames(key: str) -> list[list[str]]:
    """The TWS 176 capture's server frames for one request key, decoded from the raw bytes."""
    data = json.loads((REF / "tws176_startup_whatif.json").read_text())
    out = []
    for b64 in data[key]:
        raw = base64.b64decode(b64)
        (n,) = struct.unpack(">I", raw[:4])
        assert n == len(raw) - 4
        out.append(split_fields(raw[4:]))
    return out


def capture_lines(name: str, prefix: str) -> list[list[str]]:
    lines = (REF / "captures" / name).read_text().splitlines()
    return [line.split("|") for line in lines if line.startswith(prefix)]


RUST = "rust-ibapi__test_fixtures_curated.txt"
GO = "ibkr-go__codec_capture_sv200_text.txt"

AAPL = SimContract(con_id=265598, symbol="AAPL", sec_type="STK", exchange="SMART",
                   primary_exchange="NASDAQ", local_symbol="AAPL", trading_class="NMS",
                   long_name="APPLE INC")
ESU5 = SimContract(con_id=637533641, symbol="ES", sec_type="FUT", exchange="CME",
                   primary_exchange="CME", local_symbol="ESU5", trading_class="ES",
                   multiplier=50.0, min_tick=0.25, expiry="20250919", contract_month="202509",
                   long_name="E-mini S&P 500", under_con_id=11004968)


def diff(ours: list[str], theirs: list[str], allowed: dict[int, str] | None = None) -> list[str]:
    """Field positions where the frames differ, minus the ones the test explains."""
    assert len(ours) == len(theirs), f"{len(ours)} fields, capture has {len(theirs)}"
    allowed = allowed or {}
    return [f"{i}: ours {a!r} capture {b!r}" for i, (a, b) in enumerate(zip(ours, theirs))
            if a != b and i not in allowed]


# ---------------------------------------------------------------- session start


def test_handshake_and_session_start_frames_match_tws_176():
    [handshake] = raw_frames("API_")
    assert len(handshake) == 2 and handshake[0] == "176"
    assert len(codec.conn_time.__doc__ or "") > 0
    start = raw_frames("71_2")
    assert codec.managed_accounts(["DU5509097"]) == start[0]
    assert codec.next_valid_id(217) == start[1]
    farm = [pack(f) for f in codec.farm_status(176)]
    assert farm == [pack(f) for f in start[2:]]  # byte for byte
    assert raw_frames("61_1") == [codec.position_end()]
    assert raw_frames("5_1") == [codec.open_order_end()]
    assert raw_frames("99_0") == [codec.completed_orders_end()]
    assert raw_frames("7_3") == [codec.exec_details_end(218)]


def test_account_values_have_the_captures_tags_order_and_layout():
    captured = [f for f in raw_frames("6_2") if f[0] == "6"]
    rows = Brokerage(Universe()).account_values()
    ours = [codec.account_value(tag, value, ccy, "DU5509097") for tag, value, ccy in rows]
    assert len(ours) == len(captured) == 153
    for mine, real in zip(ours, captured):
        assert len(mine) == len(real) == 6
        # the same tag in the same place; the capture's account is in GBP, ours in USD
        assert mine[:3] == real[:3] and mine[4] == real[4].replace("GBP", "USD")
    tail = raw_frames("6_2")[-2:]
    assert codec.account_update_time("13:26") == tail[0]
    assert codec.account_download_end("DU5509097") == tail[1]
    multi = raw_frames("76_1")
    mine = codec.account_update_multi(217, "DU5509097", "", "NetLiquidation", "1040992.61", "GBP")
    assert mine in multi
    assert codec.account_update_multi_end(217) == multi[-1]


def test_error_frames_match():
    [err, _] = raw_frames("3_220")
    ours = codec.error(220, 321, "Error validating request.-'bN' : cause - Missing order exchange.",
                       176)
    assert ours == err
    assert len(codec.error(-1, 2104, "x", 165)) == 5  # no advancedOrderRejectJson before 166


# ---------------------------------------------------------------- orders


def test_what_if_open_order_matches_the_176_capture():
    [_, real] = raw_frames("3_220")  # the what-if answer with the margin numbers
    cash = SimContract(con_id=12087792, symbol="EUR", sec_type="CASH", exchange="IDEALPRO",
                       primary_exchange="", local_symbol="EUR.USD", trading_class="EUR.USD")
    order = SimOrder(client_id=0, order_id=219, perm_id=665616366, contract=cash, action="BUY",
                     total_quantity=100, order_type="MKT", account="DU5509097")
    result = WhatIfResult(0.0, 0.0, 1038472.36, 2.61, 2.61, -2.059999999939464, 2.61, 2.61,
                          1038470.3, 1.64424, "GBP", "")
    ours = codec.open_order(order, 176, what_if=result)
    assert len(ours) == 136
    # TWS leaves the point estimate empty and sends min/max; we send the estimate in all three
    assert diff(ours, real, allowed={104: "commission", 106: "maxCommission"}) == []


def test_open_order_and_status_match_a_real_fill():
    real_open = capture_lines(RUST, "5|5|")
    real_status = capture_lines(RUST, "3|5|")
    order = SimOrder(client_id=100, order_id=5, perm_id=600745656, contract=AAPL, action="BUY",
                     total_quantity=100, order_type="MKT", account="DU1234567",
                     status="PreSubmitted")
    # that library's client sent minCompeteSize/competeAgainstBestOffset; ours sends none
    peg = {132: "minCompeteSize", 133: "competeAgainstBestOffset"}
    assert diff(codec.open_order(order, 176), real_open[0], peg) == []
    assert codec.order_status(order) == real_status[0]
    order.status, order.filled = "Filled", 100
    order.avg_fill_price = order.last_fill_price = 201.94
    assert diff(codec.open_order(order, 176), real_open[1], peg) == []
    assert codec.order_status(order) == real_status[1]


def test_future_limit_order_matches_the_es_capture():
    [real] = capture_lines(RUST, "5|2|637533641|")
    order = SimOrder(client_id=100, order_id=2, perm_id=2126726143, contract=ESU5, action="BUY",
                     total_quantity=1, order_type="LMT", lmt_price=5800.0, account="DU1234567",
                     status="Submitted")
    # the capture carries a live order's trigger price; ours is unset until triggered
    assert diff(codec.open_order(order, 176), real, {114: "trailStopPrice"}) == []


def test_bracket_child_carries_parent_id_where_tws_puts_it():
    [real] = capture_lines(GO, "5|211|")
    child = SimOrder(client_id=0, order_id=211, perm_id=900211, contract=AAPL, action="SELL",
                     total_quantity=1, order_type="LMT", lmt_price=2000.0, parent_id=210,
                     account="DU9000001", order_ref="r")
    ours = codec.open_order(child, 178)
    assert ours[ours.index("3") + 4] == "210" == real[ours.index("3") + 4]  # ocaType .. parentId
    assert ours[:18] == real[:18]  # contract and order head: same fields, same formats


def test_completed_order_layout_matches_captures():
    [real_173] = capture_lines(RUST, "101|637533641|")
    order = SimOrder(client_id=1, order_id=1, perm_id=2126726143, contract=ESU5, action="BUY",
                     total_quantity=1, order_type="LMT", lmt_price=5800.0, account="DU1236109",
                     status="Cancelled", completed_at=1751956486.0,
                     completed_status="Cancelled by Trader")
    ours = codec.completed_order(order, 176)
    # TWS echoes the live order's trigger price in trailStopPrice; the time is in our zone
    allowed = {81: "trailStopPrice", 94: "completedTime"}
    assert len(ours) == 101
    assert diff(ours, real_173, allowed) == []
    real_200 = capture_lines(GO, "101|265598|AAPL|STK||0|?||SMART|USD|AAPL|NMS|SELL")[0]
    assert len(codec.completed_order(order, 178)) == 100 == len(real_200) - 3  # sv200 adds 3


# ---------------------------------------------------------------- fills, positions, P&L


def _execution(**kw: Any) -> SimExecution:
    base = dict(exec_id="0000e0d5.67fe667b.01.01", time=1744745911.0, client_id=100, order_id=5,
                perm_id=600745656, contract=AAPL, side="BOT", shares=100, price=201.94,
                cum_qty=100, avg_price=201.94, order_ref="", account="DU1234567",
                exchange="IEX", commission=1.0, realized_pnl=None, liquidity=2)
    base.update(kw)
    return SimExecution(**base)


def test_exec_details_and_commission_report_match():
    [real] = capture_lines(RUST, "11|-1|5|")
    ours = codec.exec_details(-1, _execution(), 176)
    assert diff(ours, real, {15: "time (we add the zone)"}) == []
    assert len(codec.exec_details(-1, _execution(), 178)) == 32  # + pendingPriceRevision
    [real_cr] = capture_lines(RUST, "59|1|00025b46")
    ours_cr = codec.commission_report(_execution(exec_id="00025b46.63f8f39c.01.01"))
    assert ours_cr == real_cr[:8]  # that fixture carries one spurious trailing field


def test_position_portfolio_and_pnl_frames_match():
    [real] = capture_lines(RUST, "61|3|DU1234567|76792991|")
    tsla = SimContract(con_id=76792991, symbol="TSLA", sec_type="STK", exchange="SMART",
                       primary_exchange="NASDAQ", local_symbol="TSLA", trading_class="NMS")
    assert codec.position("DU1234567", SimPosition(tsla, 500, 196.77)) == real
    real_es = (REF / "captures" / "rust-ibapi__tws_interactions_yaml.txt").read_text()
    [es_line] = [x for x in real_es.splitlines() if x.startswith("61|3|ACCOUNT_ID|637533641|")]
    assert codec.position("ACCOUNT_ID", SimPosition(ESU5, 1, 315114.75)) == es_line.split("|")
    [real_pf] = capture_lines(GO, "7|8|")
    pos = SimPosition(AAPL, -100, 291.2660812)
    ours = codec.portfolio_value(pos, 291.6234436, -29162.34, -35.74, -71.44, "DU9000001")
    assert ours == real_pf
    [real_pnl] = capture_lines(GO, "94|")
    assert codec.pnl(4, 11340.427636781911, 54385.58271885987, -103.92738339177643) == real_pnl
    assert codec.pnl_single(3, 100.0, None, None, None, None)[2] == "100"


def test_market_data_and_option_chain_layouts():
    assert len(codec.tick_price(1001, 68, 255.45, 200)) == len(capture_lines(GO, "1|6|")[0])
    assert codec.tick_price(1001, 68, 255.45, 200) == capture_lines(GO, "1|6|")[0]
    assert codec.tick_size(1001, 74, 312894) == capture_lines(GO, "2|6|")[0]
    assert codec.tick_snapshot_end(1001) == capture_lines(GO, "57|")[0]
    [real] = capture_lines(GO, "75|3|")
    n = int(real[6])
    strikes = [float(s) for s in real[8 + n:]]
    ours = codec.sec_def_opt_params(3, "CBOE", 265598, "AAPL", 100.0, real[7:7 + n], strikes)
    assert ours == real
    assert codec.sec_def_opt_params_end(3) == capture_lines(GO, "76|3")[0]


def test_contract_details_layout_matches_the_173_captures():
    [stk] = [f for f in capture_lines(RUST, "10|9000|AAPL|STK")]
    [fut] = [f for f in capture_lines(RUST, "10|9000|ES|FUT")]
    today = __import__("datetime").datetime(2025, 3, 24)
    ours = codec.contract_details(9000, AAPL, 176, today=today,
                                  extras=codec.ContractExtras(
                                      "Technology", "Computers", "Computers",
                                      sec_ids=(("ISIN", "US0378331005"),)))
    assert len(ours) == len(stk) == 42
    same = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18, 19, 20, 21, 22, 23, 24, 25, 28,
            29, 38]
    assert [ours[i] for i in same] == [stk[i] for i in same]
    esm5 = SimContract(con_id=620731015, symbol="ES", sec_type="FUT", exchange="CME",
                       primary_exchange="CME", local_symbol="ESM5", trading_class="ES",
                       multiplier=50.0, min_tick=0.25, expiry="20250620", contract_month="202506",
                       long_name="E-mini S&P 500", under_con_id=11004968)
    ours = codec.contract_details(9000, esm5, 176, today=today,
                                  extras=codec.ContractExtras(
                                      under_symbol="ES", under_sec_type="IND",
                                      time_zone="US/Central"))
    assert len(ours) == len(fut) == 40
    assert diff(ours, fut, {15: "orderTypes", 26: "tradingHours", 27: "liquidHours"}) == []


# ---------------------------------------------------------------- the installed decoder


class _Wrapper:
    """Stands in for the library's Wrapper: records every call the decoder makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.ib = type("IBStub", (), {"TimezoneTWS": None})()
        from datetime import timezone
        self.defaultTimezone = timezone.utc

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def _decode(fields: list[str], version: int) -> tuple[str, tuple[Any, ...]]:
    wrapper = _Wrapper()
    decoder = ib.decoder.Decoder(wrapper, version)
    decoder.handlers[int(fields[0])](list(fields))  # raises if the layout is off
    assert len(wrapper.calls) == 1, wrapper.calls
    return wrapper.calls[0]


@pytest.mark.parametrize("version", sorted({157, 163, 164, 166, 170, 176, MAX}))
def test_every_frame_is_accepted_by_the_installed_decoder(version):
    universe = Universe()
    opt = universe.option_chain("AAPL")[0]
    order = SimOrder(client_id=3, order_id=9, perm_id=77, contract=opt, action="SELL",
                     total_quantity=2, order_type="STP LMT", lmt_price=1.5, aux_price=1.6,
                     tif="GTC", order_ref="ref-9", parent_id=8, oca_group="g", account="DU1",
                     status="Submitted", filled=1, avg_fill_price=1.55, completed_at=1.7e9,
                     completed_status="Cancelled by Trader")
    name, (oid, contract, o, state) = _decode(codec.open_order(order, version), version)
    assert name == "openOrder" and oid == 9 and o.orderRef == "ref-9" and o.parentId == 8
    assert contract.conId == opt.con_id and contract.right == opt.right and o.permId == 77
    assert (o.lmtPrice, o.auxPrice, o.totalQuantity, o.tif) == (1.5, 1.6, 2, "GTC")
    assert state.status == "Submitted" and not o.whatIf
    w = WhatIfResult(1, 2, 3, 4, 5, 6, 7, 8, 9, 1.25)
    name, (_, _, o, state) = _decode(codec.open_order(order, version, what_if=w), version)
    assert o.whatIf and float(state.initMarginChange) == 4 and state.commission == 1.25
    name, (contract, o, state) = _decode(codec.completed_order(order, version, 76), version)
    assert name == "completedOrder" and o.orderRef == "ref-9" and o.permId == 77
    assert state.status == "Submitted" and state.completedStatus == "Cancelled by Trader"
    assert o.filledQuantity == 1 and o.parentPermId == 76
    name, (req_id, contract, ex) = _decode(
        codec.exec_details(-1, _execution(contract=opt, order_ref="ref-9"), version), version)
    assert name == "execDetails" and ex.orderRef == "ref-9" and ex.shares == 100
    name, (req_id, cd) = _decode(codec.contract_details(4, opt, version, today=__import__(
        "datetime").datetime(2026, 11, 20)), version)
    assert cd.contract.conId == opt.con_id and cd.contract.multiplier == "100"
    es = universe.front_future("ES")
    name, (req_id, cd) = _decode(codec.contract_details(4, es, version, today=__import__(
        "datetime").datetime(2026, 11, 20)), version)
    assert cd.contract.lastTradeDateOrContractMonth == es.expiry
    assert cd.contractMonth == es.contract_month
    name, args = _decode(codec.error(5, 201, "Order rejected", version), version)
    assert name == "error" and args[:2] == (5, 201)


# ---------------------------------------------------------------- the whole startup sequence


async def test_startup_sequence_over_a_raw_socket_matches_the_capture():
    """Speak the handshake and the client's startup requests byte by byte; compare the replies'
    message ids and field counts with what TWS 176 answered to the same requests."""
    handle = await start_paper_tws()
    try:
        reader, writer = await asyncio.open_connection(handle.host, handle.port)
        writer.write(API_PREFIX + pack_raw("v157..176"))
        writer.write(pack(["71", "2", "0", ""]))
        for req in (["61", "1"], ["5", "1"], ["99", "0"], ["6", "2", "1", "DU1234567"],
                    ["76", "1", "217", "DU1234567", "", "0"],
                    ["7", "3", "218", "0", "", "", "", "", "", ""]):
            writer.write(pack(req))
        await writer.drain()
        decoder = FrameDecoder()
        frames: list[list[str]] = []
        while not (frames and frames[-1][:1] == ["55"]):
            data = await asyncio.wait_for(reader.read(65536), 3)
            assert data, "server closed the connection"
            frames += [split_fields(p) for p in decoder.feed(data)]
        writer.close()
    finally:
        await stop_paper_tws(handle)
    expected: list[list[str]] = []
    for key in ("API_", "71_2", "61_1", "5_1", "99_0", "6_2", "76_1", "7_3"):
        expected += raw_frames(key)
    shape = lambda fs: [(f[0], len(f)) for f in fs]  # noqa: E731
    ours, theirs = shape(frames), shape(expected)
    assert ours[0] == ("176", 2)
    # the account-updates-multi block: TWS sends 156 rows in another order; ours mirrors 6_2
    multi_ours = [s for s in ours if s[0] == "73"]
    multi_theirs = [s for s in theirs if s[0] == "73"]
    assert set(multi_ours) == set(multi_theirs) == {("73", 8)} and len(multi_ours) == 153
    assert [s for s in ours if s[0] != "73"] == [s for s in theirs if s[0] != "73"]
