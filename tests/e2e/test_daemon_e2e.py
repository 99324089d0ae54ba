"""End to end: mosquitto + the paper TWS (`python run.py sim`) + the daemon (`python run.py`),
all as real processes on loopback, driven by a plain MQTT client playing a strategy agent."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.fixtures.daemon import DaemonProcess, MqttProbe, stock_bracket as bracket

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


async def test_proposal_to_bracket_to_take_profit(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url, tmp=tmp_path)
    try:
        async with MqttProbe(mosquitto.url, d.prefix) as agent:
            status = await agent.wait_topic("status", lambda s: s.get("state") == "online")
            assert status["mode"] == "paper" and status["connection"] == "ready"

            # --- an approved proposal becomes a bracket with orderRef = proposal_id on every leg
            pid = f"e2e-{uuid.uuid4().hex[:8]}"
            await agent.propose("alpha", bracket(pid))
            dec = await agent.decision("alpha", pid)
            assert dec["verdict"] == "approved", dec
            ids = dec["order_ids"]
            st = await tws.state()
            legs = {o["orderId"]: o for o in st["orders"] if o.get("orderRef") == pid}
            assert set(legs) == {ids["entry"], ids["take_profit"], ids["stop_loss"]}
            assert legs[ids["take_profit"]]["parentId"] == ids["entry"]
            assert legs[ids["stop_loss"]]["parentId"] == ids["entry"]

            # --- the entry fills; the retained portfolio shows the position and P&L
            await tws.set_price("AAPL", 228.80)
            await agent.wait_topic("orders/alpha", lambda m: m.get("type") == "fill"
                                   and m["proposal_id"] == pid and m["leg"] == "entry")
            snap = await agent.wait_topic("portfolio", lambda s: any(
                p["symbol"] == "AAPL" and p["quantity"] == 10 for p in s.get("positions", []))
                and s["pnl"]["daily"] is not None)
            assert snap["reconciled"] is True

            # --- the take-profit fills and the stop is cancelled
            await tws.set_price("AAPL", 235.20)
            await agent.wait_topic("orders/alpha", lambda m: m.get("type") == "order_event"
                                   and m["proposal_id"] == pid and m["leg"] == "stop_loss"
                                   and m["status"] == "Cancelled")
            fills = [m for m in agent.on("orders/alpha") if m.get("type") == "fill" and m["proposal_id"] == pid]
            assert {f["leg"] for f in fills} == {"entry", "take_profit"}
            await agent.wait_topic("portfolio", lambda s: all(
                p["quantity"] == 0 for p in s.get("positions", []) if p["symbol"] == "AAPL"))

            # --- a rejected proposal places nothing
            rid = f"rej-{uuid.uuid4().hex[:8]}"
            await agent.propose("alpha", bracket(rid, stop_loss=231.0))   # stop above a BUY entry
            dec = await agent.decision("alpha", rid)
            assert dec["verdict"] == "rejected"
            assert "BRACKET_GEOMETRY" in {r["code"] for r in dec["reasons"]}
            st = await tws.state()
            assert not [o for o in st["orders"] if o.get("orderRef") == rid]

            # --- garbage gets `invalid`, and the daemon keeps serving
            for junk in (b"not json", b"[1, 2]", json.dumps(bracket("bad-1", quantity="ten")),
                         json.dumps(bracket("bad-2", limit_price=-5)),
                         '{"proposal_id": "bad-3", "limit_price": NaN}', b"x" * 100_000):
                await agent.propose("alpha", junk)
            invalid = await agent.wait_topic("decisions/alpha", lambda m: m.get("proposal_id") == "bad-3")
            assert invalid["verdict"] == "invalid"
            await agent.wait_topic("decisions/alpha", lambda m: len(
                [x for x in agent.on("decisions/alpha") if x.get("verdict") == "invalid"]) >= 6)
            verdicts = [m for m in agent.on("decisions/alpha") if m.get("verdict") == "invalid"]
            codes = {r["code"] for m in verdicts for r in m["reasons"]}
            assert {"MALFORMED_JSON", "VALIDATION_ERROR", "PAYLOAD_TOO_LARGE"} <= codes
            ok = f"after-{uuid.uuid4().hex[:8]}"
            await agent.propose("alpha", bracket(ok, limit_price=200.0, take_profit=210.0, stop_loss=196.0))
            assert (await agent.decision("alpha", ok))["verdict"] == "approved"

            # --- the same proposal again: the first decision, no second order
            await agent.propose("alpha", bracket(ok, limit_price=200.0, take_profit=210.0, stop_loss=196.0))
            await agent.wait_topic("decisions/alpha", lambda m: m.get("proposal_id") == ok and
                                   len([x for x in agent.on("decisions/alpha") if x.get("proposal_id") == ok]) >= 2)
            st = await tws.state()
            assert len([o for o in st["orders"] if o.get("orderRef") == ok]) == 3

        # --- SIGTERM: clean stop, exit 0, status offline
        rc = await d.terminate()
        assert rc == 0, "\n".join(d.raw[-30:])
        async with MqttProbe(mosquitto.url, d.prefix) as watcher:
            st = await watcher.wait_topic("status")
            assert st["state"] == "offline"
    finally:
        await d.kill()

    # every log line is one JSON object, and one proposal's story is found by its id
    assert all(e.get("event") != "_non_json" for e in d.logs), [e for e in d.logs if e.get("event") == "_non_json"][:3]
    story = [e for e in d.logs if e.get("proposal_id") == pid]
    events = {e["event"] for e in story}
    assert {"bracket_placed", "fill", "order_event"} <= events, events
    assert all(e.get("agent_id") == "alpha" for e in story if e["event"] in ("fill", "order_event"))


async def test_unreachable_gateway_exits_nonzero(mosquitto, tmp_path, unused_port):
    d = await DaemonProcess.spawn(ib_host="127.0.0.1", ib_port=unused_port, mqtt_url=mosquitto.url,
                                  tmp=tmp_path, wait_ready=False)
    rc = await d.wait_exit(30)
    assert rc == 3
    assert any(e.get("event") == "ib_unreachable" for e in d.logs)


async def test_unreachable_broker_exits_nonzero(paper_tws_process, tmp_path, unused_port):
    tws = paper_tws_process
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=f"mqtt://127.0.0.1:{unused_port}",
                                  tmp=tmp_path, wait_ready=False)
    rc = await d.wait_exit(30)
    assert rc == 4
    assert any(e.get("event") == "mqtt_unreachable" for e in d.logs)


async def test_live_port_refused_without_opt_in(tmp_path):
    d = await DaemonProcess.spawn(ib_host="127.0.0.1", ib_port=4001, mqtt_url="mqtt://127.0.0.1:1",
                                  tmp=tmp_path, wait_ready=False)
    rc = await d.wait_exit(30)
    assert rc == 2
    assert any(e.get("event") == "config_invalid" and "LIVE" in e.get("error", "") for e in d.logs)
