"""core/order_files.py: JSON and CSV order files read into validated proposals, every bad row and
field named, exits from the limits' [bracket_policy] on the tick, ids stable per file and row;
`run.py orders --dry-run` and `run.py --help` as a user types them; the status line and exits."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bracketgate.config.limits import DEFAULT_LIMITS_PATH, load_limits, parse_limits
from bracketgate.core.operator import status_exit, status_line
from bracketgate.core.order_files import BadOrderFile, plan_orders, policy_exits, read_rows

REPO = Path(__file__).resolve().parents[2]
LIMITS = load_limits(DEFAULT_LIMITS_PATH)

CSV = b"""ticker,action,quantity,limit_price,take_profit,stop_loss
AAPL,BUY,10,200,,
MSFT,sell,5,400.00,380,
ES,BUY,1,5000.10,,
"""


def _plan(data: bytes, limits=LIMITS):
    return plan_orders(data, agent_id="pm", limits=limits, name="f")


def test_default_policy_is_in_the_shipped_limits_file() -> None:
    assert LIMITS.bracket_policy.stop_distance_pct == 1.0 and LIMITS.bracket_policy.reward_risk == 2.0
    with pytest.raises(Exception, match="bracket_policy"):
        parse_limits({"bracket_policy": {"stop_pct": 1.0}})


def test_csv_rows_become_proposals_with_policy_exits_on_the_tick() -> None:
    plan = _plan(CSV)
    assert plan.errors == []
    aapl, msft, es = (o.proposal for o in plan.orders)
    # BUY 200: stop 1 % below (198), take-profit 2x the risk above (204)
    assert (aapl.symbol, aapl.side, aapl.quantity, aapl.limit_price) == ("AAPL", "BUY", 10, 200.0)
    assert (aapl.stop_loss, aapl.take_profit) == (198.0, 204.0) and aapl.agent_id == "pm"
    assert plan.orders[0].filled == ("take_profit", "stop_loss")
    # SELL with its take-profit given: the stop at reward / 2 above the entry
    assert (msft.side, msft.take_profit, msft.stop_loss) == ("SELL", 380.0, 410.0)
    assert plan.orders[1].filled == ("stop_loss",)
    # ES has min_tick 0.25 in the default limits: 1 % of 5000.10 = 50.001 -> 200 ticks;
    assert es.stop_loss == 4950.0 and es.take_profit == 5100.5   # the entry is off the tick:
    risk, reward = es.limit_price - es.stop_loss, es.take_profit - es.limit_price  # (the gate
    # refuses it PRICE_OFF_TICK) but the exits are on it, the reward:risk at least the policy's
    assert reward / risk >= 2.0 - 1e-9


@pytest.mark.parametrize("side,entry,tick,want", [
    ("BUY", 100.0, 0.01, (102.0, 99.0)),
    ("SELL", 100.0, 0.01, (98.0, 101.0)),
    ("BUY", 0.50, 0.01, (0.52, 0.49)),     # 1 % of 0.50 is half a tick: at least one tick
    ("BUY", 5001.0, 0.25, (5101.0, 4951.0)),
])
def test_policy_exits(side, entry, tick, want) -> None:
    tp, sl = policy_exits(side, entry, tick, 1.0, 2.0)
    assert (round(tp, 6), round(sl, 6)) == want


def test_policy_rounds_so_reward_risk_never_falls_below_the_policy() -> None:
    for entry in (10.03, 33.33, 187.77, 999.99):
        tp, sl = policy_exits("BUY", entry, 0.01, 0.7, 1.5)
        assert (tp - entry) / (entry - sl) >= 1.5 - 1e-9
        for p in (tp, sl):
            assert abs(p * 100 - round(p * 100)) < 1e-6


def test_json_list_equals_the_csv() -> None:
    rows = [{"ticker": "AAPL", "action": "BUY", "quantity": 10, "limit_price": 200},
            {"ticker": "MSFT", "action": "SELL", "quantity": 5, "limit_price": 400, "take_profit": 380}]
    plan = _plan(json.dumps(rows).encode())
    assert plan.errors == []
    assert [(o.proposal.take_profit, o.proposal.stop_loss) for o in plan.orders] == [(204.0, 198.0),
                                                                                     (380.0, 410.0)]


def test_options_futures_and_market_rows() -> None:
    data = (b"ticker,action,quantity,limit_price,sec_type,expiry,strike,right,order_type,take_profit,stop_loss\n"
            b"AAPL,BUY,1,5.00,OPT,20261218,200,C,,6,4.5\n"
            b"ES,SELL,1,5000,FUT,front,,,,,\n"
            b"AAPL,BUY,1,230,,,,,MKT,,\n")
    plan = _plan(data)
    assert plan.errors == []
    opt, fut, mkt = (o.proposal for o in plan.orders)
    assert (opt.sec_type, opt.expiry, opt.strike, opt.right) == ("OPT", "20261218", 200.0, "C")
    assert (fut.sec_type, fut.expiry, fut.stop_loss, fut.take_profit) == ("FUT", "front", 5050.0, 4900.0)
    # MKT: limit_price is the policy's reference price, not sent
    assert mkt.order_type == "MKT" and mkt.limit_price is None and mkt.stop_loss == 227.7


def test_every_bad_row_and_field_is_named() -> None:
    rows = [{"ticker": "AAPL", "action": "BUY", "quantity": 10, "limit_price": 200},          # fine
            {"ticker": "AAPL", "action": "HOLD", "quantity": 1.5, "limit_price": -3, "stoploss": 1},
            {"action": "BUY", "quantity": "x", "limit_price": "abc"},
            {"ticker": "AAPL", "action": "BUY", "quantity": 1, "limit_price": 5, "sec_type": "OPT"},
            7]
    plan = _plan(json.dumps(rows).encode())
    got = {(e.row, e.field) for e in plan.errors}
    assert {(2, "action"), (2, "quantity"), (2, "limit_price"), (2, "stoploss"),
            (3, "ticker"), (3, "quantity"), (3, "limit_price"), (4, "row"), (5, "row")} <= got
    assert 1 not in {e.row for e in plan.errors}
    assert "options need expiry" in next(e.message for e in plan.errors if e.row == 4)


def test_csv_bad_cells_and_extra_cells() -> None:
    data = b"ticker,action,quantity,limit_price\nAAPL,BUY,ten,200\nAAPL,BUY,1,200,oops\n\n"
    plan = _plan(data)
    assert {(e.row, e.field) for e in plan.errors} == {(1, "quantity"), (2, "<extra cells>")}


@pytest.mark.parametrize("data,says", [
    (b"", "empty"), (b"{\"ticker\": 1}", "list"), (b"[1,", "not valid JSON"),
    (b"ticker,action,quantity,limit_price\n", "no rows"), (b"\xff\xfe", "UTF-8"),
])
def test_unreadable_files(data, says) -> None:
    with pytest.raises(BadOrderFile, match=says):
        read_rows(data)


def test_ids_are_stable_per_file_and_row_and_differ_across_files() -> None:
    a, b = _plan(CSV), _plan(CSV)
    ids = [o.proposal.proposal_id for o in a.orders]
    assert ids == [o.proposal.proposal_id for o in b.orders] and len(set(ids)) == 3
    other = _plan(CSV + b"AAPL,BUY,1,200,,\n")
    assert not set(ids) & {o.proposal.proposal_id for o in other.orders}
    assert all(i.startswith("of-") and len(i) <= 64 for i in ids)


# ------------------------------------------------------------------ the command, as typed


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_dry_run_prints_every_proposal_and_needs_no_broker(tmp_path: Path) -> None:
    f = tmp_path / "orders.csv"
    f.write_bytes(CSV)
    # a broker URL nobody listens on: a dry run never connects
    p = _run("orders", str(f), "--dry-run", env={"MQTT_URL": "mqtt://127.0.0.1:9"})
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["row"] for x in lines] == [1, 2, 3] and all(x["dry_run"] for x in lines)
    assert lines[0]["filled_by_policy"] == ["take_profit", "stop_loss"]
    assert (lines[0]["proposal"]["take_profit"], lines[0]["proposal"]["stop_loss"]) == (204.0, 198.0)


def test_a_bad_file_sends_nothing_and_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "orders.csv"
    f.write_bytes(b"ticker,action,quantity,limit_price\nAAPL,BUY,10,200\nAAPL,BUY,0,200\n")
    p = _run("orders", str(f), env={"MQTT_URL": "mqtt://127.0.0.1:9"})
    assert p.returncode == 2 and p.stdout == ""
    err = json.loads(p.stderr.strip().splitlines()[-1])
    assert err["rows"] == [{"row": 2, "field": "quantity", "message": err["rows"][0]["message"]}]
    assert "nothing sent" in err["error"]
    missing = _run("orders", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_policy_from_the_limits_file(tmp_path: Path) -> None:
    lim = tmp_path / "limits.toml"
    lim.write_text("[bracket_policy]\nstop_distance_pct = 2.0\nreward_risk = 3.0\n")
    f = tmp_path / "orders.json"
    f.write_text('[{"ticker": "AAPL", "action": "BUY", "quantity": 1, "limit_price": 100}]')
    for args, env in ((["--limits", str(lim)], {}), ([], {"RISK_LIMITS_FILE": str(lim)})):
        p = _run("orders", str(f), "--dry-run", *args, env=env)
        prop = json.loads(p.stdout)["proposal"]
        assert (prop["stop_loss"], prop["take_profit"]) == (98.0, 106.0)


COMMANDS = ["daemon", "sim", "schema", "journal", "submit", "orders", "halt", "reduce", "resume",
            "status", "dump", "smoke"]


def test_help_lists_every_command_and_each_has_its_own_help() -> None:
    top = _run("--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert f"\n    {name} " in top.stdout, name
    assert _run("help").stdout == top.stdout
    for name in ("daemon", "sim", "schema", "journal", "submit", "orders", "halt", "status"):
        own = _run(name, "--help")
        assert own.returncode == 0 and "usage:" in own.stdout, (name, own.stderr)
        assert own.stdout != top.stdout
    assert "--dry-run" in _run("help", "orders").stdout and "--json" in _run("status", "--help").stdout
    bad = _run("bogus")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# ------------------------------------------------------------------ status


NOW = datetime(2026, 12, 1, 15, 0, 10, tzinfo=UTC)
ONLINE = {"status": {"state": "online", "mode": "paper", "trading_state": "ACTIVE", "connection": "ready",
                     "ts": "2026-12-01T15:00:00Z"},
          "portfolio": {"ts": "2026-12-01T15:00:09.6Z", "positions": [{}, {}], "working_orders": [{}] * 3,
                        "pnl": {"daily": -12.5}, "account_values": {f"k{i}": 1.0 for i in range(153)}}}


def test_status_line_and_exit_codes() -> None:
    line = status_line(ONLINE, NOW)
    assert line == ("online mode=paper trading=ACTIVE ib=ready positions=2 daily_pnl=-12.50"
                    " working_orders=3 age=0.4s")
    assert status_exit(ONLINE) == 0
    degraded = {**ONLINE, "status": {**ONLINE["status"], "state": "degraded", "connection": "disconnected",
                                     "detail": "IB disconnected"}}
    assert status_exit(degraded) == 1 and status_line(degraded, NOW).startswith("degraded (IB disconnected)")
    offline = {"status": {"state": "offline", "detail": "clean shutdown", "ts": "2026-12-01T15:00:00Z"}}
    assert status_exit(offline) == 3 and status_line(offline, NOW).endswith("for=10s")
    assert status_exit({}) == 3 and status_line({}, NOW).startswith("offline: no status")
    assert status_exit({"status": {"state": "starting"}}) == 1


def test_status_line_health_fields() -> None:
    """Uptime (from started_at), heartbeat round trip, reconnects, journal lag, the HTTP port."""
    st = {**ONLINE["status"], "started_at": "2026-12-01T13:58:05Z", "uptime_s": 3.0,
          "heartbeat_rtt_ms": 1.26, "ib_reconnects": 2, "mqtt_reconnects": 0,
          "journal_lag_ms": 0.84, "http": "http://127.0.0.1:8740"}
    line = status_line({**ONLINE, "status": st}, NOW)
    assert line.endswith("age=0.4s up=1h02m rtt=1.3ms reconnects=ib:2,mqtt:0 journal_lag=0.8ms"
                         " http=http://127.0.0.1:8740"), line
    short = {**st, "started_at": None, "uptime_s": 75.0, "heartbeat_rtt_ms": None}
    assert " up=1m15s reconnects=ib:2,mqtt:0 " in status_line({**ONLINE, "status": short}, NOW)
