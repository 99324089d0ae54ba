"""Issue 14: /metrics and /healthz scraped during a real run — mosquitto, the paper TWS and the
daemon as processes on loopback. The values move as proposals are decided and fills arrive;
/healthz answers 503 (with the reason) while the gateway restarts and 200 once reconciled; the
retained status and `run.py status` carry uptime, heartbeat round trip, reconnects, journal lag."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures.daemon import REPO, DaemonProcess, MqttProbe, run_cli, stock_bracket as bracket
from tests.fixtures.http import healthz, http_get, http_url_of, poll, scrape, value

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


async def test_metrics_and_health_move_with_the_run(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    await tws.set_price("AAPL", 230.0)
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                  tmp=tmp_path, extra_env={"HTTP_PORT": "0"})
    try:
        url = await http_url_of(tmp_path)          # paper mode, HTTP_PORT=0: a free port
        assert url.startswith("http://127.0.0.1:")
        assert json.loads((tmp_path / "endpoints.json").read_text())["mode"] == "paper"
        assert any(e.get("event") == "http_listening" and e.get("url") == url for e in d.logs)
        await poll(lambda: healthz(url), lambda r: r[0] == 200, 15, "/healthz ready")
        assert (await healthz(url))[1] == {"status": "ready"}
        before = await scrape(url)
        assert value(before, "bracketgate_ready") == 1
        assert value(before, "bracketgate_ib_connected") == 1
        assert value(before, "bracketgate_trading_state", state="ACTIVE") == 1
        assert value(before, "bracketgate_trading_state", state="HALTED") == 0
        assert value(before, "bracketgate_ib_connection_state", state="ready") == 1
        assert value(before, "bracketgate_ib_connection_state", state="disconnected") == 0
        assert value(before, "bracketgate_uptime_seconds") > 0

        async with MqttProbe(mosquitto.url, d.prefix) as agent:
            await agent.wait_topic("status", lambda s: s.get("state") == "online")
            pid, rid = f"m-{uuid.uuid4().hex[:8]}", f"r-{uuid.uuid4().hex[:8]}"
            await agent.propose("alpha", bracket(pid))
            await agent.propose("alpha", bracket(rid, stop_loss=231.0))   # stop above the entry
            assert (await agent.decision("alpha", pid))["verdict"] == "approved"
            assert (await agent.decision("alpha", rid))["verdict"] == "rejected"

            decided = await poll(lambda: scrape(url), lambda m: value(
                m, "bracketgate_decisions_total", verdict="rejected", code="BRACKET_GEOMETRY") == 1
                and value(m, "bracketgate_decisions_total", verdict="approved", code="none") == 1,
                10, "decisions counted")
            assert value(decided, "bracketgate_proposals_total") \
                - value(before, "bracketgate_proposals_total") == 2
            assert value(decided, "bracketgate_decision_latency_seconds_count") == 2
            assert value(decided, "bracketgate_decision_latency_seconds_sum") > 0
            assert value(decided, "bracketgate_placement_latency_seconds_count") == 1
            assert value(decided, "bracketgate_open_brackets", agent_id="alpha") == 1
            assert value(decided, "bracketgate_journal_write_seconds_count") \
                > value(before, "bracketgate_journal_write_seconds_count")
            assert value(decided, "bracketgate_ib_pacing_budget_used_ratio") >= 0
            assert value(decided, "bracketgate_fills_total") == 0

            # --- the entry fills: a fill counted, P&L follows the price
            await tws.set_price("AAPL", 228.80)
            await agent.wait_topic("orders/alpha", lambda m: m.get("type") == "fill"
                                   and m["proposal_id"] == pid and m["leg"] == "entry")
            filled = await poll(lambda: scrape(url),
                                lambda m: value(m, "bracketgate_fills_total") == 1, 10, "fill")
            await tws.set_price("AAPL", 231.00)
            moved = await poll(lambda: scrape(url), lambda m: value(
                m, "bracketgate_pnl_unrealized") > 15, 15, "unrealized P&L at 231")
            assert value(moved, "bracketgate_pnl_daily") != value(filled, "bracketgate_pnl_daily")
            assert value(moved, "bracketgate_open_brackets", agent_id="alpha") == 1

            # --- a gateway restart: 503 with the reason while down, 200 once reconciled
            await tws.restart(downtime=3.0)
            down = await poll(lambda: healthz(url), lambda r: r[0] == 503, 5, "503 while down")
            assert down[1]["status"] == "not_ready"
            assert down[1]["reason"] in {"BROKER_DISCONNECTED", "NOT_RECONCILED"}, down
            m = await scrape(url)
            assert value(m, "bracketgate_ready") == 0
            assert value(m, "bracketgate_ib_connection_state", state="ready") == 0
            reasons = {down[1]["reason"]}

            async def health_noting_reasons():
                status, body = await healthz(url)
                if status == 503:
                    reasons.add(body["reason"])
                return status, body

            await poll(health_noting_reasons, lambda r: r[0] == 200, 30, "200 after the restart")
            assert "BROKER_DISCONNECTED" in reasons, reasons
            back = await scrape(url)
            assert value(back, "bracketgate_ib_reconnects_total") >= 1
            assert value(back, "bracketgate_ib_connected") == 1
            assert value(back, "bracketgate_ready") == 1
            assert value(back, "bracketgate_mqtt_reconnects_total") == 0
            rtt = await poll(lambda: scrape(url), lambda m: 0 < value(
                m, "bracketgate_heartbeat_rtt_seconds") < 5, 10, "heartbeat round trip")
            assert value(rtt, "bracketgate_open_brackets", agent_id="alpha") == 1

            # --- the status: retained with the new fields, and `run.py status` shows them
            st = await agent.wait_topic("status", lambda s: (s.get("ib_reconnects") or 0) >= 1
                                        and s.get("state") == "online", timeout=30)
            assert st["uptime_s"] > 0 and st["started_at"] and st["mqtt_reconnects"] == 0
            assert st["heartbeat_rtt_ms"] is None or st["heartbeat_rtt_ms"] > 0
            assert st["http"] == url

        rc, out, err = await run_cli(d, "status")
        assert rc == 0, out + err
        assert " up=" in out and "reconnects=ib:1,mqtt:0" in out and f"http={url}" in out, out
        rc, out, _ = await run_cli(d, "status", "--json")
        assert json.loads(out)["status"]["ib_reconnects"] >= 1

        # --- SIGTERM: the endpoints file goes with the daemon
        assert await d.terminate() == 0
        assert not (tmp_path / "endpoints.json").exists()
    finally:
        await d.kill()


async def test_default_mode_serves_the_dashboard_on_a_free_port(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "MQTT_", "HTTP_"))}
    env.update({"PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json", "DATA_DIR": str(tmp_path / "data")})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "run.py"), cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    d = DaemonProcess(proc, "bracketgate", env)
    try:
        await d.wait_log(lambda e: e.get("event") == "ready", timeout=30)
        endpoints = json.loads((tmp_path / "data" / "endpoints.json").read_text())
        url = endpoints["http"]
        assert url.startswith("http://127.0.0.1:") and endpoints["mqtt_url"]
        await poll(lambda: healthz(url), lambda r: r[0] == 200, 15, "/healthz ready")
        status, page = await http_get(url, "/")
        assert status == 200 and b"<title>bracketgate</title>" in page
        m = await scrape(url)
        assert value(m, "bracketgate_ib_connected") == 1
        status, body = await http_get(url, "/api/state")
        state = json.loads(body)
        assert state["mode"] == "default" and state["connection"] == "ready" and state["ready"]
    finally:
        assert await d.terminate() == 0
    assert not (tmp_path / "data" / "endpoints.json").exists()
