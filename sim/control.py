"""Paper TWS control port: loopback HTTP with JSON bodies, asyncio only, no extra dependencies.

Tests and operators use it to move prices, restart the gateway, inject connectivity codes,
cap fill sizes and read the full brokerage state. Routes (all bodies and answers are JSON):

    GET  /health                      {"ok", "up", "port", "clients": [...], "restarts", "downFor",
                                       "pacingErrors", "pacingDropped", "lostOrders", "answersLost", "answersDelayed"}
    GET  /state                       orders, positions, executions, account values, P&L, prices
    POST /price    {"symbol": "AAPL", "price": 181.0}  (or "conId" / "localSymbol" [+ "secType"])
    POST /restart  {"downtime": 2.0}  drop every client, refuse connects for `downtime` s
    POST /inject   {"code": 1100, "message": optional}   error (reqId -1) to every client
    POST /reset    {}                 fresh account and prices (clients stay connected)
    POST /fill_qty {"max_qty": 3}     cap each order's fill per price move (null = no cap)
    POST /step     {"n": 1}           move the seeded price paths n steps
    POST /pacing   {"limit": 50}      messages per second per client before error 100
    POST /ack_hold {"orderRef": "p1", "orderType": "STP", "mode": "lose" | "mute"}  test switch:
                   the next such order is lost (no order, no answer) or muted (placed, but its
                   status is never pushed; reqOpenOrders still lists it)
    POST /answer_hold {"request": "open_orders" | "completed_orders" | "cancel" |
                   "commission_reports", "mode": "lose" |
                   "delay", "seconds": 2.0, "count": 1, "orderRef": optional (cancel)}  test
                   switch: the next such answer (or cancel) is lost or late (sim/holds.py)
    POST /md_lines {"limit": 5}       concurrent market-data lines before error 101 (0 = no cap)

Errors answer {"ok": false, "error": "..."} with 400 (bad input), 404 (unknown path or
contract) or 405 (wrong method).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from bracketgate.core.logs import get_logger
from bracketgate.sim import md_lines
from bracketgate.sim.model import UNSET_DOUBLE, SimExecution, SimOrder, SimPosition
from bracketgate.sim.universe import UnknownContract

log = get_logger("sim.control")

MAX_BODY = 1 << 20
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


class BadRequest(ValueError):
    """The request body or arguments are wrong (answered with 400)."""


class ControlServer:
    """HTTP control port of one `PaperTWS` on `host:port` (`port=0` picks a free one)."""

    def __init__(self, tws: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.tws = tws
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._routes: dict[tuple[str, str], Callable[[dict[str, Any]], Awaitable[Any]]] = {
            ("GET", "/health"): self._health,
            ("GET", "/state"): self._state,
            ("POST", "/price"): self._price,
            ("POST", "/restart"): self._restart,
            ("POST", "/inject"): self._inject,
            ("POST", "/reset"): self._reset,
            ("POST", "/fill_qty"): self._fill_qty,
            ("POST", "/step"): self._step,
            ("POST", "/pacing"): self._pacing,
            ("POST", "/ack_hold"): self._ack_hold,
            ("POST", "/answer_hold"): self._answer_hold,
            ("POST", "/md_lines"): self._md_lines,
        }

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("control_port_started", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ---------------------------------------------------------------- HTTP

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._handle(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        payload = json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            writer.write(head + payload)
            await writer.drain()
        except ConnectionError:
            log.debug("control_client_gone")
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        parts = request_line.split()
        if len(parts) < 2:
            return 400, {"ok": False, "error": "bad request line"}
        method, path = parts[0].upper(), parts[1].split("?", 1)[0]
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        if length > MAX_BODY:
            return 400, {"ok": False, "error": "body too large"}
        raw = await reader.readexactly(length) if length else b""
        route = self._routes.get((method, path))
        if route is None:
            if any(p == path for (_, p) in self._routes):
                return 405, {"ok": False, "error": f"{method} not allowed on {path}"}
            return 404, {"ok": False, "error": f"no route {path}"}
        try:
            args = json.loads(raw) if raw.strip() else {}
            if not isinstance(args, dict):
                raise BadRequest("body must be a JSON object")
            result = await route(args)
        except UnknownContract as e:
            return 404, {"ok": False, "error": str(e)}
        except (BadRequest, ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            return 400, {"ok": False, "error": str(e)}
        except Exception as e:  # answer 500 and keep the log, never a silent hang-up
            log.exception("control_request_failed", method=method, path=path)
            return 500, {"ok": False, "error": repr(e)}
        log.info("control_request", method=method, path=path)
        return 200, {"ok": True, **result}

    # ---------------------------------------------------------------- routes

    async def _health(self, _args: dict[str, Any]) -> dict[str, Any]:
        tws = self.tws
        return {"up": tws.is_up, "port": tws.port, "clients": tws.sessions_view(),
                "restarts": tws.restarts, "downFor": round(tws.down_for(), 3),
                "pacingErrors": tws.pacing_errors, "pacingDropped": tws.pacing_dropped,
                "lostOrders": tws.lost_orders, "answersLost": tws.answer_holds.lost,
                "answersDelayed": tws.answer_holds.delayed}

    async def _state(self, _args: dict[str, Any]) -> dict[str, Any]:
        return state_view(self.tws)

    async def _price(self, args: dict[str, Any]) -> dict[str, Any]:
        price = _number(args, "price")
        contract = self.tws.resolve_for_control(
            symbol=str(args.get("symbol", "")), con_id=int(args.get("conId", 0) or 0),
            sec_type=str(args.get("secType", "")), local_symbol=str(args.get("localSymbol", "")))
        self.tws.engine.set_price(contract.con_id, price)
        return {"conId": contract.con_id, "localSymbol": contract.local_symbol,
                "price": self.tws.engine.price(contract.con_id)}

    async def _restart(self, args: dict[str, Any]) -> dict[str, Any]:
        downtime = _number(args, "downtime", 0.0)
        if downtime < 0:
            raise BadRequest("downtime must be >= 0")
        await self.tws.restart(downtime)
        return {"downtime": downtime}

    async def _inject(self, args: dict[str, Any]) -> dict[str, Any]:
        code = int(_number(args, "code"))
        message = args.get("message")
        n = self.tws.inject(code, str(message) if message is not None else None)
        return {"code": code, "clients": n}

    async def _reset(self, _args: dict[str, Any]) -> dict[str, Any]:
        self.tws.reset()
        return {}

    async def _fill_qty(self, args: dict[str, Any]) -> dict[str, Any]:
        raw = args.get("max_qty")
        max_qty = None if raw is None else float(raw)
        self.tws.engine.set_price_fill_qty(max_qty)
        return {"max_qty": max_qty}

    async def _step(self, args: dict[str, Any]) -> dict[str, Any]:
        n = int(_number(args, "n", 1))
        moves = sum(self.tws.step_prices() for _ in range(max(n, 0)))
        return {"moves": moves}

    async def _pacing(self, args: dict[str, Any]) -> dict[str, Any]:
        self.tws.pacing_limit = int(_number(args, "limit"))
        return {"limit": self.tws.pacing_limit}

    async def _md_lines(self, args: dict[str, Any]) -> dict[str, Any]:
        limit = int(_number(args, "limit"))
        if limit < 0:
            raise BadRequest("md_lines limit must be >= 0 (0 = no cap)")
        self.tws.max_market_data_lines = limit
        return md_lines.view(self.tws)

    async def _ack_hold(self, args: dict[str, Any]) -> dict[str, Any]:
        mode = str(args.get("mode", "lose"))
        ref, kind = str(args.get("orderRef", "")), str(args.get("orderType", ""))
        if mode not in ("lose", "mute") or not ref or not kind:
            raise BadRequest("ack_hold needs orderRef, orderType and mode lose|mute")
        self.tws.ack_holds[(ref, kind)] = mode
        return {"orderRef": ref, "orderType": kind, "mode": mode}

    async def _answer_hold(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            hold = self.tws.answer_holds.set(
                str(args.get("request", "")), str(args.get("mode", "lose")),
                seconds=_number(args, "seconds", 0.0), count=int(_number(args, "count", 1)),
                order_ref=str(args.get("orderRef") or ""))
        except ValueError as e:
            raise BadRequest(str(e)) from e
        return {"request": hold.kind, "mode": hold.mode, "seconds": hold.seconds,
                "count": hold.count, "orderRef": hold.order_ref}


def _number(args: dict[str, Any], key: str, default: float | None = None) -> float:
    value = args.get(key, default)
    if value is None:
        raise BadRequest(f"missing '{key}'")
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"'{key}' must be a number") from e


def _unset(v: float | None) -> float | None:
    return None if v is None or v >= UNSET_DOUBLE else v


def _order_view(o: SimOrder) -> dict[str, Any]:
    return {
        "clientId": o.client_id, "orderId": o.order_id, "permId": o.perm_id,
        "parentId": o.parent_id, "orderRef": o.order_ref, "status": o.status,
        "action": o.action, "totalQuantity": o.total_quantity, "orderType": o.order_type,
        "lmtPrice": _unset(o.lmt_price), "auxPrice": _unset(o.aux_price), "tif": o.tif,
        "ocaGroup": o.oca_group, "ocaType": o.oca_type, "transmit": o.transmit,
        "filled": o.filled, "remaining": o.remaining, "avgFillPrice": o.avg_fill_price,
        "lastFillPrice": o.last_fill_price, "whyHeld": o.why_held,
        "conId": o.contract.con_id, "symbol": o.contract.symbol, "secType": o.contract.sec_type,
        "localSymbol": o.contract.local_symbol, "account": o.account,
        "completedStatus": o.completed_status, "trailStopPrice": o.trail_stop_price,
        "trailingPercent": o.trailing_percent, "lmtPriceOffset": o.lmt_price_offset,
        "comboLegs": [{"conId": leg.con_id, "ratio": leg.ratio, "action": leg.action,
                       "exchange": leg.exchange} for leg in o.contract.combo_legs],
    }


def _position_view(p: SimPosition) -> dict[str, Any]:
    return {"conId": p.contract.con_id, "symbol": p.contract.symbol,
            "secType": p.contract.sec_type, "localSymbol": p.contract.local_symbol,
            "position": p.quantity, "avgCost": p.avg_cost, "realizedPnL": p.realized_pnl}


def _execution_view(e: SimExecution) -> dict[str, Any]:
    c = e.contract
    return {
        "execId": e.exec_id, "time": e.time, "clientId": e.client_id, "orderId": e.order_id,
        "permId": e.perm_id, "side": e.side, "shares": e.shares, "price": e.price,
        "cumQty": e.cum_qty, "avgPrice": e.avg_price, "orderRef": e.order_ref,
        "account": e.account, "exchange": e.exchange, "commission": e.commission,
        "realizedPnL": e.realized_pnl, "conId": c.con_id, "symbol": c.symbol,
        "secType": c.sec_type, "localSymbol": c.local_symbol,
    }


def state_view(tws: Any) -> dict[str, Any]:
    """Everything a test may want to assert on, as plain JSON."""
    eng = tws.engine
    daily, unrealized, realized = eng.pnl()
    values: dict[str, str] = {}
    for tag, value, ccy in eng.account_values():
        if ccy != "BASE":
            values[tag] = value
    return {
        "account": eng.account.account_id,
        "orders": [_order_view(o) for o in sorted(eng.orders.values(), key=lambda o: o.perm_id)],
        "positions": [_position_view(p) for p in eng.positions()],
        "executions": [_execution_view(e) for e in eng.executions],
        "accountValues": values,
        "pnl": {"daily": daily, "unrealized": unrealized, "realized": realized},
        "prices": {str(k): v for k, v in sorted(eng.prices.items())},
        "clients": tws.client_ids,
        "up": tws.is_up,
        "mdLines": md_lines.view(tws),
    }


REQUEST_TIMEOUT_S = 5.0   # a control request's answer, unless the caller asks for longer


async def request(host: str, port: int, method: str, path: str,
                  body: dict[str, Any] | None = None,
                  timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, Any]:
    """A tiny HTTP/1.1 client for the control port: returns (status, decoded JSON)."""

    async def _go() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            payload = json.dumps(body).encode() if body is not None else b""
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"Connection: close\r\n\r\n".encode() + payload)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, data = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(data) if data else None

    return await asyncio.wait_for(_go(), timeout)
