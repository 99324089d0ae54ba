"""The HTTP port (core/http.py) on a real loopback socket, fed by a real bus (core/metrics.py):
read-only (405), Host checked, bounded requests, /metrics moving with the bus, /healthz
STARTING until the rooms are there, the SSE stream pushing changes; HTTP_HOST loopback only."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bracketgate.bus.bus import Bus
from bracketgate.bus.errors import ConfigError
from bracketgate.bus.messages import (
    Fill,
    Leg,
    Reason,
    RiskDecision,
    Side,
    TradeProposal,
    Verdict,
)
from bracketgate.config.settings import is_loopback_host, load_settings
from bracketgate.core.http import HttpServer, start_http
from bracketgate.core.metrics import Observer

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


async def http(port: int, raw: bytes | str, timeout: float = 5.0
               ) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw.encode() if isinstance(raw, str) else raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(path: str, method: str = "GET", host: str = "127.0.0.1") -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(name, labels): value} (the official parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric(text: str, name: str, **labels: str) -> float:
    found = samples(text).get((name, frozenset(labels.items())))
    if found is None:
        raise AssertionError(f"{name}{labels} not in /metrics:\n{text}")
    return found


@pytest.fixture
async def served():
    bus = Bus()
    await bus.start()
    obs = Observer(mode="paper", prefix="t")
    obs.attach(bus)

    async def journaled(decisions: list[RiskDecision]) -> None:   # the daemon's journal hook
        return None

    # as the MQTT bridge does: its on_decisions hook sees each decision once (core/app.py)
    bus.subscribe_batch(RiskDecision, obs.counting(journaled), name="bridge")
    srv = HttpServer(obs, "127.0.0.1", 0)
    await srv.start()
    try:
        yield bus, obs, srv
    finally:
        await srv.stop()
        await bus.close()


def decision(pid: str, verdict: Verdict, code: str | None = None,
             agent: str = "alpha") -> RiskDecision:
    reasons = [Reason(code=code, message=f"why {code}")] if code else []
    return RiskDecision(proposal_id=pid, agent_id=agent, verdict=verdict, reasons=reasons, ts=NOW)


async def test_read_only_and_bounded(served) -> None:
    _, _, srv = served
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, _ = await http(srv.port, get("/metrics", method))
        assert status == 405 and headers["allow"] == "GET, HEAD", method
    status, headers, body = await http(srv.port, get("/healthz", "HEAD"))
    assert status == 503 and body == b"" and int(headers["content-length"]) > 0
    assert (await http(srv.port, get("/nope")))[0] == 404
    assert (await http(srv.port, "garbage\r\n\r\n"))[0] == 400
    assert (await http(srv.port, get("/" + "a" * 10_000)))[0] == 431
    many = "GET / HTTP/1.1\r\n" + "".join(f"X-{i}: y\r\n" for i in range(100)) + "\r\n"
    assert (await http(srv.port, many))[0] == 431
    # DNS rebinding: a page of another site resolving to 127.0.0.1 sends its own Host
    for host in ("evil.example", "evil.example:8080", "", "10.0.0.1"):
        assert (await http(srv.port, get("/api/state", host=host)))[0] == 403, host
    for host in ("localhost:1234", "127.0.0.1", "[::1]:99"):
        assert (await http(srv.port, get("/api/state", host=host)))[0] == 200, host
    status, headers, body = await http(srv.port, get("/"))
    assert status == 200 and b'src="/app.js"' in body and "script-src 'self'" in \
        headers["content-security-policy"]
    assert (await http(srv.port, get("/app.js")))[0] == 200
    assert srv.requests >= 15   # and the server still answers after all that
    assert (await http(srv.port, get("/healthz")))[0] == 503


async def test_metrics_follow_the_bus(served) -> None:
    bus, obs, srv = served
    _, headers, body = await http(srv.port, get("/metrics"))
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in ("bracketgate_proposals_total", "bracketgate_ib_connected", "bracketgate_ready",
                 "bracketgate_ib_reconnects_total", "bracketgate_mqtt_reconnects_total",
                 "bracketgate_ib_pacing_budget_used_ratio", "bracketgate_fills_total",
                 "bracketgate_pnl_daily", "bracketgate_pnl_unrealized", "bracketgate_pnl_realized",
                 "bracketgate_uptime_seconds", "bracketgate_heartbeat_rtt_seconds",
                 "bracketgate_decision_latency_seconds_count",
                 "bracketgate_placement_latency_seconds_count",
                 "bracketgate_journal_write_seconds_count"):
        metric(text, name)
    assert "# TYPE bracketgate_decisions_total counter" in text
    assert "# TYPE bracketgate_open_brackets gauge" in text
    assert metric(text, "bracketgate_trading_state", state="ACTIVE") == 0   # no governor yet

    proposal = TradeProposal(proposal_id="p1", agent_id="alpha", symbol="AAPL", side=Side.BUY,
                             quantity=1, limit_price=10.0, take_profit=11.0, stop_loss=9.0)
    seen: list[list[TradeProposal]] = []

    async def journal_hook(proposals: list[TradeProposal]) -> None:
        seen.append(proposals)

    await obs.timing(journal_hook)([proposal])     # the bridge's intake hook, timed
    assert seen == [[proposal]]
    await bus.publish(decision("p1", Verdict.REJECTED, "DAILY_LOSS_LIMIT"))
    await bus.publish(decision("p2", Verdict.APPROVED))
    await bus.publish(Fill(proposal_id="p2", agent_id="alpha", order_id=1, leg=Leg.ENTRY,
                           exec_id="e1", symbol="AAPL", side=Side.BUY, quantity=1, price=10.0,
                           ts=NOW))
    await bus.drain(2.0)
    text = (await http(srv.port, get("/metrics")))[2].decode()
    assert metric(text, "bracketgate_decisions_total", verdict="rejected",
                  code="DAILY_LOSS_LIMIT") == 1
    assert metric(text, "bracketgate_decisions_total", verdict="approved", code="none") == 1
    assert metric(text, "bracketgate_fills_total") == 1
    assert metric(text, "bracketgate_decision_latency_seconds_count") == 1   # p1 had a start
    state = json.loads((await http(srv.port, get("/api/state")))[2])
    assert [d["proposal_id"] for d in state["decisions"]] == ["p2", "p1"]
    assert state["decisions"][1]["reasons"] == [{"code": "DAILY_LOSS_LIMIT",
                                                 "message": "why DAILY_LOSS_LIMIT"}]
    assert state["counts"]["fills"] == 1 and not state["ready"] and state["reason"] == "STARTING"


async def test_reject_burst_raises_an_alert(served) -> None:
    bus, obs, _ = served
    for i in range(5):
        await bus.publish(decision(f"r{i}", Verdict.REJECTED, "SYMBOL_NOT_ALLOWED"))
    await bus.drain(2.0)
    bursts = [a for a in obs.alerts if a["code"] == "REJECT_BURST"]
    assert len(bursts) == 1 and "SYMBOL_NOT_ALLOWED" in bursts[0]["message"]


async def test_events_stream_pushes_changes(served) -> None:
    bus, obs, srv = served
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(get("/events").encode())
    await writer.drain()

    async def next_state() -> dict[str, Any]:
        while True:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            if line.startswith(b"data: "):
                return json.loads(line[6:])

    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    assert b"text/event-stream" in head
    first = await next_state()
    assert obs.listeners == 1
    await bus.publish(decision("s1", Verdict.INVALID, "VALIDATION_ERROR"))
    while True:
        st = await next_state()
        if st["decisions"]:
            break
    assert st["version"] > first["version"] and st["decisions"][0]["proposal_id"] == "s1"
    writer.close()
    for _ in range(50):   # the server notices the client gone at its next write
        obs._touch()
        if obs.listeners == 0:
            break
        await asyncio.sleep(0.05)
    assert obs.listeners == 0


async def test_xss_text_stays_text(served) -> None:
    """An agent id straight from an MQTT topic (the bridge answers even an invalid one) is
    data in JSON; the dashboard sets it with textContent (tested in Chromium, e2e)."""
    bus, _, srv = served
    evil = '<img src=x onerror="alert(1)">'
    await bus.publish(decision("x1", Verdict.INVALID, "VALIDATION_ERROR", agent=evil))
    await bus.drain(2.0)
    state = json.loads((await http(srv.port, get("/api/state")))[2])
    assert state["decisions"][0]["agent_id"] == evil
    js = (await http(srv.port, get("/app.js")))[2].decode()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js


def test_http_host_is_loopback_unless_opted_in() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("[::1]")
    assert is_loopback_host("localhost") and is_loopback_host("127.9.9.9")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("example.com")
    with pytest.raises(ConfigError, match="HTTP_ALLOW_REMOTE"):
        load_settings(_env_file=None, http_host="0.0.0.0")
    assert load_settings(_env_file=None, http_host="0.0.0.0", http_allow_remote=True).http_host
    with pytest.raises(ConfigError, match="HTTP_PORT"):
        load_settings(_env_file=None, http_port=70000)
    assert load_settings(_env_file=None, http_port="").http_port is None


def test_other_tools_http_variables_in_env_file_are_left_alone(tmp_path) -> None:
    env = tmp_path / ".env"
    env.write_text("HTTP_PROXY=http://proxy:3128\nHTTP_PORT=8123\nHTTP_HOST=localhost\n")
    s = load_settings(_env_file=env)
    assert s.http_port == 8123 and s.http_host == "localhost"


async def test_port_choice_by_mode(unused_port) -> None:
    obs = Observer(mode="paper", prefix="t")
    paper = load_settings(_env_file=None, ib_host="127.0.0.1", mqtt_url="mqtt://127.0.0.1:1")
    assert await start_http(paper, obs) is None            # paper/live: off unless HTTP_PORT
    default = load_settings(_env_file=None)
    srv = await start_http(default, obs)
    assert srv is not None and srv.port > 0 and obs.http_url == srv.url
    try:
        # a port in use is a clear configuration error, not a traceback
        taken = load_settings(_env_file=None, ib_host="127.0.0.1", mqtt_url="mqtt://127.0.0.1:1",
                              http_port=srv.port)
        with pytest.raises(ConfigError, match="cannot listen"):
            await start_http(taken, Observer(mode="paper", prefix="t"))
    finally:
        await srv.stop()
    fixed = load_settings(_env_file=None, ib_host="127.0.0.1", mqtt_url="mqtt://127.0.0.1:1",
                          http_port=unused_port)
    srv = await start_http(fixed, obs)
    assert srv is not None and srv.port == unused_port
    await srv.stop()


async def test_open_brackets_label_set_and_stopping(served) -> None:
    """Labels: the agents file's agents (0 when nothing is open) plus those seen with an open
    bracket, which stay (at 0) once closed; /healthz says STOPPING once a stop was asked."""
    from bracketgate.agents.execution import Bracket
    from bracketgate.bus.messages import BracketOrderIds

    _, obs, srv = served
    open_now: list[Bracket] = []

    class Execution:   # what the Observer reads of the ExecutionAgent
        def open_brackets(self) -> list[Bracket]:
            return list(open_now)

    obs._known_agents = lambda: ["alpha", "beta"]
    obs.watch(execution=Execution())
    open_now.append(Bracket("p1", "gamma", "AAPL", Side.BUY, BracketOrderIds(
        entry=1, take_profit=2, stop_loss=3), placed=True))
    text = (await http(srv.port, get("/metrics")))[2].decode()
    assert metric(text, "bracketgate_open_brackets", agent_id="gamma") == 1
    assert metric(text, "bracketgate_open_brackets", agent_id="alpha") == 0
    open_now.clear()
    text = (await http(srv.port, get("/metrics")))[2].decode()
    assert metric(text, "bracketgate_open_brackets", agent_id="gamma") == 0
    obs.stopping = lambda: True
    status, _, body = await http(srv.port, get("/healthz"))
    assert status == 503 and json.loads(body)["reason"] == "STOPPING"
