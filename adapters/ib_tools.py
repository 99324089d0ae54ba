"""Operator tools that talk to IB directly: JSON dumps and an order smoke test, safe by default.

  python run.py dump [all|accounts|positions|orders|executions]   read-only JSON on stdout
  python run.py smoke [--symbol AAPL] [--qty 1]
      qualifies the contract and runs an IB what-if (no order). It TRANSMITS a real order only
      with ALLOW_ORDERS=1 and IBKR_PAPER=1, never on a live port (4001/7496), and only to a
      paper account (id starting with "D"): a limit order far from the market, then cancels it.

Connection: IB_HOST (default 127.0.0.1), IB_PORT (default 4002), IB_CLIENT_ID for tools
(TOOLS_CLIENT_ID, default 90, so it never collides with the daemon's id).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import sys
from datetime import date, datetime
from typing import Any

from adapters.ib import LIVE_PORTS, ib_number, ibl


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return {k: _jsonable(v) for k, v in obj._asdict().items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, float):
        return None if (math.isnan(obj) or math.isinf(obj) or obj >= 1e308) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def _endpoint() -> tuple[str, int, int]:
    return (os.environ.get("IB_HOST", "127.0.0.1"), int(os.environ.get("IB_PORT", "4002")),
            int(os.environ.get("TOOLS_CLIENT_ID", "90")))


async def dump(what: str, timeout: float) -> dict[str, Any]:
    host, port, client_id = _endpoint()
    ib = ibl.IB()
    await ib.connectAsync(host, port, clientId=client_id, timeout=timeout, readonly=True)
    try:
        out: dict[str, Any] = {"host": host, "port": port, "accounts": ib.managedAccounts()}
        if what in ("all", "accounts"):
            out["account_values"] = [
                {"account": v.account, "tag": v.tag, "value": v.value, "currency": v.currency}
                for v in ib.accountValues()]
        if what in ("all", "positions"):
            out["positions"] = [
                {"account": p.account, "contract": _jsonable(p.contract), "position": p.position,
                 "avg_cost": p.avgCost} for p in ib.positions()]
            out["portfolio"] = [_jsonable(i) for i in ib.portfolio()]
        if what in ("all", "orders"):
            open_trades = await asyncio.wait_for(ib.reqAllOpenOrdersAsync(), timeout)
            completed = await asyncio.wait_for(ib.reqCompletedOrdersAsync(False), timeout)
            out["open_orders"] = [_trade(t) for t in open_trades]
            out["completed_orders"] = [_trade(t) for t in completed]
        if what in ("all", "executions"):
            fills = await asyncio.wait_for(ib.reqExecutionsAsync(), timeout)
            out["executions"] = [
                {"exec_id": f.execution.execId, "time": _jsonable(f.execution.time),
                 "symbol": f.contract.symbol, "side": f.execution.side, "shares": f.execution.shares,
                 "price": f.execution.price, "order_id": f.execution.orderId,
                 "order_ref": f.execution.orderRef, "perm_id": f.execution.permId,
                 "commission": ib_number(f.commissionReport.commission),
                 "realized_pnl": ib_number(f.commissionReport.realizedPNL)} for f in fills]
        return out
    finally:
        ib.disconnect()


def _trade(t: Any) -> dict[str, Any]:
    o, s = t.order, t.orderStatus
    return {"order_id": o.orderId, "perm_id": o.permId, "client_id": o.clientId, "parent_id": o.parentId,
            "order_ref": o.orderRef, "symbol": t.contract.symbol, "sec_type": t.contract.secType,
            "action": o.action, "quantity": o.totalQuantity, "order_type": o.orderType,
            "limit_price": ib_number(o.lmtPrice), "stop_price": ib_number(o.auxPrice), "tif": o.tif,
            "status": s.status, "filled": s.filled, "remaining": s.remaining,
            "avg_fill_price": ib_number(s.avgFillPrice)}


class SmokeRefused(Exception):
    pass


def transmit_allowed(port: int, account: str, env: dict[str, str]) -> tuple[bool, str]:
    """The smoke tool's safety rail, in one place (tested on its own)."""
    if env.get("ALLOW_ORDERS") != "1":
        return False, "ALLOW_ORDERS is not 1: what-if only"
    if env.get("IBKR_PAPER") != "1":
        return False, "IBKR_PAPER is not 1: what-if only"
    if port in LIVE_PORTS:
        return False, f"port {port} is a live trading port: refusing to transmit"
    if not account.upper().startswith("D"):
        return False, f"account {account!r} is not a paper account (paper ids start with 'D')"
    return True, "transmitting to a paper account"


async def smoke(symbol: str, qty: int, timeout: float) -> dict[str, Any]:
    host, port, client_id = _endpoint()
    ib = ibl.IB()
    await ib.connectAsync(host, port, clientId=client_id, timeout=timeout)
    report: dict[str, Any] = {"host": host, "port": port, "symbol": symbol}
    try:
        account = (ib.managedAccounts() or [""])[0]
        report["account"] = account
        [contract] = await asyncio.wait_for(ib.qualifyContractsAsync(ibl.Stock(symbol, "SMART", "USD")), timeout)
        report["con_id"] = contract.conId
        [ticker] = await asyncio.wait_for(ib.reqTickersAsync(contract), timeout)
        ref = next((x for x in (ticker.last, ticker.close, ticker.bid, ticker.marketPrice())
                    if ib_number(x)), None)
        if ref is None:
            raise SmokeRefused(f"no price for {symbol}")
        far = round(ref * 0.5, 2)  # a BUY limit at half the price: cannot fill
        report["reference_price"], report["limit_price"] = ref, far
        order = ibl.LimitOrder("BUY", qty, far, orderRef="bracketgate-smoke", tif="DAY")
        state = await asyncio.wait_for(ib.whatIfOrderAsync(contract, order), timeout)
        report["what_if"] = {"init_margin_change": ib_number(state.initMarginChange),
                             "maint_margin_change": ib_number(state.maintMarginChange),
                             "commission": ib_number(state.commission)}
        ok, why = transmit_allowed(port, account, dict(os.environ))
        report["transmit"], report["transmit_reason"] = ok, why
        if not ok:
            return report
        trade = ib.placeOrder(contract, order)
        await _wait_status(trade, {"Submitted", "PreSubmitted"}, timeout)
        report["placed"] = {"order_id": trade.order.orderId, "status": trade.orderStatus.status}
        ib.cancelOrder(trade.order)
        await _wait_status(trade, {"Cancelled", "ApiCancelled"}, timeout)
        report["cancelled"] = {"status": trade.orderStatus.status}
        return report
    finally:
        ib.disconnect()


async def _wait_status(trade: Any, wanted: set[str], timeout: float) -> None:
    done = asyncio.Event()

    def check(*_: Any) -> None:
        if trade.orderStatus.status in wanted or trade.isDone():
            done.set()

    trade.statusEvent += check
    try:
        check()
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        trade.statusEvent -= check


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("what", nargs="?", default="all", choices=["all", "accounts", "positions", "orders", "executions"])
    d.add_argument("--timeout", type=float, default=10.0)
    s = sub.add_parser("smoke")
    s.add_argument("--symbol", default="AAPL")
    s.add_argument("--qty", type=int, default=1)
    s.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    try:
        out = asyncio.run(dump(a.what, a.timeout) if a.cmd == "dump" else smoke(a.symbol, a.qty, a.timeout))
    except (ConnectionRefusedError, OSError, TimeoutError, ConnectionError) as e:
        host, port, _ = _endpoint()
        print(json.dumps({"error": f"cannot reach IB at {host}:{port}: {e!r}"}), file=sys.stderr)
        return 3
    except SmokeRefused as e:
        print(json.dumps({"error": str(e)}), file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0
