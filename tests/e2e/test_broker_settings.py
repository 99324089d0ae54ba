"""Issue 8, item 8: the shipped config/mosquitto.conf loses no proposal across broker restarts.

mosquitto (started with config/mosquitto.conf by tests/fixtures/mosquitto.py), the paper TWS
and the daemon run as processes on loopback. While the daemon is stopped, an agent publishes a
burst larger than mosquitto's default queue (1,000 messages per client) to the daemon's
persistent session; the broker is restarted (SIGTERM) twice while it holds them and once more
while the daemon drains them. Every proposal gets exactly one decision. With mosquitto's own
defaults the same burst loses what exceeds the queue, and a restart loses all of it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonProcess
from tests.fixtures.mosquitto import SHIPPED_CONF, MosquittoServer, binary_or_skip, render_conf
from tests.fixtures.resilient_agent import ResilientAgent, roomy_limits

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

BURST = 1_500            # > mosquitto's default max_queued_messages (1,000)


def cheap(pid: str) -> dict[str, Any]:
    """Valid, and rejected at once (reward/risk 0.25): the daemon decides a burst quickly."""
    return {"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 1,
            "order_type": "LMT", "limit_price": 200.0, "take_profit": 201.0, "stop_loss": 196.0}


def one_decision_each(agent: ResilientAgent, pids: list[str]) -> Counter[str]:
    lost = [p for p in pids if p not in agent.decisions]
    assert not lost, f"{len(lost)} lost, e.g. {lost[:5]}"
    differing = [p for p in pids if any(d != agent.decisions[p][0] for d in agent.decisions[p])]
    assert not differing, differing[:5]
    return Counter(agent.decisions[p][0]["verdict"] for p in pids)


def test_the_shipped_conf_is_what_the_fixture_runs(mosquitto: MosquittoServer) -> None:
    text = mosquitto.conf_path.read_text()
    for line in ("persistence true", f"persistence_location {mosquitto.workdir}/",
                 "autosave_interval 1", "autosave_on_changes false", "max_queued_messages 100000",
                 "max_inflight_messages 100", "queue_qos0_messages false", "set_tcp_nodelay true",
                 f"listener {mosquitto.port} 127.0.0.1"):
        assert f"\n{line}\n" in text, line
    with pytest.raises(ValueError):
        render_conf(SHIPPED_CONF.read_text(), {"no_such_directive": "1"})


async def test_a_burst_queued_while_the_daemon_is_down_survives_broker_restarts(
        mosquitto: MosquittoServer, paper_tws_process: Any, tmp_path: Path) -> None:
    tws = paper_tws_process
    env = {"RISK_LIMITS_FILE": str(roomy_limits(tmp_path))}

    async def spawn(prefix: str | None = None) -> DaemonProcess:
        return await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                         tmp=tmp_path, prefix=prefix, extra_env=env)

    d = await spawn()
    prefix = d.prefix                      # the same MQTT client id (bg-{prefix}) every time
    burst = [f"burst-{i:04d}" for i in range(BURST)]
    try:
        async with ResilientAgent(mosquitto.url, prefix) as agent:
            agent.propose("warm-0", cheap("warm-0"))
            await agent.decided(["warm-0"])        # the daemon's session and subscription exist
            assert await d.terminate() == 0
            for pid in burst:
                agent.propose(pid, cheap(pid))
            await agent.wait(lambda: not agent.unacked, timeout=20)   # the broker holds them all
            for _ in range(2):
                await asyncio.to_thread(mosquitto.restart)   # SIGTERM: saved; start: reloaded
            d = await spawn(prefix)
            await asyncio.to_thread(mosquitto.restart)       # and once while the daemon drains
            await agent.decided(burst, timeout=25)
            verdicts = one_decision_each(agent, burst)
            assert set(verdicts) == {"rejected"}, verdicts
            assert sum(e.get("event") == "mqtt_connected" for e in d.logs) >= 2  # lived through it
        assert await d.terminate() == 0
    finally:
        await d.kill()
    dropped = [line for line in mosquitto.log_lines if "dropped" in line.lower()]
    assert not dropped, dropped[:3]


@pytest.mark.parametrize("restarts,lost_at_least", [(0, BURST - 1_000 - 20), (1, BURST)])
async def test_mosquittos_defaults_lose_the_same_burst(paper_tws_process: Any, tmp_path: Path,
                                                       restarts: int, lost_at_least: int) -> None:
    """The control: no persistence, 1,000 queued messages per client (20 more in flight)."""
    broker = MosquittoServer(binary_or_skip(), tmp_path / "mosquitto", profile="defaults")
    broker.start()
    tws = paper_tws_process
    env = {"RISK_LIMITS_FILE": str(roomy_limits(tmp_path))}

    async def spawn(prefix: str | None = None) -> DaemonProcess:
        return await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=broker.url,
                                         tmp=tmp_path, prefix=prefix, extra_env=env)

    d = await spawn()
    burst = [f"burst-{i:04d}" for i in range(BURST)]
    try:
        async with ResilientAgent(broker.url, d.prefix) as agent:
            agent.propose("warm-0", cheap("warm-0"))
            await agent.decided(["warm-0"])
            assert await d.terminate() == 0
            for pid in burst:
                agent.propose(pid, cheap(pid))
            await agent.wait(lambda: not agent.unacked, timeout=20)   # PUBACKed, every one
            for _ in range(restarts):
                await asyncio.to_thread(broker.restart)
            d = await spawn(d.prefix)
            # delivered in order: once this one is decided, every queued one that survived is
            agent.propose("sentinel", cheap("sentinel"))
            await agent.decided(["sentinel"], timeout=25)
            lost = [p for p in burst if p not in agent.decisions]
        assert await d.terminate() == 0
    finally:
        await d.kill()
        broker.stop()
    assert len(lost) >= lost_at_least, len(lost)
