"""Combos (BAG) through the daemon over mosquitto (issue 12), end to end.

mosquitto and the daemon (`python run.py`) run as real processes, the paper TWS on loopback
(in-process here: the test moves the legs' prices by conId through its control port); an MQTT
client plays the strategy agent. A straddle and a vertical are proposed, approved, placed as a
BAG bracket, filled, and driven to the take-profit and to the stop: the other child cancelled,
a Fill per leg (its P&L) and one for the BAG, the bracket's realized P&L on every fill. Then a
combo in flight (entry filled, exits working) through a gateway restart and a daemon SIGKILL:
reconciled like any bracket (Rig and the waits of tests/e2e/test_recovery_chaos.py).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from tests.e2e.test_recovery_chaos import AGENT, Rig, after, conn_state
from tests.fixtures.paper_tws import PaperTWSHandle

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

# (legs as (strike, right, action)), start prices of the legs, entry, take-profit, stop, and the
# leg move (strike, right, price) that takes the combo through its take-profit / its stop
STRUCTURES: dict[str, dict[str, Any]] = {
    "straddle": dict(legs=[(230.0, "C", "BUY"), (230.0, "P", "BUY")],
                     prices={(230.0, "C"): 10.0, (230.0, "P"): 8.0},
                     entry=18.0, tp=20.0, sl=17.0,
                     to_tp=(230.0, "C", 12.10), to_sl=(230.0, "C", 8.90)),
    "vertical": dict(legs=[(230.0, "C", "BUY"), (240.0, "C", "SELL")],
                     prices={(230.0, "C"): 10.0, (240.0, "C"): 4.0},
                     entry=6.0, tp=8.0, sl=5.0,
                     to_tp=(230.0, "C", 12.10), to_sl=(230.0, "C", 8.90)),
}


class Combos:
    """The legs of the tests' combos: IB's conIds from the paper TWS's universe."""

    def __init__(self, tws: PaperTWSHandle) -> None:
        assert tws.universe is not None
        opts = tws.universe.find(symbol="AAPL", sec_type="OPT")
        self.expiry = sorted({c.expiry for c in opts})[1]
        self.con_ids = {(c.strike, c.right): c.con_id for c in opts if c.expiry == self.expiry}
        self.tws = tws

    async def price(self, strike: float, right: str, px: float) -> None:
        await self.tws.set_price(con_id=self.con_ids[(strike, right)], price=px)

    def proposal(self, pid: str, kind: str) -> dict[str, Any]:
        s = STRUCTURES[kind]
        return {"proposal_id": pid, "symbol": "AAPL", "sec_type": "BAG", "side": "BUY",
                "quantity": 1, "order_type": "LMT", "limit_price": s["entry"],
                "take_profit": s["tp"], "stop_loss": s["sl"], "tif": "DAY",
                "legs": [{"sec_type": "OPT", "expiry": self.expiry, "strike": k, "right": r,
                          "ratio": 1, "action": a} for k, r, a in s["legs"]]}


async def _start(rig: Rig, combos: Combos, kind: str) -> tuple[str, dict[str, Any]]:
    for (k, r), px in STRUCTURES[kind]["prices"].items():
        await combos.price(k, r, px)
    pid = f"{kind}-{uuid.uuid4().hex[:6]}"
    p = combos.proposal(pid, kind)
    rig.proposals[pid] = p
    await rig.a.propose(AGENT, p)
    d = await rig.a.decision(AGENT, pid, timeout=20)
    assert d["verdict"] == "approved", d
    return pid, d["order_ids"]


def _events(rig: Rig, pid: str) -> list[dict[str, Any]]:
    return [m for m in rig.a.on(f"orders/{AGENT}")
            if isinstance(m, dict) and m.get("proposal_id") == pid]


async def _leg_status(rig: Rig, pid: str, leg: str, status: str, timeout: float = 20.0) -> None:
    await rig.a.wait_topic(f"orders/{AGENT}", lambda m: isinstance(m, dict)
                           and m.get("type") == "order_event" and m.get("proposal_id") == pid
                           and m.get("leg") == leg and m.get("status") == status, timeout)


def _fills(rig: Rig, pid: str) -> list[dict[str, Any]]:
    return [m for m in _events(rig, pid) if m.get("type") == "fill"]


async def _all_fills(rig: Rig, pid: str, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len({f["exec_id"] for f in _fills(rig, pid)}) < n:
        assert loop.time() < deadline, f"{len(_fills(rig, pid))} of {n} fills: {_fills(rig, pid)}"
        await asyncio.sleep(0.05)      # the probe's record, filled by its reader task
    return list({f["exec_id"]: f for f in _fills(rig, pid)}.values())


async def _exit_at_tws(rig: Rig, pid: str, ids: dict[str, int], filled: str) -> dict[str, Any]:
    """The paper TWS's state once the bracket is settled: exactly its three BAG orders, the
    `filled` child Filled and the other Cancelled, every leg flat."""
    other = "stop_loss" if filled == "take_profit" else "take_profit"
    st = await rig.quiet_state()
    orders = [o for o in st["orders"] if o.get("orderRef") == pid]
    assert sorted(o["orderId"] for o in orders) == sorted(ids.values()), orders
    by_id = {o["orderId"]: o for o in orders}
    assert {o["secType"] for o in orders} == {"BAG"}
    assert by_id[ids["entry"]]["status"] == "Filled"
    assert by_id[ids[filled]]["status"] == "Filled"
    assert by_id[ids[other]]["status"] in ("Cancelled", "ApiCancelled"), by_id[ids[other]]
    assert all(p["position"] == 0 for p in st["positions"] if p["secType"] == "OPT"), st["positions"]
    return st


def _check_pnl(fills: list[dict[str, Any]], exit_leg: str) -> None:
    """A Fill per leg and one for the BAG at entry and exit; the legs carry commission and the
    closing legs their realized P&L; every fill the bracket's realized P&L so far."""
    bag = [f for f in fills if f.get("sec_type") == "BAG"]
    legs = [f for f in fills if f.get("sec_type") == "OPT"]
    assert sorted(f["leg"] for f in bag) == sorted(["entry", exit_leg])
    assert len(legs) == 4 and all(f["commission"] for f in legs)
    closing = [f for f in legs if f["leg"] == exit_leg]
    assert len(closing) == 2 and all(f["realized_pnl"] is not None for f in closing)
    total = sum(f["realized_pnl"] or 0.0 for f in legs)
    last = max((f for f in legs), key=lambda f: f["ts"])
    assert last["bracket_realized_pnl"] == pytest.approx(total)
    if exit_leg == "take_profit":
        assert total > 0
    else:
        assert total < 0


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
@pytest.mark.parametrize("exit_leg", ["take_profit", "stop_loss"])
async def test_combo_bracket_to_its_exit(mosquitto, paper_tws, tmp_path, kind, exit_leg):
    combos = Combos(paper_tws)
    async with asyncio.timeout(90):
        async with Rig(paper_tws, mosquitto.url, tmp_path, random.Random(12)) as rig:
            await rig.start_daemon()
            pid, ids = await _start(rig, combos, kind)
            await _leg_status(rig, pid, "entry", "Filled")
            k, r, px = STRUCTURES[kind]["to_tp" if exit_leg == "take_profit" else "to_sl"]
            await combos.price(k, r, px)
            await _leg_status(rig, pid, exit_leg, "Filled")
            other = "stop_loss" if exit_leg == "take_profit" else "take_profit"
            await _leg_status(rig, pid, other, "Cancelled")
            await _exit_at_tws(rig, pid, ids, exit_leg)
            _check_pnl(await _all_fills(rig, pid, 6), exit_leg)
            # the same proposal again: its first decision, never a second bracket
            since = rig.a.mark()
            await rig.a.propose(AGENT, rig.proposals[pid])
            await rig.a.wait_topic(f"decisions/{AGENT}", lambda d: d.get("proposal_id") == pid,
                                   since=since, timeout=10)
            assert all(d["order_ids"] == ids for d in rig.decisions()[pid])
            await _exit_at_tws(rig, pid, ids, exit_leg)


async def test_combo_in_flight_across_a_gateway_restart(mosquitto, paper_tws, tmp_path):
    """Entry filled, exits working: the gateway restarts; the daemon reconnects, reconciles the
    combo like any bracket and its take-profit still fills once, the stop cancelled."""
    combos = Combos(paper_tws)
    async with asyncio.timeout(120):
        async with Rig(paper_tws, mosquitto.url, tmp_path, random.Random(13)) as rig:
            await rig.start_daemon()
            pid, ids = await _start(rig, combos, "straddle")
            await _leg_status(rig, pid, "entry", "Filled")
            mark = len(rig.d.logs)
            await paper_tws.restart(downtime=1.0)
            await rig.d.wait_log(after(mark, conn_state("disconnected")), timeout=15)
            await rig.d.wait_log(after(mark, conn_state("ready")), timeout=30)
            # reconciled: the combo's exits are the daemon's again (working, by orderRef)
            st = await rig.tws.state()
            working = {o["orderId"]: o["status"] for o in st["orders"] if o.get("orderRef") == pid}
            assert working[ids["take_profit"]] in ("Submitted", "PreSubmitted")
            k, r, px = STRUCTURES["straddle"]["to_tp"]
            await combos.price(k, r, px)
            await _leg_status(rig, pid, "take_profit", "Filled", timeout=30)
            await _exit_at_tws(rig, pid, ids, "take_profit")
            _check_pnl(await _all_fills(rig, pid, 6), "take_profit")


@pytest.mark.parametrize("stop_fills", ["while_down", "after_restart"])
async def test_combo_in_flight_across_a_daemon_sigkill(mosquitto, paper_tws, tmp_path, stop_fills):
    """Entry filled, exits working; the daemon is SIGKILLed and the stop fills while it is down
    (or once it is back). The restarted daemon reconciles the combo from IB (by orderRef): the
    agent gets the fills it missed, a re-sent proposal_id its first decision (never a second
    bracket), and a new combo is decided and traded after it."""
    combos = Combos(paper_tws)
    async with asyncio.timeout(120):
        async with Rig(paper_tws, mosquitto.url, tmp_path, random.Random(14)) as rig:
            await rig.start_daemon()
            pid, ids = await _start(rig, combos, "vertical")
            await _leg_status(rig, pid, "entry", "Filled")
            await rig.d.kill()
            k, r, px = STRUCTURES["vertical"]["to_sl"]
            if stop_fills == "while_down":
                await combos.price(k, r, px)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15
                while True:   # the stop fills at the paper TWS while the daemon is dead
                    st = await rig.tws.state()
                    if any(o["orderId"] == ids["stop_loss"] and o["status"] == "Filled"
                           for o in st["orders"]):
                        break
                    assert loop.time() < deadline, "the stop did not fill"
                    await asyncio.sleep(0.1)    # polling the paper TWS's state
                await rig.start_daemon()
            else:
                await rig.start_daemon()
                # adopted from IB: the restarted daemon reports the exits' fate to the agent
                await combos.price(k, r, px)
                await _leg_status(rig, pid, "stop_loss", "Filled")
                await _leg_status(rig, pid, "take_profit", "Cancelled")
            _check_pnl(await _all_fills(rig, pid, 6, timeout=20), "stop_loss")
            await _exit_at_tws(rig, pid, ids, "stop_loss")
            since = rig.a.mark()
            await rig.a.propose(AGENT, rig.proposals[pid])
            again = await rig.a.wait_topic(f"decisions/{AGENT}",
                                           lambda d: d.get("proposal_id") == pid,
                                           since=since, timeout=10)
            assert again["verdict"] == "approved" and again["order_ids"] == ids
            await _exit_at_tws(rig, pid, ids, "stop_loss")
            # the daemon trades combos after the restart: a new straddle to its take-profit
            pid2, ids2 = await _start(rig, combos, "straddle")
            await _leg_status(rig, pid2, "entry", "Filled")
            k, r, px = STRUCTURES["straddle"]["to_tp"]
            await combos.price(k, r, px)
            await _leg_status(rig, pid2, "take_profit", "Filled")
            await _exit_at_tws(rig, pid2, ids2, "take_profit")


async def test_bad_and_undefined_risk_combos_are_answered_and_nothing_reaches_ib(
        mosquitto, paper_tws, tmp_path):
    """Over MQTT: a leg without a strike is `invalid` naming legs[1].strike; a short straddle is
    rejected UNDEFINED_RISK_COMBO; an unknown strike UNKNOWN_CONTRACT naming the leg; no order."""
    combos = Combos(paper_tws)
    async with asyncio.timeout(60):
        async with Rig(paper_tws, mosquitto.url, tmp_path, random.Random(15)) as rig:
            await rig.start_daemon()
            for (k, r), px in STRUCTURES["straddle"]["prices"].items():
                await combos.price(k, r, px)
            bad = combos.proposal("bad-leg", "straddle")
            del bad["legs"][1]["strike"]
            short = combos.proposal("short-straddle", "straddle") | {
                "side": "SELL", "take_profit": 16.0, "stop_loss": 19.0}
            unknown = combos.proposal("unknown-leg", "vertical")
            unknown["legs"][1]["strike"] = 241.0
            for p in (bad, short, unknown):
                await rig.a.propose(AGENT, p)
            d = await rig.a.decision(AGENT, "bad-leg", timeout=15)
            assert d["verdict"] == "invalid"
            assert "legs[1].strike" in [r["field"] for r in d["reasons"]], d
            d = await rig.a.decision(AGENT, "short-straddle", timeout=15)
            assert d["verdict"] == "rejected"
            assert [r["code"] for r in d["reasons"]] == ["UNDEFINED_RISK_COMBO"]
            d = await rig.a.decision(AGENT, "unknown-leg", timeout=15)
            assert [(r["code"], r["field"]) for r in d["reasons"]] == [("UNKNOWN_CONTRACT", "legs[1]")]
            st = await rig.tws.state()
            assert not [o for o in st["orders"] if o.get("orderRef") in
                        ("bad-leg", "short-straddle", "unknown-leg")]
