"""End to end, bracket lifecycle commands (issue 13) against real processes: mosquitto, the paper
TWS (`python run.py sim --tick-interval 0`: prices move only through its control port) and the
daemon, driven by plain MQTT clients on {prefix}/commands/{agent_id}.

Break-even stop after a fill, a trail that locks a profit as the price moves, a partial then a
full close, another agent's command refused, cancel of an unfilled entry, cancel of a filled
one refused, command_id idempotency.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.e2e.test_risk_e2e import codes, marketable, orders_by_ref, resting, running, wait_for_tws
from tests.fixtures.daemon import MqttProbe

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

AGENT = "alpha"
OTHER = "beta"


def _cid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def command(probe: MqttProbe, agent: str, body: dict[str, Any], timeout: float = 15.0
                  ) -> dict[str, Any]:
    """Publish a command and wait for its answer (the decisions message with its command_id)."""
    body = {"command_id": _cid(body["action"]), **body}
    mark = probe.mark()
    await probe.publish(f"commands/{agent}", body)
    return await probe.wait_topic(
        f"decisions/{agent}",
        lambda d: isinstance(d, dict) and d.get("command_id") == body["command_id"],
        timeout, since=mark)


async def open_bracket(probe: MqttProbe, pid: str, proposal: dict[str, Any]) -> dict[str, Any]:
    await probe.propose(AGENT, proposal)
    dec = await probe.decision(AGENT, pid)
    assert dec["verdict"] == "approved", dec
    return dec


def legs_of(tws_orders: list[dict]) -> dict[int, dict]:
    return {o["orderId"]: o for o in tws_orders}


async def test_break_even_stop_then_partial_and_full_close(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        pid = f"be-{uuid.uuid4().hex[:8]}"
        dec = await open_bracket(agent, pid, marketable(pid))
        ids = dec["order_ids"]
        await agent.wait_topic(f"orders/{AGENT}", lambda m: m.get("type") == "fill"
                               and m.get("proposal_id") == pid and m.get("leg") == "entry")
        # break-even: the stop moves up to the entry price (a tighter stop: always allowed)
        ans = await command(agent, AGENT, {"action": "amend", "proposal_id": pid, "stop_loss": 230.0})
        assert ans["verdict"] == "accepted", json.dumps(ans)
        assert ans["legs"]["stop_loss"]["stop_price"] == pytest.approx(230.0)
        assert ans["position"] == pytest.approx(10.0)
        st = await wait_for_tws(tws, lambda s: any(o["orderId"] == ids["stop_loss"]
                                                   and o.get("auxPrice") == pytest.approx(230.0)
                                                   for o in s["orders"]))
        assert st

        # partial close: 4 at market, the children shrink to the 6 left
        ans = await command(agent, AGENT, {"action": "close", "proposal_id": pid, "quantity": 4})
        assert ans["verdict"] == "accepted", json.dumps(ans)
        assert ans["position"] == pytest.approx(6.0)
        assert ans["legs"]["stop_loss"]["quantity"] == pytest.approx(6.0)
        assert ans["legs"]["take_profit"]["quantity"] == pytest.approx(6.0)
        assert ans["legs"]["close"]["status"] == "Filled"

        # more than is held: refused, nothing sent
        ans = await command(agent, AGENT, {"action": "close", "proposal_id": pid, "quantity": 7})
        assert ans["verdict"] == "rejected" and codes(ans) == {"CLOSE_EXCEEDS_POSITION"}, json.dumps(ans)
        assert ans["reasons"][0]["limit"] == pytest.approx(6.0)

        # the rest: exits at market, then the children are gone
        ans = await command(agent, AGENT, {"action": "close", "proposal_id": pid})
        assert ans["verdict"] == "accepted", json.dumps(ans)
        assert ans["position"] == pytest.approx(0.0)
        assert ans["legs"]["stop_loss"]["status"] in ("Cancelled", "ApiCancelled")
        assert ans["legs"]["take_profit"]["status"] in ("Cancelled", "ApiCancelled")
        st = await tws.state()
        pos = [p for p in st.get("positions", []) if p.get("symbol") == "AAPL"]
        assert all(abs(p.get("position", p.get("quantity", 0))) < 1e-9 for p in pos), pos

        ans = await command(agent, AGENT, {"action": "close", "proposal_id": pid})
        assert ans["verdict"] == "rejected", json.dumps(ans)
        assert codes(ans) & {"NOTHING_TO_CLOSE", "BRACKET_NOT_WORKING"}, json.dumps(ans)
    # both exits joined the children's OCA group: IB shrank them, nothing was resized after
    exits = [e for e in d.logs if e.get("event") == "ib_protective_order_sent"
             and e.get("proposal_id") == pid]
    assert [e["oca_group"] for e in exits] == [f"bg-{pid}"] * 2, exits
    assert not [e for e in d.logs if e.get("event") == "exit_missized"]


async def test_cancel_unfilled_refuse_filled_and_other_agents(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        rest = f"rest-{uuid.uuid4().hex[:8]}"
        await open_bracket(agent, rest, resting(rest))
        filled = f"fill-{uuid.uuid4().hex[:8]}"
        await open_bracket(agent, filled, marketable(filled))
        await agent.wait_topic(f"orders/{AGENT}", lambda m: m.get("type") == "fill"
                               and m.get("proposal_id") == filled)

        # another agent may not touch alpha's brackets
        ans = await command(agent, OTHER, {"action": "cancel", "proposal_id": rest})
        assert ans["verdict"] == "rejected" and codes(ans) == {"NOT_BRACKET_OWNER"}, json.dumps(ans)
        assert ans["legs"] == {}, "another agent learns nothing about the legs"
        ans = await command(agent, OTHER, {"action": "close", "proposal_id": filled})
        assert codes(ans) == {"NOT_BRACKET_OWNER"}, json.dumps(ans)
        ans = await command(agent, AGENT, {"action": "cancel", "proposal_id": "no-such-bracket"})
        assert codes(ans) == {"UNKNOWN_BRACKET"}, json.dumps(ans)

        # a filled bracket cannot be cancelled into a naked position
        ans = await command(agent, AGENT, {"action": "cancel", "proposal_id": filled})
        assert ans["verdict"] == "rejected" and codes(ans) == {"BRACKET_FILLED_USE_CLOSE"}, json.dumps(ans)

        # the unfilled one: cancelled with its children, answered once IB confirmed
        body = {"command_id": _cid("cancel"), "action": "cancel", "proposal_id": rest}
        mark = agent.mark()
        await agent.publish(f"commands/{AGENT}", body)
        ans = await agent.wait_topic(f"decisions/{AGENT}",
                                     lambda m: m.get("command_id") == body["command_id"], since=mark)
        assert ans["verdict"] == "accepted", json.dumps(ans)
        assert ans["legs"]["entry"]["status"] in ("Cancelled", "ApiCancelled")
        placed = await orders_by_ref(tws, {rest})
        assert all(o["status"] in ("Cancelled", "ApiCancelled") for o in placed[rest]), placed

        # the same command again: the same answer, nothing done twice
        mark = agent.mark()
        await agent.publish(f"commands/{AGENT}", body)
        again = await agent.wait_topic(f"decisions/{AGENT}",
                                       lambda m: m.get("command_id") == body["command_id"], since=mark)
        assert again == ans
        # the same id, other content: DUPLICATE_COMMAND
        mark = agent.mark()
        await agent.publish(f"commands/{AGENT}", {**body, "proposal_id": filled})
        dup = await agent.wait_topic(f"decisions/{AGENT}",
                                     lambda m: m.get("command_id") == body["command_id"], since=mark)
        assert dup["verdict"] == "rejected" and codes(dup) == {"DUPLICATE_COMMAND"}, json.dumps(dup)

        # malformed: answered invalid on the agent's decisions topic
        mark = agent.mark()
        await agent.publish(f"commands/{AGENT}", {"command_id": "bad-1", "action": "trail",
                                                  "proposal_id": filled})
        bad = await agent.wait_topic(f"decisions/{AGENT}",
                                     lambda m: m.get("command_id") == "bad-1", since=mark)
        assert bad["verdict"] == "invalid" and codes(bad) == {"VALIDATION_ERROR"}, json.dumps(bad)
    journaled = [e for e in d.logs if e.get("event") == "command_decision"]
    assert journaled


async def test_trail_locks_a_profit_as_the_price_moves(mosquitto, paper_tws_process, tmp_path):
    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        pid = f"trail-{uuid.uuid4().hex[:8]}"
        dec = await open_bracket(agent, pid, resting(pid, limit_price=230.0, take_profit=260.0,
                                                         stop_loss=226.5))
        ids = dec["order_ids"]
        await agent.wait_topic(f"orders/{AGENT}", lambda m: m.get("type") == "fill"
                               and m.get("proposal_id") == pid and m.get("leg") == "entry")
        ans = await command(agent, AGENT, {"action": "trail", "proposal_id": pid, "amount": 2.0})
        assert ans["verdict"] == "accepted", json.dumps(ans)
        stop = ans["legs"]["stop_loss"]
        assert stop["order_type"] == "TRAIL", stop
        assert stop["stop_price"] == pytest.approx(228.0)   # 230 - 2, tighter than 226.50
        # up it goes: the stop follows to 238 - 2 = 236 (a profit locked), then the price
        # falls through it and the stop fills above the entry
        for px in (232.0, 235.0, 238.0):
            await tws.set_price("AAPL", px)
        trail_id = stop["order_id"]
        assert trail_id != ids["stop_loss"], "a new order: TWS changes no order's type"
        try:
            await wait_for_tws(tws, lambda s: any(
                o["orderId"] == trail_id and (o.get("trailStopPrice") or 0) >= 236.0 - 1e-6
                for o in s["orders"]), timeout=5.0)
        except TimeoutError:
            raise AssertionError(json.dumps((await orders_by_ref(tws, {pid}))[pid])) from None
        old = next(o for o in (await orders_by_ref(tws, {pid}))[pid] if o["orderId"] == ids["stop_loss"])
        assert old["status"] in ("Cancelled", "ApiCancelled"), old
        await tws.set_price("AAPL", 235.5)
        fill = await agent.wait_topic(f"orders/{AGENT}", lambda m: m.get("type") == "fill"
                                      and m.get("proposal_id") == pid and m.get("leg") == "stop_loss")
        assert fill["price"] > 230.0, fill


def msft(pid: str, agent_qty: int = 5) -> dict[str, Any]:
    """BUY MSFT at 420 with MSFT at 420: fills on arrival."""
    return resting(pid, symbol="MSFT", quantity=agent_qty, limit_price=420.0, take_profit=428.0,
                   stop_loss=416.0)


async def held_at_tws(tws: Any) -> dict[str, float]:
    return _held(await tws.state())


def _held(st: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in st.get("positions", []):
        qty = p.get("position", p.get("quantity", 0.0))
        if abs(qty) > 1e-9:
            out[p["symbol"]] = out.get(p["symbol"], 0.0) + qty
    return out


async def test_flatten_scoped_then_everything(mosquitto, paper_tws_process, tmp_path):
    from tests.e2e.test_risk_e2e import operator

    tws = paper_tws_process
    async with running(mosquitto, tws, tmp_path) as (d, agent):
        rest, a_aapl, a_msft = (f"{t}-{uuid.uuid4().hex[:6]}" for t in ("rest", "aapl", "msft"))
        await open_bracket(agent, rest, resting(rest))
        await open_bracket(agent, a_aapl, marketable(a_aapl))
        await open_bracket(agent, a_msft, msft(a_msft))
        b_msft = f"bmsft-{uuid.uuid4().hex[:6]}"
        await agent.propose(OTHER, msft(b_msft, 3))
        assert (await agent.decision(OTHER, b_msft))["verdict"] == "approved"
        await wait_for_tws(tws, lambda s: _held(s) == {"AAPL": 10.0, "MSFT": 8.0})

        # alpha only: its entry cancelled, its positions closed, beta's untouched
        rc, report = await operator(d, "flatten", "--agent", AGENT, "--reason", "bad morning",
                                    timeout=40.0)
        assert rc == 0, report
        assert report["agent_id"] == AGENT and report["failed"] == {}, report
        assert report["cancelled_entries"] == [rest], report
        assert report["closed"] == {a_aapl: 10.0, a_msft: 5.0}, report
        assert len(report["stops_cancelled"]) == 2, report
        held = await held_at_tws(tws)
        assert held == {"MSFT": 3.0}, held
        placed = await orders_by_ref(tws, {rest, a_aapl, a_msft, b_msft})
        for ref in (rest, a_aapl, a_msft):
            live = [o for o in placed[ref] if o["status"] not in ("Cancelled", "ApiCancelled", "Filled")]
            assert not live, (ref, live)
        assert any(o["status"] == "Submitted" for o in placed[b_msft]), "beta keeps its stop"

        # a scoped halt: alpha is refused, beta still trades
        late = f"late-{uuid.uuid4().hex[:6]}"
        await agent.propose(AGENT, resting(late))
        dec = await agent.decision(AGENT, late)
        assert dec["verdict"] == "rejected" and codes(dec) == {"TRADING_HALTED"}, json.dumps(dec)
        ok = f"ok-{uuid.uuid4().hex[:6]}"
        await agent.propose(OTHER, resting(ok))
        assert (await agent.decision(OTHER, ok))["verdict"] == "approved"

        # everything: HALTED, beta's entry cancelled, its position closed
        rc, report = await operator(d, "flatten", timeout=40.0)
        assert rc == 0, report
        assert report["cancelled_entries"] == [ok] and report["closed"] == {b_msft: 3.0}, report
        assert await held_at_tws(tws) == {}
        status = await agent.wait_topic("status", lambda s: s.get("trading_state") == "HALTED")
        assert status
        rc, _ = await operator(d, "resume")
        assert rc == 0
    notes = [e for e in d.logs if e.get("event") == "flatten_done"]
    assert len(notes) == 2


async def test_signed_commands_and_the_agents_file(mosquitto, paper_tws_process, tmp_path):
    """With an agents file holding alpha's key: an unsigned or forged command is refused with
    its code and does nothing; a signed one is carried out; a disabled agent is refused."""
    from bracketgate.bus.auth import sign
    from tests.e2e.test_agents_e2e import write_agents

    key = "alpha-e2e-key-" + "k" * 16
    tws = paper_tws_process
    agents = write_agents(tmp_path / "agents.toml", {AGENT: {"key": key}, OTHER: {"enabled": False}})
    async with running(mosquitto, tws, tmp_path, env={"AGENTS_FILE": str(agents)}) as (d, probe):
        pid = f"sig-{uuid.uuid4().hex[:8]}"
        ptopic = f"{d.prefix}/proposals/{AGENT}"
        await probe.client.publish(ptopic, sign(key.encode(), ptopic, json.dumps(resting(pid))), qos=1)
        assert (await probe.decision(AGENT, pid))["verdict"] == "approved"
        ctopic = f"{d.prefix}/commands/{AGENT}"

        async def send(payload: bytes | str, cid: str) -> dict[str, Any]:
            mark = probe.mark()
            await probe.client.publish(ctopic, payload, qos=1)
            return await probe.wait_topic(f"decisions/{AGENT}",
                                          lambda m: m.get("command_id") == cid, since=mark)

        body = {"command_id": "s-1", "action": "amend", "proposal_id": pid, "stop_loss": 197.0}
        ans = await send(json.dumps(body), "s-1")
        assert codes(ans) == {"AUTH_REQUIRED"}, json.dumps(ans)
        ans = await send(sign(b"not-alpha-key-0123456789", ctopic, json.dumps(body)), "s-1")
        assert codes(ans) == {"BAD_SIGNATURE"}, json.dumps(ans)
        stop = next(o for o in (await orders_by_ref(tws, {pid}))[pid] if o["orderType"] == "STP")
        assert stop["auxPrice"] == pytest.approx(196.0), "nothing changed"
        # the forger did not burn the id: the genuine agent's s-1 is carried out
        ans = await send(sign(key.encode(), ctopic, json.dumps(body)), "s-1")
        assert ans["verdict"] == "accepted", json.dumps(ans)
        assert ans["legs"]["stop_loss"]["stop_price"] == pytest.approx(197.0)
        # a disabled agent (no key, unsigned is fine for it) is refused like its proposals
        mark = probe.mark()
        await probe.publish(f"commands/{OTHER}", {"command_id": "b-1", "action": "cancel",
                                                  "proposal_id": pid})
        ans = await probe.wait_topic(f"decisions/{OTHER}", lambda m: m.get("command_id") == "b-1",
                                     since=mark)
        assert codes(ans) == {"AGENT_DISABLED"}, json.dumps(ans)
        # too large, not JSON: invalid, answered
        ans = await send(b'{"command_id": "big-1", "action": "cancel", "x": "' + b"x" * 70_000 + b'"}',
                         "big-1")
        assert ans["verdict"] == "invalid" and codes(ans) == {"PAYLOAD_TOO_LARGE"}, json.dumps(ans)[:300]


async def test_a_partly_filled_entry(mosquitto, paper_tws_process, tmp_path):
    """The entry fills 4 of 10 (the paper TWS caps each fill): it cannot be cancelled into a
    naked 4, its size cannot go below 4, it can shrink to 6 (the children follow), and a close
    stops the entry first, then exits what is held."""
    tws = paper_tws_process
    await tws.fill_qty(4)
    try:
        async with running(mosquitto, tws, tmp_path) as (d, agent):
            pid = f"part-{uuid.uuid4().hex[:8]}"
            dec = await open_bracket(agent, pid, marketable(pid))
            ids = dec["order_ids"]
            await wait_for_tws(tws, lambda s: _held(s).get("AAPL") == 4.0)
            await agent.wait_topic(f"orders/{AGENT}", lambda m: m.get("type") == "order_event"
                                   and m.get("proposal_id") == pid and m.get("leg") == "entry"
                                   and m.get("filled") == 4.0)
            ans = await command(agent, AGENT, {"action": "cancel", "proposal_id": pid})
            assert codes(ans) == {"BRACKET_FILLED_USE_CLOSE"}, json.dumps(ans)
            ans = await command(agent, AGENT, {"action": "amend", "proposal_id": pid, "quantity": 3})
            assert ans["verdict"] == "invalid" and codes(ans) == {"VALIDATION_ERROR"}, json.dumps(ans)
            ans = await command(agent, AGENT, {"action": "amend", "proposal_id": pid, "quantity": 6})
            assert ans["verdict"] == "accepted", json.dumps(ans)
            assert ans["legs"]["entry"]["quantity"] == pytest.approx(6.0)
            legs = legs_of((await orders_by_ref(tws, {pid}))[pid])
            assert legs[ids["take_profit"]]["totalQuantity"] == pytest.approx(6.0)
            assert legs[ids["stop_loss"]]["totalQuantity"] == pytest.approx(6.0)

            await tws.fill_qty(None)   # the market exit fills at once (the cap is every order's)
            ans = await command(agent, AGENT, {"action": "close", "proposal_id": pid})
            assert ans["verdict"] == "accepted", json.dumps(ans)
            assert ans["position"] == pytest.approx(0.0)
            # the re-placed entry (6) may have filled its last 2 before the close stopped it
            assert ans["legs"]["entry"]["status"] in ("Cancelled", "ApiCancelled", "Filled")
            assert await held_at_tws(tws) == {}
            legs = legs_of((await orders_by_ref(tws, {pid}))[pid])
            live = [o for o in legs.values() if o["status"] in ("Submitted", "PreSubmitted")]
            assert not live, live
    finally:
        await tws.fill_qty(None)


async def test_a_close_that_fills_only_partly_leaves_no_exit_larger_than_the_position(
        mosquitto, paper_tws_process, tmp_path):
    """The market exit fills 4 of 10 and no more within the command's time: COMMAND_FAILED,
    and the stop is resized to the 6 still held (a stop for 10 would open a short of 4). When
    the rest of the exit fills later, the stop left on a flat bracket is cancelled."""
    tws = paper_tws_process
    try:
        async with running(mosquitto, tws, tmp_path) as (d, agent):
            pid = f"cap-{uuid.uuid4().hex[:8]}"
            dec = await open_bracket(agent, pid, marketable(pid))
            ids = dec["order_ids"]
            await wait_for_tws(tws, lambda s: _held(s).get("AAPL") == 10.0)
            await tws.fill_qty(4)
            ans = await command(agent, AGENT, {"action": "close", "proposal_id": pid}, timeout=25)
            assert codes(ans) == {"COMMAND_FAILED"}, json.dumps(ans)
            assert ans["position"] == pytest.approx(6.0)
            assert ans["legs"]["close"]["filled"] == pytest.approx(4.0)
            stop = legs_of((await orders_by_ref(tws, {pid}))[pid])[ids["stop_loss"]]
            assert stop["status"] == "Submitted"
            assert stop["totalQuantity"] - stop.get("filled", 0.0) == pytest.approx(6.0)
            await tws.fill_qty(None)
            await tws.set_price("AAPL", 229.9)          # the exit's next fill: all the rest
            await wait_for_tws(tws, lambda s: "AAPL" not in _held(s))

            await wait_for_tws(tws, lambda s: any(
                o["orderId"] == ids["stop_loss"] and o["status"] in ("Cancelled", "ApiCancelled")
                for o in s["orders"]))
    finally:
        await tws.fill_qty(None)
