"""End to end, order files and `status` against real processes: mosquitto, the paper TWS
(`python run.py sim`) and the daemon (`python run.py`), driven by `python run.py orders FILE` and
`python run.py status` exactly as an operator types them.

Each row decided by the gate over MQTT, one JSON line per row; the same file run twice is decided
once (the paper TWS holds one bracket per row, not two); a dry run and a bad file send nothing;
policy-filled exits shown before sending; status summary / --json / exit codes online, degraded,
offline and no status at all.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_risk_e2e import orders_by_ref, ready_snapshot, running
from tests.fixtures.daemon import DaemonProcess, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

# AAPL is at 230 in the paper TWS: BUY at 200 rests (approved, placed, never fills)
CSV = """ticker,action,quantity,limit_price,take_profit,stop_loss
AAPL,BUY,10,200,,
AAPL,BUY,5,201.50,210,196
"""


async def cli(d: DaemonProcess, *args: str, timeout: float = 30.0,
              env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_cli(d, *args, timeout=timeout, env=env)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


async def test_an_order_file_is_decided_by_the_gate_once_even_run_twice(mosquitto, paper_tws_process,
                                                                        tmp_path: Path):
    tws = paper_tws_process
    f = tmp_path / "orders.csv"
    f.write_text(CSV)
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        # a dry run prints the proposals and sends nothing
        mark = agent.mark()
        rc, out, err = await cli(d, "orders", str(f), "--dry-run", "--agent", "pm")
        assert rc == 0, err
        planned = lines(out)
        ids = {p["proposal_id"] for p in planned}
        assert len(ids) == 2 and all(p["dry_run"] for p in planned)

        rc, out, err = await cli(d, "orders", str(f), "--agent", "pm")
        assert rc == 0, out + err
        first = lines(out)
        assert [x["row"] for x in first] == [1, 2]
        assert {x["proposal_id"] for x in first} == ids          # the dry run's ids, exactly
        assert all(x["decision"]["verdict"] == "approved" for x in first), first
        assert all(x["decision"]["order_ids"] for x in first), first
        # the policy's exits for row 1, shown on stderr before anything was sent
        shown = lines(err)
        assert shown == [{"row": 1, "proposal_id": first[0]["proposal_id"],
                          "filled_by_policy": ["take_profit", "stop_loss"],
                          "take_profit": 204.0, "stop_loss": 198.0}]
        assert (first[0]["proposal"]["take_profit"], first[0]["proposal"]["stop_loss"]) == (204.0, 198.0)
        # nothing of the dry run reached the gate: exactly one proposal per row on the bus
        sent = [p for t, p, _ in agent.messages[mark:] if t == "proposals/pm"]
        assert len(sent) == 2

        placed = await orders_by_ref(tws, ids)
        assert {ref: len(legs) for ref, legs in placed.items()} == {i: 3 for i in ids}

        # the same file again: each id answered with its first decision, no second order
        rc, out, err = await cli(d, "orders", str(f), "--agent", "pm")
        assert rc == 0, out + err
        again = lines(out)
        assert [x["decision"] for x in again] == [x["decision"] for x in first]
        assert await orders_by_ref(tws, ids) == placed
        assert len((await tws.state())["orders"]) == 6

        # a row the gate refuses: exit 1, every row still answered
        big = tmp_path / "big.json"
        big.write_text(json.dumps([{"ticker": "AAPL", "action": "BUY", "quantity": 6000, "limit_price": 200},
                                   {"ticker": "AAPL", "action": "BUY", "quantity": 1, "limit_price": 199}]))
        rc, out, err = await cli(d, "orders", str(big), "--agent", "pm")
        assert rc == 1, out + err
        got = lines(out)
        assert got[0]["decision"]["verdict"] == "rejected"
        assert "MAX_ORDER_QUANTITY" in {r["code"] for r in got[0]["decision"]["reasons"]}
        assert got[1]["decision"]["verdict"] == "approved"

        # a bad row: nothing of the file is sent, every bad row named
        bad = tmp_path / "bad.csv"
        bad.write_text("ticker,action,quantity,limit_price\nAAPL,BUY,3,198\nAAPL,BYU,3,198\nAAPL,BUY,3,\n")
        mark = agent.mark()
        before = len((await tws.state())["orders"])
        rc, out, err = await cli(d, "orders", str(bad), "--agent", "pm")
        assert rc == 2 and out == ""
        assert [(r["row"], r["field"]) for r in json.loads(err)["rows"]] == [(2, "action"), (3, "limit_price")]
        await asyncio.sleep(0.3)
        assert not [t for t, _, _ in agent.messages[mark:] if t.startswith("proposals/")]
        assert len((await tws.state())["orders"]) == before


async def test_status_summary_json_and_exit_codes(mosquitto, paper_tws_process, tmp_path: Path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        rc, out, err = await cli(d, "status")
        assert rc == 0, err
        assert len(out.splitlines()) == 1, out
        assert out.startswith("online mode=") and "trading=ACTIVE ib=ready positions=" in out
        assert "daily_pnl=" in out and "working_orders=" in out and " age=" in out

        rc, out, _ = await cli(d, "status", "--json")
        whole = json.loads(out)
        assert rc == 0 and whole["status"]["state"] == "online"
        assert whole["portfolio"]["account_values"], "--json carries all of the portfolio"

        # the gateway down: degraded, exit 1
        mark = agent.mark()
        await tws.restart(downtime=3.0)
        await agent.wait_topic("status", lambda s: s.get("state") == "degraded", since=mark, timeout=5)
        rc, out, _ = await cli(d, "status")
        assert rc == 1 and out.startswith("degraded"), out
        await tws.wait_up(timeout=6)
        back = agent.mark()
        await agent.wait_topic("portfolio", ready_snapshot, since=back, timeout=10)
        await agent.wait_topic("status", lambda s: s.get("state") == "online", since=back, timeout=10)

    # the daemon stopped (running() stops it and expects exit 0): retained status offline, exit 3
    rc, out, _ = await cli(d, "status", "--timeout", "1")
    assert rc == 3 and out.startswith("offline (clean shutdown)"), out
    rc, out, _ = await cli(d, "status", "--json", "--timeout", "1")
    assert rc == 3 and json.loads(out)["status"]["state"] == "offline"
    # a prefix no daemon ever used: no status at all, exit 3
    rc, out, _ = await cli(d, "status", "--timeout", "1", env={"MQTT_PREFIX": "nobody-here"})
    assert rc == 3 and out.startswith("offline: no status retained on nobody-here/status"), out


async def test_a_long_file_is_paced_to_the_buckets_and_signed_with_the_agents_key(
        mosquitto, paper_tws_process, tmp_path: Path):
    """8 rows against an agent bucket of 3: sent as fast as the bucket refills, none refused
    RATE_LIMITED; with keys in AGENTS_FILE each row is signed (an unsigned one is refused)."""
    from tests.e2e.test_agents_e2e import write_agents
    from tests.e2e.test_risk_e2e import write_limits

    tws = paper_tws_process
    limits = write_limits(tmp_path / "limits.toml", agent={"proposal_burst": 3, "max_proposals_per_s": 2.0,
                                                           "max_open_brackets": 20})
    agents = write_agents(tmp_path / "agents.toml", {"pm": {"key": "pm-e2e-key-" + "k" * 20}})
    env = {"AGENTS_FILE": str(agents)}
    f = tmp_path / "long.json"
    f.write_text(json.dumps([{"ticker": "AAPL", "action": "BUY", "quantity": 1, "limit_price": 200 + i}
                             for i in range(8)]))
    async with running(mosquitto, tws, tmp_path, limits=limits, env=env) as (d, agent):
        rc, out, err = await cli(d, "orders", str(f), "--agent", "pm", "--limits", str(limits), env=env)
        got = lines(out)
        assert rc == 0, out + err
        assert [x["decision"]["verdict"] for x in got] == ["approved"] * 8
        assert len(await orders_by_ref(tws, {x["proposal_id"] for x in got})) == 8

        # the same rows unsigned (no AGENTS_FILE for the CLI): refused, nothing placed
        other = tmp_path / "unsigned.json"
        other.write_text(json.dumps([{"ticker": "AAPL", "action": "BUY", "quantity": 1, "limit_price": 199}]))
        rc, out, err = await cli(d, "orders", str(other), "--agent", "pm", env={"AGENTS_FILE": ""})
        refused = lines(out)
        assert rc == 1 and refused[0]["decision"]["verdict"] != "approved", out + err
        assert {r["code"] for r in refused[0]["decision"]["reasons"]} == {"AUTH_REQUIRED"}
        assert not await orders_by_ref(tws, {refused[0]["proposal_id"]})
