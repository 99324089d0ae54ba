"""The official IB client (`ibapi`: ibapi-stable 10.x, or ibapi 9.81) against the paper TWS.

Runs only in a virtualenv that has ibapi (scripts/setup.sh --ibapi makes .venv-ibapi and
.venv-ibapi981; scripts/test.sh runs this file there with `--confcutdir tests/official`, so the
repository's own fixtures, which need the project's dependencies, are not loaded). The paper TWS
is `python run.py sim` in a subprocess of the project's interpreter (BRACKETGATE_SIM_PYTHON, else
.venv/bin/python of the checkout); prices move through its control port (plain urllib).

Covered, with EClient/EWrapper as a user of the official client writes them: connect
(nextValidId), reqContractDetails, a stock bracket (entry filled, take-profit filled, stop
cancelled), a straddle BAG order filled (execDetails per leg and for the BAG, commission per leg,
positions per leg), and 9.81's default eTradeOnly/firmQuoteOnly refused with 10268.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ibapi = pytest.importorskip("ibapi")

from ibapi.client import EClient
from ibapi.contract import ComboLeg, Contract
from ibapi.order import Order
from ibapi.wrapper import EWrapper

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TIMEOUT = 10.0
OLD_CLIENT = hasattr(Order(), "eTradeOnly") and Order().eTradeOnly  # 9.81: True by default


def _sim_python() -> str:
    explicit = os.environ.get("BRACKETGATE_SIM_PYTHON")
    if explicit:
        return explicit
    return str(REPO / ".venv" / "bin" / "python")


@pytest.fixture
def paper_tws():
    """`python run.py sim` on free ports; yields (port, control_port); killed by its PID."""
    proc = subprocess.Popen(
        [_sim_python(), str(REPO / "run.py"), "sim", "--host", HOST, "--port", "0",
         "--control-port", "0", "--tick-interval", "0"],
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ready: dict = {}
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "paper_tws_ready":
            ready = event
            break
        if time.monotonic() > deadline:
            break
    if not ready:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("paper TWS did not start")
    drain = threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True)
    drain.start()
    try:
        yield int(ready["port"]), int(ready["control_port"])
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def control(control_port: int, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{HOST}:{control_port}{path}", data=data,
                                 method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class App(EWrapper, EClient):
    """Everything the callbacks report, under one condition the test waits on."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, self)
        self.cond = threading.Condition()
        self.next_id: int | None = None
        self.errors: list[tuple[int, int, str]] = []
        self.details: dict[int, list] = {}
        self.details_done: set[int] = set()
        self.status: dict[int, tuple] = {}
        self.open_orders: dict[int, tuple] = {}
        self.execs: list[tuple] = []
        self.commissions: dict[str, float] = {}
        self.positions: dict[int, float] = {}
        self.ticks: dict[tuple[int, int], float] = {}

    def _note(self, fn) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def wait(self, predicate, what: str, timeout: float = TIMEOUT):
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out waiting for {what}; errors {self.errors}")
            return predicate()

    # -- EWrapper
    def nextValidId(self, orderId):
        self._note(lambda: setattr(self, "next_id", orderId))

    def error(self, reqId, *args):  # 10.x: (errorTime, code, msg, json); 9.81: (code, msg)
        if len(args) >= 3 and isinstance(args[2], str):
            code, msg = args[1], args[2]
        else:
            code, msg = args[0], args[1]
        self._note(lambda: self.errors.append((reqId, int(code), msg)))

    def contractDetails(self, reqId, contractDetails):
        self._note(lambda: self.details.setdefault(reqId, []).append(contractDetails))

    def contractDetailsEnd(self, reqId):
        self._note(lambda: self.details_done.add(reqId))

    def orderStatus(self, orderId, status, filled, remaining, avgFillPrice, *rest):
        self._note(lambda: self.status.__setitem__(
            orderId, (status, float(filled), float(avgFillPrice))))

    def openOrder(self, orderId, contract, order, orderState):
        self._note(lambda: self.open_orders.__setitem__(
            orderId, (contract.secType, len(contract.comboLegs or []), orderState.status)))

    def execDetails(self, reqId, contract, execution):
        self._note(lambda: self.execs.append(
            (execution.orderId, contract.secType, contract.conId, execution.side,
             float(execution.shares), execution.price, execution.execId)))

    def commissionReport(self, report):  # 9.81 (and 10.x before the rename)
        self._note(lambda: self.commissions.__setitem__(report.execId, report.commission))

    def commissionAndFeesReport(self, report):  # 10.x
        self._note(lambda: self.commissions.__setitem__(report.execId,
                                                         report.commissionAndFees))

    def tickPrice(self, reqId, tickType, price, attrib):
        self._note(lambda: self.ticks.__setitem__((reqId, int(tickType)), price))

    def position(self, account, contract, position, avgCost):
        self._note(lambda: self.positions.__setitem__(contract.conId, float(position)))

    # -- helpers
    def take_id(self) -> int:
        assert self.next_id is not None
        oid = self.next_id
        self.next_id += 1
        return oid

    def contract_details(self, req_id: int, contract: Contract) -> list:
        self.reqContractDetails(req_id, contract)
        self.wait(lambda: req_id in self.details_done or any(e[0] == req_id
                                                              for e in self.errors),
                  f"contract details {req_id}")
        return self.details.get(req_id, [])


@pytest.fixture
def app(paper_tws):
    port, _ = paper_tws
    a = App()
    a.connect(HOST, port, clientId=7)
    thread = threading.Thread(target=a.run, daemon=True)
    thread.start()
    a.wait(lambda: a.next_id is not None, "nextValidId")
    try:
        yield a
    finally:
        a.disconnect()
        thread.join(5)


def _order(action: str, qty: int, order_type: str, price: float = 0.0, **kw) -> Order:
    o = Order()
    o.action, o.totalQuantity, o.orderType = action, qty, order_type
    if order_type == "LMT":
        o.lmtPrice = price
    elif order_type == "STP":
        o.auxPrice = price
    if OLD_CLIENT:  # 9.81's defaults, refused by TWS (see the 10268 test)
        o.eTradeOnly = o.firmQuoteOnly = False
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def _stock(symbol: str = "AAPL") -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "STK", "SMART", "USD"
    return c


def test_connect_and_contract_details(app):
    [cd] = app.contract_details(1, _stock())
    assert cd.contract.conId == 265598 and cd.longName == "APPLE INC"
    assert cd.minTick == 0.01 and cd.contract.primaryExchange == "NASDAQ"


def test_bracket_entry_take_profit_and_stop_cancelled(app, paper_tws):
    _, control_port = paper_tws
    aapl = app.contract_details(1, _stock())[0].contract
    aapl.exchange = "SMART"
    parent = app.take_id()
    entry = _order("BUY", 10, "LMT", 229.0, orderId=parent, transmit=False, orderRef="off-br")
    tp = _order("SELL", 10, "LMT", 235.0, parentId=parent, transmit=False, orderRef="off-br")
    sl = _order("SELL", 10, "STP", 225.0, parentId=parent, transmit=True, orderRef="off-br")
    ids = [parent, app.take_id(), app.take_id()]
    for oid, o in zip(ids, (entry, tp, sl)):
        app.placeOrder(oid, aapl, o)
    app.wait(lambda: app.status.get(ids[0], ("",))[0] == "Submitted", "entry working")
    control(control_port, "/price", {"symbol": "AAPL", "price": 229.0})
    app.wait(lambda: app.status.get(ids[0], ("",))[0] == "Filled", "entry filled")
    control(control_port, "/price", {"symbol": "AAPL", "price": 235.0})
    app.wait(lambda: app.status.get(ids[1], ("",))[0] == "Filled"
             and app.status.get(ids[2], ("",))[0] == "Cancelled", "TP filled, SL cancelled")
    assert app.status[ids[0]][2] == 229.0 and app.status[ids[1]][2] == 235.0
    fills = app.wait(lambda: [e for e in app.execs if e[0] in ids] if len(
        [e for e in app.execs if e[0] in ids]) == 2 else None, "2 executions")
    assert [(e[3], e[5]) for e in fills] == [("BOT", 229.0), ("SLD", 235.0)]
    app.wait(lambda: all(e[6] in app.commissions for e in fills), "commission reports")


def _option(app: App, req_id: int, right: str) -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = "AAPL", "OPT", "SMART", "USD"
    c.strike, c.right = 230.0, right
    every = app.contract_details(req_id, c)
    assert every, f"no AAPL 230 {right}"
    return sorted(every, key=lambda cd: cd.contract.lastTradeDateOrContractMonth)[1].contract


def test_straddle_bag_order_fills_per_leg_and_for_the_bag(app, paper_tws):
    _, control_port = paper_tws
    call, put = _option(app, 11, "C"), _option(app, 12, "P")
    for leg, price in ((call, 10.0), (put, 8.0)):
        control(control_port, "/price", {"conId": leg.conId, "price": price})
    bag = Contract()
    bag.symbol, bag.secType, bag.exchange, bag.currency = "AAPL", "BAG", "SMART", "USD"
    bag.comboLegs = []
    for leg in (call, put):
        cl = ComboLeg()
        cl.conId, cl.ratio, cl.action, cl.exchange = leg.conId, 1, "BUY", "SMART"
        bag.comboLegs.append(cl)
    app.reqMktData(21, bag, "", False, False, [])
    # the combo quote from the legs' (options: 2-tick half spread): bid 1 ask 2 last 4
    app.wait(lambda: (app.ticks.get((21, 1)), app.ticks.get((21, 2)), app.ticks.get((21, 4)))
             == (17.96, 18.04, 18.0), "combo quote")
    app.cancelMktData(21)
    app.reqPositions()
    oid = app.take_id()
    app.placeOrder(oid, bag, _order("BUY", 2, "LMT", 18.10, orderRef="off-bag"))
    app.wait(lambda: app.status.get(oid, ("",))[0] == "Filled", "straddle filled")
    assert app.status[oid][1] == 2 and app.status[oid][2] == 18.04  # the combo ask
    assert app.open_orders[oid][:2] == ("BAG", 2)
    fills = app.wait(lambda: [e for e in app.execs if e[0] == oid] if len(
        [e for e in app.execs if e[0] == oid]) == 3 else None, "3 executions")
    assert sorted((e[1], e[2]) for e in fills) == sorted(
        [("OPT", call.conId), ("OPT", put.conId), ("BAG", 28812380)])
    legs = [e for e in fills if e[1] == "OPT"]
    assert all(e[3] == "BOT" and e[4] == 2 for e in legs)
    assert sum(e[5] for e in legs) == pytest.approx(18.04)
    app.wait(lambda: all(e[6] in app.commissions for e in legs), "leg commissions")
    assert [app.commissions[e[6]] for e in legs] == [1.3, 1.3]
    app.wait(lambda: app.positions.get(call.conId) == 2 and app.positions.get(put.conId) == 2,
             "leg positions")


def test_default_etrade_only_is_refused_10268(app):
    if not OLD_CLIENT:
        pytest.skip("ibapi 10.x has no eTradeOnly any more and never sends it true")
    aapl = app.contract_details(1, _stock())[0].contract
    aapl.exchange = "SMART"
    order = _order("BUY", 1, "LMT", 229.0)
    order.eTradeOnly = True  # 9.81's default; 10.x dropped the field and always sends false
    oid = app.take_id()
    app.placeOrder(oid, aapl, order)
    err = app.wait(lambda: next((e for e in app.errors if e[0] == oid and e[1] == 10268), None),
                   "error 10268")
    assert err[2] == "The 'EtradeOnly' order attribute is not supported."
    app.wait(lambda: app.status.get(oid, ("",))[0] == "Cancelled", "refused order's status")

