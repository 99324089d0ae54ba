"""Who may trade, end to end (issue 10): the agents file and fair share, against real mosquitto,
the paper TWS (`python run.py sim`) and the daemon (`python run.py`).

Unknown and disabled agents refused with nothing placed; without an agents file every
unregistered agent_id shares one budget (`bud1` at its open-bracket limit refuses `bud2` too);
SIGHUP enabling / disabling an agent (an invalid file keeps the agents in force); a flooding
agent at ~250 proposals/s cannot starve a quiet agent's 1/s proposals.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_risk_e2e import (
    _pid,
    codes,
    decisions,
    orders_by_ref,
    resting,
    running,
    write_limits,
)
from bracketgate.bus.auth import sign
from tests.fixtures.daemon import MqttProbe

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

KEY = "e2e-agent-key-" + "x" * 16


def write_agents(path: Path, agents: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for agent_id, keys in agents.items():
        lines.append(f"[agents.{agent_id}]")
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                  for k, v in keys.items()]
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


async def test_unknown_and_disabled_agents_are_refused_and_nothing_placed(
        mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    agents = write_agents(tmp_path / "agents.toml",
                          {"alpha": {"key": KEY}, "off": {"enabled": False}})
    async with running(mosquitto, tws, tmp_path, env={"AGENTS_FILE": str(agents)}) as (d, probe):
        wanted = {_pid("u"): "stranger", _pid("d"): "off", _pid("a"): "alpha"}
        for pid, agent_id in wanted.items():
            if agent_id == "alpha":   # an agent with a key signs (bus/auth.py)
                topic = f"{d.prefix}/proposals/alpha"
                await probe.client.publish(topic, sign(KEY.encode(), topic,
                                                       json.dumps(resting(pid))), qos=1)
                continue
            await probe.propose(agent_id, resting(pid))
        got = await decisions(probe, wanted)
        by_agent = {wanted[pid]: dec for pid, dec in got.items()}
        assert codes(by_agent["stranger"]) == {"UNKNOWN_AGENT"}, by_agent["stranger"]
        assert codes(by_agent["off"]) == {"AGENT_DISABLED"}, by_agent["off"]
        assert by_agent["alpha"]["verdict"] == "approved", by_agent["alpha"]
        assert all(by_agent[a].get("order_ids") is None for a in ("stranger", "off"))
        await asyncio.sleep(0.5)        # anything placed would be at the paper TWS by now
        placed = await orders_by_ref(tws, set(wanted))
        assert set(placed) == {pid for pid, a in wanted.items() if a == "alpha"}, placed
    loaded = [e for e in d.logs if e.get("event") == "agents_loaded"]
    assert loaded and loaded[0]["agents"] == 2 and loaded[0]["enabled"] == 1
    assert KEY not in "\n".join(d.raw)     # the key never reaches a log line


async def test_unregistered_agent_ids_share_one_budget(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    # no agents file: bud1 and bud2 are not named in the limits file -> ONE [agent] budget
    limits = write_limits(tmp_path / "limits.toml", {"max_open_brackets": 50},
                          {"max_open_brackets": 3}, agents=["named"])
    async with running(mosquitto, tws, tmp_path, limits=limits) as (d, probe):
        first = {_pid("b1"): "bud1" for _ in range(3)}
        for pid in first:
            await probe.propose("bud1", resting(pid))
        assert all(dec["verdict"] == "approved" for dec in (await decisions(probe, first)).values())
        more = {_pid("b1x"): "bud1", _pid("b2"): "bud2", _pid("b3"): "bud3-invented"}
        for pid, agent_id in more.items():
            await probe.propose(agent_id, resting(pid))
        got = await decisions(probe, more)
        for pid, dec in got.items():    # a fresh id buys nothing: the one budget is full
            assert codes(dec) == {"MAX_OPEN_BRACKETS_AGENT"}, (more[pid], dec)
            assert dec["reasons"][0]["limit"] == 3
        named = _pid("n")
        await probe.propose("named", resting(named))    # a budget of its own
        assert (await probe.decision("named", named))["verdict"] == "approved"
        placed = await orders_by_ref(tws, set(first) | set(more) | {named})
        assert set(placed) == set(first) | {named}


async def test_sighup_enables_and_disables_an_agent(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    path = write_agents(tmp_path / "agents.toml", {"alpha": {"enabled": False}})
    async with running(mosquitto, tws, tmp_path, env={"AGENTS_FILE": str(path)}) as (d, probe):
        signing = False   # once the file gives alpha a key, alpha must sign (bus/auth.py)

        async def verdict(tag: str) -> dict[str, Any]:
            pid = _pid(tag)
            if signing:
                topic = f"{d.prefix}/proposals/alpha"
                await probe.client.publish(topic, sign(KEY.encode(), topic,
                                                       json.dumps(resting(pid))), qos=1)
            else:
                await probe.propose("alpha", resting(pid))
            return await probe.decision("alpha", pid)

        assert codes(await verdict("off")) == {"AGENT_DISABLED"}

        write_agents(path, {"alpha": {"enabled": True, "key": KEY}})
        d.proc.send_signal(signal.SIGHUP)
        line = await d.wait_log(lambda e: e.get("event") == "agents_reloaded")
        assert "agents.alpha.enabled: False -> True" in line["changes"], line
        assert "agents.alpha.key: changed" in line["changes"], line
        assert codes(await verdict("unsigned")) == {"AUTH_REQUIRED"}   # the key is in force
        signing = True
        assert (await verdict("on"))["verdict"] == "approved"

        path.write_text("[agents.alpha]\nenabled = true\nmax_open_brakets = 3\n")   # typo
        mark = len(d.logs)
        d.proc.send_signal(signal.SIGHUP)
        bad = await d.wait_log(lambda e: e.get("event") == "agents_reload_failed")
        assert "max_open_brakets" in bad["error"], bad
        assert (await verdict("kept"))["verdict"] == "approved"   # the old agents stay

        write_agents(path, {"alpha": {"enabled": False}})
        d.proc.send_signal(signal.SIGHUP)
        await d.wait_log(lambda e: e.get("event") == "agents_reloaded"
                         and any("True -> False" in c for c in e.get("changes", [])))
        signing = False   # the key is gone with it
        assert codes(await verdict("off-again")) == {"AGENT_DISABLED"}
        assert d.proc.returncode is None and len(d.logs) > mark
    assert KEY not in "\n".join(d.raw)


async def test_flooding_agent_cannot_starve_a_quiet_one(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    agents = write_agents(tmp_path / "agents.toml",
                          {"flood": {"max_open_brackets": 2}, "quiet": {}})
    async with running(mosquitto, tws, tmp_path, env={"AGENTS_FILE": str(agents)}) as (d, probe):
        async with MqttProbe(mosquitto.url, d.prefix) as flooder:
            flood_ids: list[str] = []
            quiet_ids: list[str] = []
            stop = asyncio.Event()

            async def flood() -> None:
                t0 = time.monotonic()
                while not stop.is_set():      # ~250/s: 10 every 40 ms
                    batch = [_pid("f") for _ in range(10)]
                    flood_ids.extend(batch)
                    await asyncio.gather(*(flooder.propose("flood", resting(p)) for p in batch))
                    await asyncio.sleep(max(0.0, t0 + len(flood_ids) / 250 - time.monotonic()))

            task = asyncio.create_task(flood())
            await asyncio.sleep(0.5)
            for _ in range(5):                # the quiet agent: 1/s while the flood runs
                pid = _pid("q")
                quiet_ids.append(pid)
                await probe.propose("quiet", resting(pid))
                await asyncio.sleep(1.0)
            stop.set()
            await task
            quiet = await decisions(probe, dict.fromkeys(quiet_ids, "quiet"))
            flood_got = await decisions(probe, dict.fromkeys(flood_ids, "flood"), timeout=20)
    assert [quiet[p]["verdict"] for p in quiet_ids] == ["approved"] * 5, \
        {p: codes(quiet[p]) for p in quiet_ids}
    flood_codes: dict[str, int] = {}
    for dec in flood_got.values():
        for c in codes(dec) or {"approved"}:
            flood_codes[c] = flood_codes.get(c, 0) + 1
    assert len(flood_ids) >= 1000, len(flood_ids)   # it did flood (~250/s for ~5 s)
    assert flood_codes.get("RATE_LIMITED", 0) >= 0.9 * len(flood_ids), flood_codes
    assert flood_codes.get("approved", 0) <= 2, flood_codes
