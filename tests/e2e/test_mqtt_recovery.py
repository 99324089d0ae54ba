"""Issue #5, MQTT side: no proposal lost and none doubled across broker and daemon restarts.

mosquitto, the paper TWS (`python run.py sim`) and the daemon (`python run.py`) run as real
processes on loopback. The agent is written as real agents are: a persistent session (fixed
client id, clean_session=False), QoS 1, and every proposal not yet acknowledged (PUBACK) is
published again after a reconnect — so the daemon sees some twice, and must answer them once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bracketgate.adapters.journal import Journal
from bracketgate.bus.messages import TradeProposal
from tests.fixtures.daemon import REPO, DaemonProcess
from tests.fixtures.resilient_agent import ResilientAgent, bracket, roomy_limits

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

DECIDED = ("approved", "rejected")


def one_verdict_each(agent: ResilientAgent, pids: list[str]) -> dict[str, dict[str, Any]]:
    """Every proposal has a decision, approved or rejected; repeats are identical copies."""
    lost = [p for p in pids if p not in agent.decisions]
    assert not lost, f"lost: {lost}"
    differing = {p: ds for p, ds in agent.decisions.items() if any(d != ds[0] for d in ds)}
    assert not differing, f"decisions that differ for one proposal_id: {differing}"
    strangers = set(agent.decisions) - set(pids)
    assert not strangers, strangers
    first = {p: agent.decisions[p][0] for p in pids}
    verdicts = Counter(d["verdict"] for d in first.values())
    assert set(verdicts) <= set(DECIDED), verdicts
    return first


async def orders_once(tws: Any, first: dict[str, dict[str, Any]]) -> None:
    """At the paper TWS: three legs for each approved bracket, with its order ids; none else."""
    orders = (await tws.state())["orders"]
    by_ref = Counter(o.get("orderRef") for o in orders)
    for pid, decision in first.items():
        if decision["verdict"] == "approved":
            ids = decision["order_ids"]
            legs = {o["orderId"] for o in orders if o.get("orderRef") == pid}
            want = {ids["entry"], ids["take_profit"], ids["stop_loss"]}
            assert by_ref[pid] == 3 and legs == want, (pid, by_ref[pid], legs, ids)
        else:
            assert by_ref[pid] == 0, (pid, decision)


async def journaled_proposals(tmp: Path) -> Counter[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "run.py"), "journal", "--path", str(tmp / "journal.sqlite"),
        "--kind", "proposal", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return Counter(json.loads(line)["proposal_id"] for line in out.decode().splitlines())


async def journal_undecided(path: Path, agent_id: str, pid: str) -> None:
    """What a daemon killed between acknowledging a proposal and deciding it leaves behind."""
    journal = await Journal.open(path)
    try:
        proposal = TradeProposal.model_validate(bracket(pid) | {"agent_id": agent_id})
        await journal.record("proposal", proposal_id=pid, agent_id=agent_id, payload=proposal,
                             durable=True)
    finally:
        await journal.close()


async def test_broker_restarts_lose_and_double_nothing(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    limits = roomy_limits(tmp_path)
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                  tmp=tmp_path, extra_env={"RISK_LIMITS_FILE": str(limits)})
    pids = [f"r{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(60)]
    try:
        async with ResilientAgent(mosquitto.url, d.prefix) as agent:

            async def stream() -> None:
                for pid in pids:
                    agent.propose(pid)
                    await asyncio.sleep(0.04)

            async def restarts() -> None:
                for _ in range(5):
                    await asyncio.sleep(0.35)
                    await asyncio.to_thread(mosquitto.restart)  # SIGTERM (saves its state), start

            await asyncio.gather(stream(), restarts())
            await agent.decided(pids, timeout=30)
            first = one_verdict_each(agent, pids)
            await orders_once(tws, first)
            assert agent.connects >= 6  # it did live through every restart
            approved = [p for p in pids if first[p]["verdict"] == "approved"]
            assert approved, Counter(d["verdict"] for d in first.values())
            reconnects = [e for e in d.logs if e.get("event") == "mqtt_connected"]
            assert len(reconnects) >= 6
        assert await d.terminate() == 0
        journal = await journaled_proposals(tmp_path)
        assert journal == Counter({p: 1 for p in pids}), journal
    finally:
        await d.kill()


async def test_proposals_published_while_the_daemon_is_down_are_decided(
        mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    env = {"RISK_LIMITS_FILE": str(roomy_limits(tmp_path))}

    async def spawn(prefix: str | None = None) -> DaemonProcess:
        return await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                         tmp=tmp_path, prefix=prefix, extra_env=env)

    d = await spawn()
    prefix = d.prefix   # the same MQTT client id (bg-{prefix}) and journal file every time
    up, stopped = ["up-0"], [f"stopped-{i}" for i in range(5)]
    killed = [f"killed-{i}" for i in range(5)]
    try:
        async with ResilientAgent(mosquitto.url, prefix) as agent:
            agent.propose("up-0")
            await agent.decided(up)

            assert await d.terminate() == 0            # clean stop (SIGTERM)
            for pid in stopped:
                agent.propose(pid)
            await agent.wait(lambda: not agent.unacked)  # the broker holds them for the daemon
            d = await spawn(prefix)
            await agent.decided(stopped)

            await d.kill()                              # crash (SIGKILL)
            for pid in killed:
                agent.propose(pid)
            await agent.wait(lambda: not agent.unacked)
            # and one the dead daemon had journaled — so acknowledged — but not yet decided
            await journal_undecided(tmp_path / "journal.sqlite", "alpha", "acked-0")
            d = await spawn(prefix)
            await agent.decided(killed + ["acked-0"])

            # an agent re-publishing after the restarts gets the first decision, no new order
            before = {p: len(agent.decisions[p]) for p in ("up-0", "stopped-0", "killed-0")}
            for pid in before:
                agent.propose(pid)
            await agent.wait(lambda: all(len(agent.decisions[p]) > n for p, n in before.items()))
            pids = up + stopped + killed + ["acked-0"]
            first = one_verdict_each(agent, pids)
            assert {first[p]["verdict"] for p in pids} == {"approved"}, first
            await orders_once(tws, first)
        assert await d.terminate() == 0
    finally:
        await d.kill()
    journal = await journaled_proposals(tmp_path)
    assert journal == Counter({p: 1 for p in pids}), journal
