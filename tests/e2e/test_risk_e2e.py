"""End to end, the RiskGovernor against real processes (GitHub issue #4): mosquitto, the paper
TWS (`python run.py sim --tick-interval 0`: prices move only through its control port) and the
daemon (`python run.py`), driven by plain MQTT clients and the operator CLI.

Fail-closed on a gateway restart and on 1100/1102; the automatic HALT when a price move pushes
daily P&L past the limit; operator commands (CLI and a raw {prefix}/control publish); SIGHUP
reloads (valid and invalid files); a concurrent burst against a count limit; rate limits.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonProcess, MqttProbe, run_cli
from tests.fixtures.paper_tws import PaperTWSHandle

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

TEST_BUDGET_S = 30.0     # one test, daemon start and stop included
AGENT = "alpha"
# what the governor answers when it cannot trust the broker picture (agents/rules.py gates)
FAIL_CLOSED_CODES = {"BROKER_DISCONNECTED", "BROKER_CONNECTIVITY_LOST", "NOT_RECONCILED",
                     "SNAPSHOT_STALE", "PNL_UNKNOWN", "ACCOUNT_VALUES_UNKNOWN"}


# ============================================================================ proposals


def _pid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def resting(pid: str, **kw: Any) -> dict[str, Any]:
    """BUY 10 AAPL at 200 with AAPL at 230: approved, placed, never fills (worst case 40.2)."""
    p = {"proposal_id": pid, "symbol": "AAPL", "sec_type": "STK", "exchange": "SMART",
         "currency": "USD", "side": "BUY", "quantity": 10, "order_type": "LMT",
         "limit_price": 200.00, "take_profit": 210.00, "stop_loss": 196.00, "tif": "DAY"}
    p.update(kw)
    return p


def marketable(pid: str, **kw: Any) -> dict[str, Any]:
    """BUY 10 AAPL at 230 with AAPL at 230: the entry fills on arrival."""
    return resting(pid, limit_price=230.00, take_profit=235.00, stop_loss=226.50, **kw)


def codes(decision: dict[str, Any]) -> set[str]:
    return {r["code"] for r in decision.get("reasons", [])}


def _ts(iso: str) -> float:
    """An ISO timestamp from a message (`...Z`) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ============================================================================ processes


def write_limits(path: Path, top: dict[str, Any] | None = None,
                 agent: dict[str, Any] | None = None, agents: list[str] = ()) -> Path:
    """A limits TOML: the given top-level keys and `[agent]` keys; every other limit defaults.
    `agents`: agent_ids named (`[agents.<id>]`, empty), each with a budget of its own (every
    other agent_id shares one)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in (top or {}).items()]
    if agent:
        lines += ["[agent]", *(f"{k} = {json.dumps(v)}" for k, v in agent.items())]
    lines += [f"[agents.{a}]" for a in agents]
    path.write_text("\n".join(lines) + "\n")
    return path


def ready_snapshot(s: Any) -> bool:
    return isinstance(s, dict) and s.get("connection") == "ready" and s.get("reconciled") is True


@asynccontextmanager
async def running(mosquitto: Any, tws: PaperTWSHandle, tmp_path: Path, *,
                  limits: Path | None = None, env: dict[str, str] | None = None,
                  ) -> AsyncIterator[tuple[DaemonProcess, MqttProbe]]:
    """The daemon against `tws` and `mosquitto`, plus a probe that has seen it READY; the whole
    body bounded by TEST_BUDGET_S; the daemon stopped by PID (SIGTERM) and expected to exit 0."""
    extra = {"RISK_LIMITS_FILE": str(limits)} if limits is not None else {}
    extra |= env or {}
    async with asyncio.timeout(TEST_BUDGET_S):
        d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                      tmp=tmp_path, extra_env=extra)
        try:
            async with MqttProbe(mosquitto.url, d.prefix) as agent:
                await agent.wait_topic("status", lambda s: s.get("state") == "online")
                await agent.wait_topic("portfolio", ready_snapshot)
                yield d, agent
            rc = await d.terminate(timeout=15.0)
            assert rc == 0, "\n".join(d.raw[-30:])
        finally:
            await d.kill()


async def operator(d: DaemonProcess, *args: str, timeout: float = 15.0) -> tuple[int, Any]:
    """`python run.py <args>` against the daemon's broker and prefix: (exit code, JSON out)."""
    rc, out, err = await run_cli(d, *args, timeout=timeout)
    try:
        payload = json.loads(out) if out.strip() else None
    except ValueError:
        payload = out
    return rc, payload if payload is not None else err


async def orders_by_ref(tws: PaperTWSHandle, refs: set[str] | None = None) -> dict[str, list[dict]]:
    """orderRef -> the paper TWS's orders carrying it (every leg of a bracket)."""
    out: dict[str, list[dict]] = {}
    for o in (await tws.state())["orders"]:
        ref = o.get("orderRef")
        if ref and (refs is None or ref in refs):
            out.setdefault(ref, []).append(o)
    return out


async def wait_for_tws(tws: PaperTWSHandle, pred: Callable[[dict[str, Any]], bool],
                       timeout: float = 10.0) -> dict[str, Any]:
    """Poll the paper TWS's state (another process) until `pred` holds."""
    async with asyncio.timeout(timeout):
        while True:
            st = await tws.state()
            if pred(st):
                return st
            await asyncio.sleep(0.05)


async def decisions(agent: MqttProbe, wanted: dict[str, str], timeout: float = 15.0
                    ) -> dict[str, dict[str, Any]]:
    """proposal_id -> its first decision, for `wanted` (proposal_id -> agent_id)."""
    got: dict[str, dict[str, Any]] = {}

    def count(expected: set[str]) -> Callable[[Any], bool]:
        def pred(p: Any) -> bool:
            if isinstance(p, dict) and p.get("proposal_id") in expected:
                got.setdefault(p["proposal_id"], p)
            return expected <= got.keys()
        return pred

    async with asyncio.timeout(timeout):
        for agent_id in dict.fromkeys(wanted.values()):
            expected = {pid for pid, a in wanted.items() if a == agent_id}
            await agent.wait_topic(f"decisions/{agent_id}", count(expected),
                                   timeout=timeout)
    return got


# ============================================================================ 1. gateway restart


async def test_fail_closed_across_a_gateway_restart(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        before = _pid("before")
        await agent.propose(AGENT, resting(before))
        assert (await agent.decision(AGENT, before))["verdict"] == "approved"

        mark = agent.mark()
        await tws.restart(downtime=2.0)
        await agent.wait_topic("portfolio", lambda s: s.get("connection") != "ready",
                               since=mark, timeout=5)
        during = _pid("during")
        await agent.propose(AGENT, resting(during))
        dec = await agent.decision(AGENT, during)
        assert dec["verdict"] == "rejected", dec
        assert codes(dec) and codes(dec) <= FAIL_CLOSED_CODES, dec
        assert codes(dec) == {"BROKER_DISCONNECTED"}, dec   # decided with the gateway down
        assert dec.get("order_ids") is None
        assert not (await tws.get("/health"))["up"], "the downtime ended before the decision"

        # back up: the daemon reconnects, reconciles and is READY again -> approvals again
        await tws.wait_up(timeout=5)
        back = agent.mark()
        await agent.wait_topic("portfolio", ready_snapshot, since=back, timeout=10)
        after = _pid("after")
        await agent.propose(AGENT, resting(after))
        dec = await agent.decision(AGENT, after)
        assert dec["verdict"] == "approved", dec
        placed = await orders_by_ref(tws, {before, during, after})
        assert during not in placed
        assert len(placed[after]) == 3 and len(placed[before]) == 3  # kept across the restart
    story = [e for e in d.logs
             if e.get("proposal_id") == during and e.get("event") == "risk_decision"]
    assert story and story[0]["verdict"] == "rejected"


# ============================================================================ 2. 1100 / 1102


async def test_connectivity_lost_1100_rejects_until_1102(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        mark = agent.mark()
        assert (await tws.inject(1100))["clients"] >= 1
        await agent.wait_topic("portfolio", lambda s: s.get("connection") == "connectivity_lost",
                               since=mark, timeout=5)
        lost = _pid("lost")
        await agent.propose(AGENT, resting(lost))
        dec = await agent.decision(AGENT, lost)
        assert dec["verdict"] == "rejected", dec
        assert codes(dec) == {"BROKER_CONNECTIVITY_LOST"}, dec

        mark = agent.mark()
        await tws.inject(1102)
        await agent.wait_topic("portfolio", ready_snapshot, since=mark, timeout=10)
        restored = _pid("restored")
        await agent.propose(AGENT, resting(restored))
        dec = await agent.decision(AGENT, restored)
        assert dec["verdict"] == "approved", dec
        placed = await orders_by_ref(tws, {lost, restored})
        assert lost not in placed and len(placed[restored]) == 3
    states = [(e.get("new"), e.get("code")) for e in d.logs
              if e.get("event") == "ib_connection_state"]
    assert ("connectivity_lost", 1100) in states and ("ready", 1102) in states, states


async def test_pnl_stays_fresh_after_1102(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    limits = write_limits(tmp_path / "limits.toml", {"max_snapshot_age_s": 3.0})  # heartbeat 2 s
    async with running(mosquitto, tws, tmp_path, limits=limits) as (d, agent):
        mark = agent.mark()
        await tws.inject(1100)
        await agent.wait_topic("portfolio", lambda s: s.get("connection") == "connectivity_lost",
                               since=mark, timeout=5)
        mark = agent.mark()
        await tws.inject(1102)
        ready = await agent.wait_topic("portfolio", ready_snapshot, since=mark, timeout=10)
        # a quiet market (no price moves) for longer than max_snapshot_age_s
        await agent.wait_topic("portfolio", lambda s: _ts(s["ts"]) - _ts(ready["ts"]) > 4.0,
                               since=agent.mark(), timeout=10)
        quiet = _pid("quiet")
        await agent.propose(AGENT, resting(quiet))
        dec = await agent.decision(AGENT, quiet)
        assert dec["verdict"] == "approved", dec


# ============================================================================ 3. automatic HALT


async def test_daily_loss_halts_by_itself_end_to_end(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    # BUY 10 @ 230, stop 210: worst case 10 x (20 + 2 ticks) = 200.2 fits a 250 daily limit;
    # a gap to 200 fills the stop at ~200: a loss of ~300, past the limit
    limits = write_limits(tmp_path / "limits.toml", {"daily_loss_limit": 250.0})
    async with running(mosquitto, tws, tmp_path, limits=limits) as (d, agent):
        pid = _pid("loser")
        await agent.propose(AGENT, resting(pid, limit_price=230.00, take_profit=250.00,
                                           stop_loss=210.00))
        assert (await agent.decision(AGENT, pid))["verdict"] == "approved"
        await agent.wait_topic(f"orders/{AGENT}", lambda m: m.get("type") == "fill"
                               and m["proposal_id"] == pid and m["leg"] == "entry")

        await tws.set_price("AAPL", 200.00)
        halted = await agent.wait_topic(
            "events", lambda e: e.get("type") == "trading_state" and e.get("new") == "HALTED")
        assert halted["by"] == "auto" and halted["old"] == "ACTIVE", halted
        assert "loss limit" in halted["reason"], halted
        snap = await agent.wait_topic("portfolio", lambda s: (s["pnl"]["daily"] or 0) <= -250.0)
        assert snap["pnl"]["daily"] <= -250.0

        blocked = _pid("blocked")
        await agent.propose(AGENT, resting(blocked))
        dec = await agent.decision(AGENT, blocked)
        assert dec["verdict"] == "rejected" and codes(dec) == {"TRADING_HALTED"}, dec

        # resume is honoured (ACTIVE is published), but the loss is still past the limit, so the
        # next snapshot HALTs again: automatic transitions only tighten (agents/risk.py on_snapshot)
        mark = agent.mark()
        rc, out = await operator(d, "resume", "--reason", "try again")
        assert rc == 0 and out["new"] == "ACTIVE" and out["by"] == "operator", out
        again = await agent.wait_topic(
            "events", lambda e: e.get("type") == "trading_state" and e.get("new") == "HALTED",
            since=mark)
        assert again["by"] == "auto" and again["old"] == "ACTIVE", again

        # the way out: a larger daily limit (SIGHUP), then resume; it stays ACTIVE
        write_limits(limits, {"daily_loss_limit": 5000.0})
        d.proc.send_signal(signal.SIGHUP)
        await d.wait_log(lambda e: e.get("event") == "limits_reloaded")
        rc, out = await operator(d, "resume")
        assert rc == 0 and out["new"] == "ACTIVE", out
        mark = agent.mark()
        for _ in range(2):   # two snapshots after the resume: no automatic HALT any more
            await agent.wait_topic("portfolio", lambda _: True, since=agent.mark(), timeout=5)
        ok = _pid("ok")
        await agent.propose(AGENT, resting(ok))
        assert (await agent.decision(AGENT, ok))["verdict"] == "approved"
        assert not [e for t, e, _ in agent.messages[mark:] if t == "events"
                    and e.get("new") == "HALTED"]
    halts = [e for e in d.logs
             if e.get("event") == "trading_state_changed" and e.get("new") == "HALTED"]
    assert [e["by"] for e in halts] == ["auto", "auto"], halts


# ============================================================================ 4. operator commands


async def test_operator_halt_reduce_resume(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        held = _pid("held")
        await agent.propose(AGENT, marketable(held))
        assert (await agent.decision(AGENT, held))["verdict"] == "approved"
        await agent.wait_topic("portfolio", lambda s: any(
            p["symbol"] == "AAPL" and p["quantity"] == 10 for p in s.get("positions", [])))

        # --- halt (CLI): the event, and every proposal rejected TRADING_HALTED
        rc, out = await operator(d, "halt", "--reason", "x")
        assert rc == 0, out
        assert out["new"] == "HALTED" and out["by"] == "operator" and "x" in out["reason"], out
        ev = await agent.wait_topic("events", lambda e: e.get("new") == "HALTED")
        assert ev["old"] == "ACTIVE"
        for proposal in (resting(_pid("h-buy")),
                         resting(_pid("h-sell"), side="SELL", quantity=5, limit_price=240.0,
                                 take_profit=230.0, stop_loss=242.0)):
            await agent.propose(AGENT, proposal)
            dec = await agent.decision(AGENT, proposal["proposal_id"])
            assert dec["verdict"] == "rejected" and codes(dec) == {"TRADING_HALTED"}, dec

        # --- reduce: only what shrinks the long 10 AAPL is admitted
        rc, out = await operator(d, "reduce", "--reason", "wind down")
        assert rc == 0 and out["new"] == "REDUCING" and out["old"] == "HALTED", out
        grow = _pid("r-buy")
        await agent.propose(AGENT, resting(grow))
        dec = await agent.decision(AGENT, grow)
        assert dec["verdict"] == "rejected" and "REDUCING_ONLY" in codes(dec), dec
        shrink = _pid("r-sell")   # SELL 5 at 240 (rests above the market): shrinks the long
        await agent.propose(AGENT, resting(shrink, side="SELL", quantity=5, limit_price=240.0,
                                           take_profit=230.0, stop_loss=242.0))
        dec = await agent.decision(AGENT, shrink)
        assert dec["verdict"] == "approved", dec
        flip = _pid("r-flip")     # SELL 6 more: with 5 already pending only 5 are reducible
        await agent.propose(AGENT, resting(flip, side="SELL", quantity=6, limit_price=240.0,
                                           take_profit=230.0, stop_loss=242.0))
        dec = await agent.decision(AGENT, flip)
        assert dec["verdict"] == "rejected" and "REDUCING_ONLY" in codes(dec), dec
        reason = next(r for r in dec["reasons"] if r["code"] == "REDUCING_ONLY")
        assert reason["limit"] == 5.0 and reason["value"] == 6.0, reason

        # --- resume: ACTIVE, a BUY is approved again
        rc, out = await operator(d, "resume")
        assert rc == 0 and out["new"] == "ACTIVE", out
        buy = _pid("a-buy")
        await agent.propose(AGENT, resting(buy))
        assert (await agent.decision(AGENT, buy))["verdict"] == "approved"

        # --- a raw publish on {prefix}/control halts too
        mark = agent.mark()
        await agent.publish("control", {"action": "halt", "reason": "raw mqtt"})
        ev = await agent.wait_topic("events", lambda e: e.get("new") == "HALTED", since=mark)
        assert ev["by"] == "operator" and "raw mqtt" in ev["reason"], ev
        raw = _pid("raw")
        await agent.propose(AGENT, resting(raw))
        dec = await agent.decision(AGENT, raw)
        assert codes(dec) == {"TRADING_HALTED"}, dec

        placed = await orders_by_ref(tws)
        assert set(placed) == {held, shrink, buy}, sorted(placed)
    changes = [(e["old"], e["new"]) for e in d.logs if e.get("event") == "trading_state_changed"]
    assert changes == [("ACTIVE", "HALTED"), ("HALTED", "REDUCING"), ("REDUCING", "ACTIVE"),
                       ("ACTIVE", "HALTED")], changes


# ============================================================================ 5. SIGHUP


async def test_sighup_reloads_limits_and_keeps_them_on_a_bad_file(mosquitto, paper_tws_process,
                                                                  tmp_path):
    tws = paper_tws_process
    limits = write_limits(tmp_path / "limits.toml", {"max_order_quantity": 5000})
    async with running(mosquitto, tws, tmp_path, limits=limits) as (d, agent):
        big = _pid("big")
        await agent.propose(AGENT, resting(big, quantity=50))
        assert (await agent.decision(AGENT, big))["verdict"] == "approved"

        write_limits(limits, {"max_order_quantity": 20})
        d.proc.send_signal(signal.SIGHUP)
        line = await d.wait_log(lambda e: e.get("event") == "limits_reloaded")
        assert line["changed"] == ["max_order_quantity: 5000 -> 20"], line

        over = _pid("over")
        await agent.propose(AGENT, resting(over, quantity=50))
        dec = await agent.decision(AGENT, over)
        assert dec["verdict"] == "rejected" and codes(dec) == {"MAX_ORDER_QUANTITY"}, dec
        assert dec["reasons"][0]["limit"] == 20.0 and dec["reasons"][0]["value"] == 50.0

        # an invalid file (a typo'd key) keeps the old limits, says why, and the daemon serves on
        write_limits(limits, {"max_order_quantity": 5000, "max_order_quantiy": 1})
        d.proc.send_signal(signal.SIGHUP)
        failed = await d.wait_log(lambda e: e.get("event") == "limits_reload_failed")
        assert failed["level"] == "error" and "max_order_quantiy" in failed["error"], failed

        still = _pid("still")
        await agent.propose(AGENT, resting(still, quantity=50))
        dec = await agent.decision(AGENT, still)
        assert codes(dec) == {"MAX_ORDER_QUANTITY"} and dec["reasons"][0]["limit"] == 20.0, dec
        small = _pid("small")
        await agent.propose(AGENT, resting(small, quantity=20))
        assert (await agent.decision(AGENT, small))["verdict"] == "approved"
        assert d.proc.returncode is None
    assert [e.get("event") for e in d.logs].count("limits_reloaded") == 1


# ============================================================================ 6. concurrency


async def test_concurrent_burst_admits_exactly_the_limit(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    n_admitted = 5
    limits = write_limits(tmp_path / "limits.toml", {"max_open_brackets": n_admitted},
                          agents=[f"agent-{a}" for a in range(5)])   # five budgets
    async with running(mosquitto, tws, tmp_path, limits=limits) as (d, agent):
        wanted = {_pid(f"c{a}"): f"agent-{a}" for a in range(5) for _ in range(10)}   # 50
        async with asyncio.TaskGroup() as tg:
            for pid, agent_id in wanted.items():
                tg.create_task(agent.propose(agent_id, resting(pid)))
        got = await decisions(agent, wanted)

        approved = {pid for pid, dec in got.items() if dec["verdict"] == "approved"}
        rejected = {pid: dec for pid, dec in got.items() if dec["verdict"] != "approved"}
        assert len(approved) == n_admitted, {pid: codes(dec) for pid, dec in got.items()}
        assert all(codes(dec) == {"MAX_OPEN_BRACKETS"} for dec in rejected.values()), rejected
        assert all(dec["reasons"][0]["limit"] == n_admitted for dec in rejected.values())

        st = await wait_for_tws(tws, lambda s: len({o["orderRef"] for o in s["orders"]
                                                    if o.get("orderRef") in wanted}) >= n_admitted)
        placed = await orders_by_ref(tws, set(wanted))
        assert set(placed) == approved, (sorted(placed), sorted(approved))
        assert all(len(legs) == 3 for legs in placed.values())
        assert all(o["status"] not in ("Filled", "Cancelled", "Inactive")
                   for legs in placed.values() for o in legs), st["orders"][-3:]


# ============================================================================ 7. rate limits


async def test_rate_limits_keep_the_gateway_under_pacing(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    # room for every bracket, so only the rate limits decide: each agent's bucket (burst 5,
    # 1/s) and the IB pacer's headroom (a bracket is a what-if + 3 legs = 4 messages)
    limits = write_limits(tmp_path / "limits.toml", {"max_open_brackets": 200},
                          {"max_open_brackets": 100, "proposal_burst": 5,
                           "max_proposals_per_s": 1.0},
                          agents=["flood", *(f"wide-{a}" for a in range(8))])  # nine budgets
    async with running(mosquitto, tws, tmp_path, limits=limits) as (d, agent):
        wanted = {_pid("flood"): "flood" for _ in range(15)}
        wanted |= {_pid(f"w{a}"): f"wide-{a}" for a in range(8) for _ in range(4)}   # 32
        async with asyncio.TaskGroup() as tg:
            for pid, agent_id in wanted.items():
                tg.create_task(agent.propose(agent_id, resting(pid)))
        got = await decisions(agent, wanted)

        approved = {pid for pid, dec in got.items() if dec["verdict"] == "approved"}
        limited = {pid: dec for pid, dec in got.items() if dec["verdict"] != "approved"}
        assert all(codes(dec) == {"RATE_LIMITED"} for dec in limited.values()), limited
        fields = {pid: dec["reasons"][0]["field"] for pid, dec in limited.items()}
        # the buckets refill while the burst is decided: bound by how long deciding it took
        stamps = [_ts(dec["ts"]) for dec in got.values()]
        refill_s = math.ceil(max(stamps) - min(stamps))
        # the flooding agent: its burst of 5 (+1 a second), every other one RATE_LIMITED
        flood_limited = [pid for pid in fields if wanted[pid] == "flood"
                         and fields[pid] == "proposals_per_s"]
        assert 10 - refill_s <= len(flood_limited) <= 10, fields
        # the IB pacer (IB_MAX_MSGS_PER_S 40, burst 4): an approval promises its 4 messages
        # within 2.5 s (half the what-if deadline), so (4 + 40 x 2.5) / 4 = 26 brackets at once
        # (+10 a second); the rest RATE_LIMITED, and IB's pacing (50/s) is never reached
        assert any(f == "ib_pacer_headroom" for f in fields.values()), fields
        assert 1 <= len(approved) <= 26 + math.ceil(10 * refill_s), (len(approved), refill_s)

        placed: dict[str, list[dict]] = {}
        async with asyncio.timeout(10):
            while set(placed) != approved or any(len(v) != 3 for v in placed.values()):
                placed = await orders_by_ref(tws, set(wanted))
                await asyncio.sleep(0.05)
        assert set(placed) == approved
    pacing = [e for e in d.logs if e.get("code") in (100, "100")]
    assert not pacing, pacing[:3]
    assert not [e for e in d.logs if e.get("event") == "placement_failed"]


# ============================================================================ retained status


async def test_retained_status_follows_the_trading_state(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        rc, out = await operator(d, "halt", "--reason", "first")
        assert rc == 0 and out["new"] == "HALTED", out
        try:
            # a fresh subscriber reads the retained status
            async with MqttProbe(mosquitto.url, d.prefix) as watcher:
                st = await watcher.wait_topic("status", timeout=5)
                assert st["trading_state"] == "HALTED", st
            # already HALTED: no event; the CLI then trusts the retained status
            rc, out = await operator(d, "halt", "--reason", "again", "--timeout", "1")
            assert rc == 0, out
        finally:
            await operator(d, "resume")
