"""The operator tools against the paper TWS, as subprocesses: `run.py dump|smoke` and the
tools/ibg_dump, tools/ibg_order_smoke wrappers (docs/TOOLS.md).

Runs under ib_async and, in .venv-insync, under ib_insync (scripts/test.sh): the subprocesses use
this interpreter. Each command runs in a temporary cwd with a clean environment, so only what a
test gives (environment or a .env there) configures it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bracketgate.sim.server import PaperTWS
from tests.fixtures.paper_tws import PaperTWSHandle
from tests.iblib import IB, LimitOrder, MarketOrder, Stock

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
SCRUB = ("IB_", "IBKR_", "MQTT_", "TOOLS_", "ALLOW_ORDERS", "DATA_DIR", "JOURNAL_", "RISK_", "LOG_")


def _env(**extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(SCRUB)}
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def tool(cwd: Path, *args: str, wrapper: str | None = None, timeout: float = 60,
               **env: Any) -> tuple[int, Any, list[dict[str, Any]], str]:
    """(exit code, stdout JSON or None, stderr JSON lines, raw stderr)."""
    if wrapper:
        cmd = [str(REPO / "tools" / wrapper), *args]
        env.setdefault("BRACKETGATE_VENV", str(VENV))
    else:
        cmd = [sys.executable, str(REPO / "run.py"), *args]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(cwd), env=_env(**env),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    text = err.decode()
    assert "Traceback" not in text, text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]   # every line JSON
    return proc.returncode, json.loads(out) if out.strip() else None, lines, text


def _ib(h: PaperTWSHandle, **kw: Any) -> dict[str, Any]:
    return {"IB_HOST": h.host, "IB_PORT": h.port, **kw}


def _error(lines: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [x for x in lines if "error" in x]
    assert len(errors) == 1, lines
    return errors[0]


async def _round_trip(h: PaperTWSHandle) -> tuple[IB, list[Any]]:
    """BUY 10 AAPL, SELL 10 higher (realized P&L), BUY 5 (a position), one working LMT."""
    ib = IB()
    await ib.connectAsync(h.host, h.port, clientId=1)
    [c] = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
    for side, qty, price in (("BUY", 10, 230.0), ("SELL", 10, 236.0), ("BUY", 5, 236.0)):
        await h.set_price("AAPL", price)
        t = ib.placeOrder(c, MarketOrder(side, qty))
        while not t.isDone():
            await asyncio.sleep(0.02)  # the test's own client waits for its fill
    working = ib.placeOrder(c, LimitOrder("BUY", 3, 100.0))
    while working.orderStatus.status not in ("Submitted", "PreSubmitted"):
        await asyncio.sleep(0.02)
    while not all(f.commissionReport.execId for f in ib.fills()):
        await asyncio.sleep(0.02)
    return ib, ib.fills()


# ---------------------------------------------------------------------------- dump


async def test_dump_every_kind(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    ib, fills = await _round_trip(paper_tws)
    try:
        kinds = [["accounts"], ["positions"], ["orders"], ["account"], ["account", "--all"],
                 ["executions"], ["completed"]]
        results = await asyncio.gather(*(
            tool(tmp_path, "dump", *k, "--client-id", str(100 + i), **_ib(paper_tws))
            for i, k in enumerate(kinds)))
        by = {" ".join(k): r for k, r in zip(kinds, results)}
        for k, (rc, out, lines, _) in by.items():
            assert rc == 0, (k, lines)
            assert out["kind"] == k.split()[0]
            assert out["connection"]["client_id_from"] == "--client-id"

        assert by["accounts"][1]["accounts"] == [{"account": "DU1234567", "paper": True}]

        [pos] = by["positions"][1]["positions"]
        assert pos["contract"]["symbol"] == "AAPL" and pos["position"] == 5
        assert pos["avg_cost"] > 0 and pos["market_price"] is not None

        [order] = by["orders"][1]["orders"]
        assert (order["action"], order["quantity"], order["limit_price"]) == ("BUY", 3, 100.0)
        assert order["status"] in ("Submitted", "PreSubmitted") and order["remaining"] == 3

        summary, every = by["account"][1], by["account --all"][1]
        assert not summary["all"] and every["all"]
        assert {v["tag"] for v in summary["values"]} <= {
            "NetLiquidation", "TotalCashValue", "BuyingPower", "AvailableFunds", "ExcessLiquidity",
            "EquityWithLoanValue", "GrossPositionValue", "InitMarginReq", "MaintMarginReq",
            "UnrealizedPnL", "RealizedPnL", "AccountType"}
        assert len(every["values"]) == len(ib.accountValues()) > len(summary["values"])
        assert all(set(v) == {"account", "tag", "value", "number", "currency"} for v in every["values"])
        assert any(v["currency"] == "USD" for v in every["values"])

        execs = by["executions"][1]
        assert execs["commissions_complete"] is True
        want = {f.execution.execId: f.commissionReport for f in fills}
        assert {e["exec_id"] for e in execs["executions"]} == set(want)
        for e in execs["executions"]:
            rep = want[e["exec_id"]]
            assert e["commission_reported"] and e["commission"] == pytest.approx(rep.commission)
            assert e["commission"] > 0
            assert e["realized_pnl"] == pytest.approx(rep.realizedPNL if rep.realizedPNL < 1e300 else 0.0)
        sell = next(e for e in execs["executions"] if e["side"] == "SLD")
        assert sell["realized_pnl"] > 0    # bought at ~230, sold at ~236

        completed = by["completed"][1]["orders"]
        filled = [o for o in completed if o["status"] == "Filled"]
        assert sorted(o["filled"] for o in filled) == [5, 10, 10]
        assert all(o["remaining"] == 0 for o in filled)
    finally:
        ib.disconnect()


async def test_dump_executions_since(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    ib, fills = await _round_trip(paper_tws)
    try:
        past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
        future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        (rc1, all_, _, _), (rc2, none, _, _), (rc3, _, lines, _) = await asyncio.gather(
            tool(tmp_path, "dump", "executions", "--since", past, "--client-id", "11", **_ib(paper_tws)),
            tool(tmp_path, "dump", "executions", "--since", future, "--client-id", "12", **_ib(paper_tws)),
            tool(tmp_path, "dump", "executions", "--since", "yesterday", **_ib(paper_tws)))
        assert rc1 == rc2 == 0
        assert len(all_["executions"]) == len(fills) == 3 and none["executions"] == []
        assert rc3 == 2 and _error(lines)["code"] == "USAGE" and "ISO" in _error(lines)["error"]
    finally:
        ib.disconnect()


async def test_dump_errors_are_json(paper_tws: PaperTWSHandle, tmp_path: Path, unused_port: int) -> None:
    holder = IB()
    await holder.connectAsync(paper_tws.host, paper_tws.port, clientId=9001)
    try:
        (rc1, out1, l1, _), (rc2, out2, l2, _), (rc3, _, l3, _), (rc4, _, l4, _) = await asyncio.gather(
            tool(tmp_path, "dump", "positions", IB_HOST="127.0.0.1", IB_PORT=unused_port),
            tool(tmp_path, "dump", "positions", **_ib(paper_tws)),           # 9001 is taken
            tool(tmp_path, "dump", "nothing", **_ib(paper_tws)),
            tool(tmp_path, "dump", "positions", "--timeout", "soon", **_ib(paper_tws)))
    finally:
        holder.disconnect()
    assert rc1 == 3 and out1 is None and _error(l1)["code"] == "IB_UNREACHABLE"
    assert f"127.0.0.1:{unused_port}" in _error(l1)["error"]
    assert rc2 == 3 and out2 is None and _error(l2)["code"] == "CLIENT_ID_IN_USE"
    assert "client id 9001 in use" in _error(l2)["error"]
    assert rc3 == 2 and _error(l3)["code"] == "USAGE" and rc4 == 2 and _error(l4)["code"] == "USAGE"


# ---------------------------------------------------------------------------- smoke


async def _smoke_orders(ib: IB) -> list[Any]:
    trades = await ib.reqAllOpenOrdersAsync()
    return [t for t in trades if t.order.orderRef == "bracketgate-smoke"
            and t.orderStatus.status not in ("Cancelled", "ApiCancelled")]


RAILS = [(whatif, allow, paper) for whatif in (True, False) for allow in ("1", "0", None)
         for paper in ("1", None)]


@pytest.mark.parametrize("whatif,allow,paper", RAILS)
async def test_smoke_rails(paper_tws: PaperTWSHandle, tmp_path: Path, whatif: bool,
                           allow: str | None, paper: str | None) -> None:
    env = _ib(paper_tws)
    if allow is not None:
        env["ALLOW_ORDERS"] = allow
    if paper is not None:
        env["IBKR_PAPER"] = paper
    args = ["smoke", "--symbol", "AAPL", "--order", "LMT", "--limit", "100", "--qty", "2", "--auto-cancel"]
    rc, out, lines, _ = await tool(tmp_path, *args, *(["--whatif"] if whatif else []), **env)
    assert rc == 0, lines
    sends = not whatif and allow == "1" and paper == "1"
    assert out["whatIf"] is (not sends) and out["transmitted"] is sends
    assert out["forcedWhatIf"] is (not sends and not whatif)
    for field in ("initMarginChange", "maintMarginChange", "equityWithLoanChange", "initMarginAfter",
                  "maintMarginAfter", "commission"):
        assert isinstance(out[field], float), field
    assert out["initMarginChange"] > 0
    if sends:
        assert isinstance(out["orderId"], int) and out["orderId"] > 0
        assert out["cancel"]["requested"] and out["cancel"]["confirmed"]
        assert out["cancel"]["status"] in ("Cancelled", "ApiCancelled") and out["cancel"]["seconds"] < 5
    else:
        assert out["orderId"] is None and out["cancel"] is None
        assert ("--whatif" in out["reason"]) if whatif else ("forced to a what-if" in out["reason"])
    ib = IB()
    await ib.connectAsync(paper_tws.host, paper_tws.port, clientId=2)
    try:
        assert await _smoke_orders(ib) == []          # nothing left working either way
        execs = await ib.reqExecutionsAsync()
        assert execs == []
    finally:
        ib.disconnect()


async def test_smoke_transmit_without_auto_cancel_stays_working(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    rc, out, _, _ = await tool(tmp_path, "smoke", "--limit", "100", "--qty", "1",
                               ALLOW_ORDERS=1, IBKR_PAPER=1, **_ib(paper_tws))
    assert rc == 0 and out["transmitted"] and out["cancel"] is None and "working" in out["note"]
    ib = IB()
    await ib.connectAsync(paper_tws.host, paper_tws.port, clientId=2)
    try:
        [t] = await _smoke_orders(ib)
        assert t.order.permId == out["permId"] and t.order.lmtPrice == 100
    finally:
        ib.disconnect()


async def test_smoke_never_transmits_to_a_non_paper_account(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    paper_tws.engine.account.account_id = "U1234567"
    rc, out, _, _ = await tool(tmp_path, "smoke", "--limit", "100", "--auto-cancel",
                               ALLOW_ORDERS=1, IBKR_PAPER=1, **_ib(paper_tws))
    assert rc == 0 and out["account"] == "U1234567"
    assert out["whatIf"] and out["forcedWhatIf"] and not out["transmitted"]
    assert "not a paper account" in out["reason"]


@pytest.fixture
async def live_port_tws() -> Any:
    for port in (4001, 7496):
        tws = PaperTWS(host="127.0.0.1", port=port, control_port=0)
        try:
            await tws.start()
        except OSError:
            continue
        try:
            yield PaperTWSHandle("127.0.0.1", port, tws.control_port or 0, engine=tws.engine, tws=tws)
        finally:
            await tws.stop()
        return
    pytest.skip("both live ports (4001, 7496) are taken on this machine")


async def test_smoke_never_transmits_on_a_live_port(live_port_tws: PaperTWSHandle, tmp_path: Path) -> None:
    rc, out, _, _ = await tool(tmp_path, "smoke", "--limit", "100", "--auto-cancel",
                               ALLOW_ORDERS=1, IBKR_PAPER=1, **_ib(live_port_tws, IB_LIVE="true"))
    assert rc == 0 and out["whatIf"] and not out["transmitted"] and out["orderId"] is None
    assert "live trading port" in out["reason"]


async def test_smoke_futures_options_and_market(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    ib = IB()
    await ib.connectAsync(paper_tws.host, paper_tws.port, clientId=2)
    try:
        from tests.iblib import Future
        details = await ib.reqContractDetailsAsync(Future("ES", "", "", currency="USD"))
    finally:
        ib.disconnect()
    expiries = sorted(d.contract.lastTradeDateOrContractMonth for d in details)
    today = datetime.now(timezone.utc).strftime("%Y%m%d")
    front = next(e for e in expiries if e >= today)
    second = next(e for e in expiries if e > front)
    option = paper_tws.universe.option_chain("AAPL")[0]
    runs = await asyncio.gather(
        tool(tmp_path, "smoke", "--asset", "FUT", "--symbol", "ES", "--resolve-front-month",
             "--client-id", "21", **_ib(paper_tws)),
        tool(tmp_path, "smoke", "--asset", "FUT", "--symbol", "ES", "--resolve-front-month",
             "--expiry", second[:6], "--client-id", "22", **_ib(paper_tws)),
        tool(tmp_path, "smoke", "--asset", "OPT", "--symbol", "AAPL", "--expiry", option.expiry,
             "--strike", str(option.strike), "--right", option.right, "--client-id", "23",
             **_ib(paper_tws)),
        tool(tmp_path, "smoke", "--order", "MKT", "--qty", "3", "--whatif", "--client-id", "24",
             **_ib(paper_tws)))
    (rc1, fut, _, _), (rc2, override, _, _), (rc3, opt, l3, _), (rc4, mkt, _, _) = runs
    assert [rc1, rc2, rc3, rc4] == [0, 0, 0, 0], [r[2][-1] for r in runs]
    assert fut["contract"]["expiry"] == front and fut["contract"]["multiplier"] == 50
    assert override["contract"]["expiry"] == second
    assert (opt["contract"]["sec_type"], opt["contract"]["right"]) == ("OPT", option.right)
    assert opt["contract"]["strike"] == option.strike
    assert mkt["order"]["orderType"] == "MKT" and mkt["order"]["limit"] is None and mkt["whatIf"]
    for out in (fut, override, opt, mkt):
        assert out["whatIf"] and not out["transmitted"] and out["initMarginChange"] is not None


@pytest.mark.parametrize("args,code,rc,words", [
    (["--symbol", "ES", "--asset", "FUT"], "USAGE", 2, "--resolve-front-month"),
    (["--symbol", "ES"], "UNKNOWN_CONTRACT", 1, "unknown contract"),
    (["--symbol", "NOSUCHCO"], "UNKNOWN_CONTRACT", 1, "NOSUCHCO"),
    (["--asset", "OPT", "--symbol", "AAPL", "--expiry", "20991217"], "USAGE", 2, "--strike"),
    (["--asset", "BOND"], "USAGE", 2, "invalid choice"),
    (["--order", "MKT", "--limit", "5"], "USAGE", 2, "--limit"),
    (["--expiry", "2026"], "USAGE", 2, "YYYYMM"),
    (["--qty", "-1"], "USAGE", 2, "--qty"),
])
async def test_smoke_bad_input_is_a_json_error(paper_tws: PaperTWSHandle, tmp_path: Path,
                                               args: list[str], code: str, rc: int, words: str) -> None:
    got, out, lines, _ = await tool(tmp_path, "smoke", *args, **_ib(paper_tws))
    assert got == rc and out is None
    assert _error(lines)["code"] == code and words in _error(lines)["error"]


# ---------------------------------------------------------------------------- wrappers, settings


async def test_wrappers_run_as_typed(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    (rc1, dump, l1, _), (rc2, smoke, _, _), (rc3, _, l3, _) = await asyncio.gather(
        tool(tmp_path, "positions", wrapper="ibg_dump", IBKR_HOST=paper_tws.host, IBKR_PORT=paper_tws.port),
        tool(tmp_path, "--asset", "STK", "--symbol", "AAPL", "--order", "LMT", "--limit", "100",
             "--whatif", wrapper="ibg_order_smoke", IBKR_HOST=paper_tws.host,
             IBKR_PORT=paper_tws.port, IBKR_CLIENT_ID=9002),
        tool(tmp_path, "--bogus", wrapper="ibg_dump"))
    assert rc1 == 0 and dump["kind"] == "positions" and dump["positions"] == []
    assert dump["connection"]["client_id"] == 9001 and "9001" in l1[0]["info"]
    assert rc2 == 0 and smoke["whatIf"] and not smoke["transmitted"]
    assert smoke["connection"]["client_id"] == 9002 and smoke["connection"]["client_id_from"] == "IBKR_CLIENT_ID"
    assert rc3 == 2 and _error(l3)["code"] == "USAGE"


async def test_env_file_only(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    """A .env in the cwd is all the configuration: IBKR_* or IB_* names; its IB_CLIENT_ID is the
    daemon's, not taken by the tools; TOOLS_CLIENT_ID is."""
    holder = IB()
    await holder.connectAsync(paper_tws.host, paper_tws.port, clientId=1)
    try:
        (tmp_path / ".env").write_text(
            f"IBKR_HOST={paper_tws.host}\nIBKR_PORT={paper_tws.port}\nIB_CLIENT_ID=1\n")
        rc, out, _, _ = await tool(tmp_path, "dump", "accounts")
        assert rc == 0, out
        assert out["connection"]["port"] == paper_tws.port and out["connection"]["client_id"] == 9001
        (tmp_path / ".env").write_text(
            f"IB_HOST={paper_tws.host}\nIB_PORT={paper_tws.port}\nTOOLS_CLIENT_ID=4242\n")
        rc, out, _, _ = await tool(tmp_path, "smoke", "--whatif", "--limit", "100")
        assert rc == 0 and out["connection"]["client_id"] == 4242 and out["whatIf"]
        # environment and .env disagree through the alias: a configuration error, one line
        rc, out, lines, _ = await tool(tmp_path, "dump", "accounts", IBKR_PORT=paper_tws.port + 1)
        assert rc == 2 and out is None and len(lines) == 1
        assert "IB_PORT" in lines[0]["error"] and "IBKR_PORT" in lines[0]["error"]
    finally:
        holder.disconnect()


async def test_default_mode_reads_the_endpoints_file(paper_tws: PaperTWSHandle, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "endpoints.json").write_text(json.dumps(
        {"ib_host": paper_tws.host, "ib_port": paper_tws.port, "mqtt_url": "mqtt://127.0.0.1:1"}))
    rc, out, _, _ = await tool(tmp_path, "dump", "accounts")
    assert rc == 0 and out["connection"]["port"] == paper_tws.port
    assert out["connection"]["endpoint_from"].endswith("endpoints.json")


async def test_daemon_refuses_an_alias_conflict(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "run.py"), cwd=str(tmp_path),
        env=_env(IB_HOST="127.0.0.1", IB_PORT=4002, IBKR_PORT=7497),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    [line] = err.decode().strip().splitlines()
    assert "IB_PORT=4002 and IBKR_PORT=7497 disagree" in line
