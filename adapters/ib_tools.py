"""Operator tools that talk to IB directly: JSON dumps and an order smoke test, safe by default.

  run.py dump accounts | positions | orders | account [--all] | executions [--since ISO] | completed
  run.py smoke --asset STK|FUT|OPT --symbol SYM --order LMT|MKT [--limit P] [--qty N] [--whatif]
               [--resolve-front-month] [--expiry YYYYMM[DD]] [--strike K --right C|P] [--auto-cancel]

The smoke TRANSMITS an order only with no --whatif AND ALLOW_ORDERS=1 AND IBKR_PAPER=1 (both in
this command's environment), never on a live port (4001/7496), only to a paper account (id
starting with "D"); otherwise it is forced to a what-if and says so. Shapes: docs/TOOLS.md.

Settings as every command (config/settings.py): .env, the environment, in default mode
DATA_DIR/endpoints.json; IBKR_HOST/IBKR_PORT are aliases of IB_HOST/IB_PORT. Client id: --client-id,
else TOOLS_CLIENT_ID, else IB_CLIENT_ID/IBKR_CLIENT_ID from the environment, else 9001.
Output: JSON on stdout; errors one JSON line on stderr. Exit codes: 0 done, 1 refused by IB or
the tool (unknown contract, order rejected, cancel not confirmed), 2 bad usage or configuration,
3 IB unreachable / client id in use / no answer in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from datetime import date, datetime, timezone
from typing import Any

from bracketgate.adapters.ib import LIVE_PORTS, ib_number, ibl
from bracketgate.bus.errors import ConfigError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_IB = 0, 1, 2, 3
DUMP_KINDS = ("accounts", "positions", "orders", "account", "executions", "completed")
# `dump account` without --all: the values people look at first
ACCOUNT_SUMMARY_TAGS = (
    "NetLiquidation", "TotalCashValue", "BuyingPower", "AvailableFunds", "ExcessLiquidity",
    "EquityWithLoanValue", "GrossPositionValue", "InitMarginReq", "MaintMarginReq",
    "UnrealizedPnL", "RealizedPnL", "AccountType")
MARGIN_FIELDS = (
    "initMarginBefore", "initMarginChange", "initMarginAfter",
    "maintMarginBefore", "maintMarginChange", "maintMarginAfter",
    "equityWithLoanBefore", "equityWithLoanChange", "equityWithLoanAfter",
    "commission", "minCommission", "maxCommission")
SMOKE_REF = "bracketgate-smoke"


class ToolError(Exception):
    """One line for the operator, a stable code, and the exit status."""

    def __init__(self, message: str, code: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.message, self.code, self.exit_code = message, code, exit_code


class _Parser(argparse.ArgumentParser):
    """argparse that raises (-> one JSON error line, exit 2) instead of printing usage text."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ToolError(f"{self.prog}: {message}", "USAGE", EXIT_USAGE)


# ---------------------------------------------------------------------------- connection


async def _connect(conn: dict[str, Any], timeout: float, *, readonly: bool) -> tuple[Any, list]:
    """Connect as `conn` says; a refused client id (326) fails at once as 'client id N in use'."""
    host, port, cid = conn["host"], conn["port"], conn["client_id"]
    ib = ibl.IB()
    errors: list[tuple[int, str]] = []
    refused = asyncio.Event()

    def on_error(_req_id: int, code: int, message: str, *_rest: Any) -> None:
        errors.append((code, message))
        if code == 326:
            refused.set()

    ib.errorEvent += on_error
    connecting = asyncio.ensure_future(
        ib.connectAsync(host, port, clientId=cid, timeout=timeout, readonly=readonly))
    waiting = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait([connecting, waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    in_use = ToolError(
        f"client id {cid} in use at {host}:{port}: IB refused it (another client holds it; "
        "use --client-id or TOOLS_CLIENT_ID with another id)", "CLIENT_ID_IN_USE", EXIT_IB)
    if not connecting.done():
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        ib.disconnect()
        raise in_use
    try:
        connecting.result()
    except ConnectionRefusedError:
        ib.disconnect()
        raise ToolError(f"cannot reach IB at {host}:{port}: nothing is listening (is TWS / IB "
                        "Gateway running with the API enabled on this port?)", "IB_UNREACHABLE",
                        EXIT_IB) from None
    except (TimeoutError, asyncio.TimeoutError, ConnectionError, OSError) as e:
        ib.disconnect()
        if any(code == 326 for code, _ in errors):
            raise in_use from None
        why = f"timed out after {timeout:g}s" if isinstance(e, (TimeoutError, asyncio.TimeoutError)) \
            else f"{type(e).__name__}: {e}"
        raise ToolError(f"cannot reach IB at {host}:{port}: {why}", "IB_UNREACHABLE", EXIT_IB) from None
    return ib, errors


async def _bounded(aw: Any, timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise ToolError(f"IB did not answer {what} within {timeout:g}s", "IB_TIMEOUT", EXIT_IB) from None


async def _until(ib: Any, done: Any, timeout: float) -> bool:
    """Wait (on IB's updateEvent, no polling) until `done()` or the timeout; True if done."""
    if done():
        return True
    ready = asyncio.Event()

    def check(*_: Any) -> None:
        if done():
            ready.set()

    ib.updateEvent += check
    try:
        await asyncio.wait_for(ready.wait(), timeout)
        return True
    except (TimeoutError, asyncio.TimeoutError):
        return done()
    finally:
        ib.updateEvent -= check


# ---------------------------------------------------------------------------- dump


def _num(value: Any) -> float | None:
    return ib_number(value)


def _time(value: Any) -> str | None:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value) if value not in (None, "") else None


def _contract(c: Any) -> dict[str, Any]:
    return {"con_id": c.conId, "symbol": c.symbol, "sec_type": c.secType,
            "local_symbol": c.localSymbol or None, "exchange": c.exchange or None,
            "currency": c.currency or None, "expiry": c.lastTradeDateOrContractMonth or None,
            "strike": _num(c.strike) or None, "right": (c.right or None) if c.right not in ("?", "0") else None,
            "multiplier": _num(c.multiplier) if c.multiplier else None}


def _order(t: Any, *, completed: bool = False) -> dict[str, Any]:
    o, s = t.order, t.orderStatus
    filled, remaining = s.filled, s.remaining
    if completed:
        # a completed order's fills are in order.filledQuantity: the client libraries build its
        # orderStatus from the status text alone (filled 0)
        fq = _num(getattr(o, "filledQuantity", None))
        filled = fq if fq is not None else filled
        remaining = max(0.0, float(o.totalQuantity) - float(filled or 0))
    return {"order_id": o.orderId, "perm_id": o.permId, "client_id": o.clientId,
            "parent_id": o.parentId, "order_ref": o.orderRef or None, "account": o.account or None,
            "contract": _contract(t.contract), "action": o.action, "quantity": o.totalQuantity,
            "order_type": o.orderType, "limit_price": _num(o.lmtPrice), "stop_price": _num(o.auxPrice),
            "tif": o.tif, "status": s.status, "filled": filled, "remaining": remaining,
            "avg_fill_price": (_num(s.avgFillPrice) or None) if not completed else None}


def _parse_since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        since = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ToolError(f"--since {text!r} is not an ISO date/time (2026-12-01 or 2026-12-01T14:30:00Z)",
                        "USAGE", EXIT_USAGE) from None
    return since if since.tzinfo else since.replace(tzinfo=timezone.utc)


async def dump(kind: str, args: argparse.Namespace, conn: dict[str, Any]) -> dict[str, Any]:
    since = _parse_since(getattr(args, "since", None))
    ib, _errors = await _connect(conn, args.timeout, readonly=True)
    try:
        out: dict[str, Any] = {"kind": kind, "connection": _public(conn),
                               "accounts": list(ib.managedAccounts())}
        if kind == "accounts":
            out["accounts"] = [{"account": a, "paper": a.upper().startswith("D")}
                               for a in ib.managedAccounts()]
        elif kind == "positions":
            out["positions"] = _positions(ib)
        elif kind == "account":
            values = [v for v in ib.accountValues()
                      if args.all or v.tag in ACCOUNT_SUMMARY_TAGS]
            out["all"] = bool(args.all)
            out["values"] = [{"account": v.account, "tag": v.tag, "value": v.value,
                              "number": _num(v.value), "currency": v.currency or None}
                             for v in sorted(values, key=lambda v: (v.account, v.tag, v.currency))]
        elif kind == "orders":
            trades = await _bounded(ib.reqAllOpenOrdersAsync(), args.timeout, "the open orders")
            out["orders"] = [_order(t) for t in trades]
        elif kind == "completed":
            trades = await _bounded(ib.reqCompletedOrdersAsync(False), args.timeout, "the completed orders")
            out["orders"] = [_order(t, completed=True) for t in trades]
        elif kind == "executions":
            out["since"] = since.isoformat() if since else None
            out["executions"], out["commissions_complete"] = await _executions(ib, since, args)
        return out
    finally:
        ib.disconnect()


def _positions(ib: Any) -> list[dict[str, Any]]:
    portfolio = {(i.account, i.contract.conId): i for i in ib.portfolio()}
    rows = []
    for p in ib.positions():
        item = portfolio.get((p.account, p.contract.conId))
        contract = item.contract if item is not None else p.contract
        rows.append({"account": p.account, "contract": _contract(contract), "position": p.position,
                     "avg_cost": _num(p.avgCost),
                     "market_price": _num(item.marketPrice) if item else None,
                     "market_value": _num(item.marketValue) if item else None,
                     "unrealized_pnl": _num(item.unrealizedPNL) if item else None,
                     "realized_pnl": _num(item.realizedPNL) if item else None})
    return rows


async def _executions(ib: Any, since: datetime | None, args: argparse.Namespace
                      ) -> tuple[list[dict[str, Any]], bool]:
    """Every execution (since `since`), each with its commission report.

    The client libraries hand back fresh Fill objects for reqExecutions while IB's commission
    reports update the fills they already know (by execId), and IB may send the reports after
    the end of the executions: read each fill's report from the library's own table, waiting
    (bounded by --commission-wait) until every one has arrived."""
    fills = await _bounded(ib.reqExecutionsAsync(), args.timeout, "the executions")
    if since is not None:
        fills = [f for f in fills if _aware(f.execution.time) >= since]
    table = ib.wrapper.fills
    ids = [f.execution.execId for f in fills]

    def reported(exec_id: str) -> bool:
        known = table.get(exec_id)
        return known is not None and known.commissionReport.execId == exec_id

    complete = await _until(ib, lambda: all(reported(i) for i in ids), args.commission_wait)
    rows = []
    for f in fills:
        e = f.execution
        rep = table[e.execId].commissionReport if reported(e.execId) else None
        rows.append({
            "exec_id": e.execId, "time": _time(e.time), "account": e.acctNumber or None,
            "contract": _contract(f.contract), "side": e.side, "shares": e.shares, "price": e.price,
            "avg_price": e.avgPrice, "cum_qty": e.cumQty, "exchange": e.exchange or None,
            "order_id": e.orderId, "perm_id": e.permId, "client_id": e.clientId,
            "order_ref": e.orderRef or None,
            "commission": _num(rep.commission) if rep else None,
            "commission_currency": (rep.currency or None) if rep else None,
            "realized_pnl": _num(rep.realizedPNL) if rep else None,
            "commission_reported": rep is not None})
    rows.sort(key=lambda r: (r["time"] or "", r["exec_id"]))
    return rows, complete


def _aware(t: Any) -> datetime:
    if not isinstance(t, datetime):
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _public(conn: dict[str, Any]) -> dict[str, Any]:
    return {k: conn[k] for k in ("host", "port", "client_id", "client_id_from", "endpoint_from")}


# ---------------------------------------------------------------------------- smoke


def transmit_allowed(port: int, account: str, env: dict[str, str]) -> tuple[bool, str]:
    """The smoke tool's safety rail, in one place (tested on its own)."""
    if env.get("ALLOW_ORDERS") != "1":
        return False, "ALLOW_ORDERS is not 1: forced to a what-if"
    if env.get("IBKR_PAPER") != "1":
        return False, "IBKR_PAPER is not 1: forced to a what-if"
    if port in LIVE_PORTS:
        return False, f"port {port} is a live trading port: never transmits there; forced to a what-if"
    if not account.upper().startswith("D"):
        return False, (f"account {account!r} is not a paper account (IB paper ids start with 'D'): "
                       "forced to a what-if")
    return True, "transmitting to a paper account (ALLOW_ORDERS=1, IBKR_PAPER=1, paper port and account)"


def _check_smoke_args(a: argparse.Namespace) -> None:
    if a.qty <= 0:
        raise ToolError("--qty must be positive", "USAGE", EXIT_USAGE)
    if a.limit is not None and a.limit <= 0:
        raise ToolError("--limit must be positive", "USAGE", EXIT_USAGE)
    if a.order == "MKT" and a.limit is not None:
        raise ToolError("--limit is for --order LMT (a market order has no limit price)", "USAGE", EXIT_USAGE)
    if a.expiry is not None and not (a.expiry.isdigit() and len(a.expiry) in (6, 8)):
        raise ToolError(f"--expiry {a.expiry!r}: want YYYYMM or YYYYMMDD", "USAGE", EXIT_USAGE)
    if a.asset == "FUT" and a.expiry is None and not a.resolve_front_month:
        raise ToolError(f"{a.symbol} as a future needs --expiry YYYYMM[DD] or --resolve-front-month",
                        "USAGE", EXIT_USAGE)
    if a.asset == "OPT" and (a.expiry is None or a.strike is None or a.right is None):
        raise ToolError("an option needs --expiry YYYYMMDD, --strike and --right C|P", "USAGE", EXIT_USAGE)
    if a.asset != "OPT" and (a.strike is not None or a.right is not None):
        raise ToolError("--strike and --right are for --asset OPT", "USAGE", EXIT_USAGE)
    if a.asset != "FUT" and a.resolve_front_month:
        raise ToolError("--resolve-front-month is for --asset FUT", "USAGE", EXIT_USAGE)
    if a.asset == "STK" and a.expiry is not None:
        raise ToolError("--expiry is for --asset FUT or OPT", "USAGE", EXIT_USAGE)


def _query(a: argparse.Namespace) -> Any:
    if a.asset == "STK":
        return ibl.Stock(a.symbol, "SMART", "USD")
    if a.asset == "OPT":
        return ibl.Option(a.symbol, a.expiry, a.strike, a.right, "SMART", currency="USD")
    # futures: SMART is not a futures venue; an empty exchange lets IB match any.
    # --expiry wins over --resolve-front-month (an override of the front month)
    return ibl.Future(a.symbol, a.expiry or "", "", currency="USD")


def _describe(a: argparse.Namespace) -> str:
    parts = [a.asset, a.symbol]
    if a.expiry:
        parts.append(a.expiry)
    if a.asset == "OPT":
        parts += [f"{a.strike:g}", a.right]
    return " ".join(parts)


async def _resolve(ib: Any, a: argparse.Namespace, errors: list, timeout: float) -> Any:
    mark = len(errors)
    details = await _bounded(ib.reqContractDetailsAsync(_query(a)), timeout, "the contract details")
    if isinstance(details, list) and a.asset == "FUT" and a.expiry is None:
        today = datetime.now(timezone.utc).strftime("%Y%m%d")
        live = [d for d in details if (d.contract.lastTradeDateOrContractMonth or "") >= today]
        details = sorted(live, key=lambda d: d.contract.lastTradeDateOrContractMonth)[:1]
    if not details:
        said = "; ".join(f"IB {c}: {m}" for c, m in errors[mark:]) or "no contract details"
        raise ToolError(f"unknown contract {_describe(a)} ({said})", "UNKNOWN_CONTRACT", EXIT_REFUSED)
    if len(details) > 1:
        names = ", ".join(sorted(d.contract.localSymbol or str(d.contract.conId) for d in details)[:10])
        raise ToolError(f"{_describe(a)} is ambiguous ({len(details)} contracts: {names}); be more "
                        "specific (--expiry YYYYMMDD)", "AMBIGUOUS_CONTRACT", EXIT_REFUSED)
    return details[0]


async def _reference_price(ib: Any, contract: Any, timeout: float) -> float | None:
    try:
        tickers = await asyncio.wait_for(ib.reqTickersAsync(contract), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        return None
    for t in tickers or []:
        for x in (t.last, t.close, t.bid, t.ask, t.marketPrice()):
            v = _num(x)
            if v and v > 0:
                return v
    return None


def _tick_round(price: float, tick: float) -> float:
    return round(round(price / tick) * tick, 8)


def _make_order(a: argparse.Namespace, limit: float | None, account: str) -> Any:
    if a.order == "MKT":
        return ibl.MarketOrder("BUY", a.qty, orderRef=SMOKE_REF, tif="DAY", account=account)
    return ibl.LimitOrder("BUY", a.qty, limit, orderRef=SMOKE_REF, tif="DAY", account=account)


async def smoke(a: argparse.Namespace, conn: dict[str, Any], ib_account: str | None) -> tuple[dict[str, Any], int]:
    ib, errors = await _connect(conn, a.timeout, readonly=False)
    try:
        managed = list(ib.managedAccounts())
        if ib_account and ib_account not in managed:
            raise ToolError(f"IB_ACCOUNT={ib_account} is not among this login's accounts "
                            f"({', '.join(managed) or 'none'})", "ACCOUNT_GUARD", EXIT_REFUSED)
        account = ib_account or (managed[0] if managed else "")
        details = await _resolve(ib, a, errors, a.timeout)
        contract, tick = details.contract, (_num(details.minTick) or 0.01)
        report: dict[str, Any] = {
            "connection": _public(conn), "account": account,
            "contract": _contract(contract), "order": None}
        # with --limit the price is for the report only: do not wait out a login without data
        needed = a.order == "LMT" and a.limit is None
        ref = await _reference_price(ib, contract, a.timeout if needed else min(a.timeout, 3.0))
        report["referencePrice"] = ref
        limit, limit_from = a.limit, "--limit"
        if a.order == "LMT" and limit is None:
            if ref is None:
                raise ToolError(f"no market price for {_describe(a)}: give --limit", "NO_PRICE", EXIT_REFUSED)
            limit, limit_from = _tick_round(ref * 0.5, tick), "half the reference price, on the tick (cannot fill)"
        report["order"] = {"action": "BUY", "quantity": a.qty, "orderType": a.order, "limit": limit,
                           "limitFrom": limit_from if a.order == "LMT" else None, "tif": "DAY",
                           "orderRef": SMOKE_REF}

        if a.whatif:
            transmit, why = False, "--whatif given: what-if only"
        else:
            transmit, why = transmit_allowed(conn["port"], account, dict(os.environ))
        report["whatIf"] = not transmit
        report["forcedWhatIf"] = not transmit and not a.whatif
        report["reason"] = why

        mark = len(errors)
        state = await _bounded(ib.whatIfOrderAsync(contract, _make_order(a, limit, account)),
                               a.timeout, "the what-if")
        if not state or isinstance(state, list):   # ib_insync answers [] when IB refused it
            said = "; ".join(f"IB {c}: {m}" for c, m in errors[mark:]) or "no order state"
            raise ToolError(f"the what-if for {_describe(a)} failed ({said})", "WHATIF_FAILED", EXIT_REFUSED)
        for name in MARGIN_FIELDS:
            report[name] = _num(getattr(state, name, None))
        report["commissionCurrency"] = getattr(state, "commissionCurrency", "") or None
        report["warningText"] = getattr(state, "warningText", "") or None
        report["transmitted"], report["orderId"], report["status"] = False, None, None
        report["cancel"] = None
        if not transmit:
            return report, EXIT_OK

        trade = ib.placeOrder(contract, _make_order(a, limit, account))
        report["transmitted"], report["orderId"] = True, trade.order.orderId
        await _until(ib, lambda: trade.orderStatus.status in ("Submitted", "PreSubmitted", "Filled")
                     or trade.isDone(), a.timeout)
        report["permId"] = trade.order.permId or None
        report["status"] = trade.orderStatus.status
        report["filled"] = trade.orderStatus.filled
        rc = EXIT_OK
        if trade.orderStatus.status in ("Cancelled", "ApiCancelled", "Inactive"):
            report["ibMessages"] = [m.message for m in trade.log if m.message]
            rc = EXIT_REFUSED
        if a.auto_cancel:
            report["cancel"], ok = await _cancel(ib, trade, a.timeout)
            rc = rc if ok else EXIT_REFUSED
        else:
            report["note"] = ("the order is working at IB (no --auto-cancel): cancel it in TWS, "
                              "or see it with `run.py dump orders`") if not trade.isDone() else None
        return report, rc
    finally:
        ib.disconnect()


async def _cancel(ib: Any, trade: Any, timeout: float) -> tuple[dict[str, Any], bool]:
    if trade.isDone():
        return {"requested": False, "status": trade.orderStatus.status, "confirmed": False,
                "seconds": 0.0, "note": f"nothing to cancel: the order is {trade.orderStatus.status}"}, \
            trade.orderStatus.status in ("Cancelled", "ApiCancelled")
    t0 = time.monotonic()
    ib.cancelOrder(trade.order)
    await _until(ib, trade.isDone, timeout)
    status = trade.orderStatus.status
    confirmed = status in ("Cancelled", "ApiCancelled")
    out = {"requested": True, "status": status, "confirmed": confirmed,
           "seconds": round(time.monotonic() - t0, 3)}
    if not confirmed:
        out["note"] = (f"the order filled before the cancel ({status})" if status == "Filled"
                       else f"IB did not confirm the cancel within {timeout:g}s (status {status})")
    return out, confirmed


# ---------------------------------------------------------------------------- CLI


def _parser() -> _Parser:
    ap = _Parser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    common.add_argument("--timeout", type=float, default=10.0, help="seconds for each IB request (10)")
    common.add_argument("--client-id", type=int, default=None,
                        help="IB client id (default TOOLS_CLIENT_ID, else 9001)")
    common.add_argument("--env-file", default=".env", help="dotenv file to read (default .env)")
    d = sub.add_parser("dump", parents=[common], prog="run.py dump",
                       help="read-only JSON snapshot from IB (shapes: docs/TOOLS.md)")
    d.add_argument("kind", choices=DUMP_KINDS)
    d.add_argument("--all", action="store_true", help="account: every account value (else a summary)")
    d.add_argument("--since", default=None, help="executions: from this ISO date/time (UTC if no zone)")
    d.add_argument("--commission-wait", type=float, default=3.0,
                   help="executions: seconds to wait for IB's commission reports (3)")
    s = sub.add_parser("smoke", parents=[common], prog="run.py smoke",
                       help="order smoke test: what-if unless --whatif is absent AND ALLOW_ORDERS=1 AND IBKR_PAPER=1")
    s.add_argument("--asset", choices=("STK", "FUT", "OPT"), default="STK", type=str.upper)
    s.add_argument("--symbol", default="AAPL", type=str.upper)
    s.add_argument("--order", choices=("LMT", "MKT"), default="LMT", type=str.upper)
    s.add_argument("--limit", type=float, default=None,
                   help="limit price (LMT; default half the market price, so it cannot fill)")
    s.add_argument("--qty", type=float, default=1)
    s.add_argument("--whatif", action="store_true", help="what-if only, whatever the environment says")
    s.add_argument("--resolve-front-month", action="store_true", help="FUT: the nearest live expiry")
    s.add_argument("--expiry", default=None, help="FUT/OPT: YYYYMM or YYYYMMDD (wins over --resolve-front-month)")
    s.add_argument("--strike", type=float, default=None, help="OPT: strike")
    s.add_argument("--right", choices=("C", "P"), default=None, type=str.upper, help="OPT: C or P")
    s.add_argument("--auto-cancel", action="store_true", help="after a transmit, cancel and confirm it")
    return ap


def _fail(message: str, code: str, exit_code: int) -> int:
    print(json.dumps({"error": message, "code": code}), file=sys.stderr)
    return exit_code


def main(argv: list[str]) -> int:
    logging.getLogger("ib_async").setLevel(logging.CRITICAL)    # their log lines are not JSON
    logging.getLogger("ib_insync").setLevel(logging.CRITICAL)
    try:
        a = _parser().parse_args(argv)
        if a.cmd == "smoke":
            _check_smoke_args(a)
    except ToolError as e:
        return _fail(e.message, e.code, e.exit_code)
    from bracketgate.config.settings import load_settings, tool_connection

    try:
        settings = load_settings(_env_file=a.env_file)
        conn = tool_connection(settings, a.env_file, a.client_id)
    except ConfigError as e:
        return _fail(f"invalid configuration: {e}", "CONFIG", EXIT_USAGE)
    print(json.dumps({"info": f"connecting to IB at {conn['host']}:{conn['port']} as client id "
                              f"{conn['client_id']} ({conn['client_id_from']})", **_public(conn)}),
          file=sys.stderr)
    try:
        if a.cmd == "dump":
            out, rc = asyncio.run(dump(a.kind, a, conn)), EXIT_OK
        else:
            out, rc = asyncio.run(smoke(a, conn, settings.ib_account))
    except ToolError as e:
        return _fail(e.message, e.code, e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", "INTERRUPTED", EXIT_REFUSED)
    except Exception as e:  # never a traceback for the operator: one line with the cause
        return _fail(f"{type(e).__name__}: {e}", "INTERNAL", EXIT_REFUSED)
    print(json.dumps(out, indent=2, default=str))
    return rc
