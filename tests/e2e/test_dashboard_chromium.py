"""Issue 14: the live dashboard in a real headless Chromium (Chrome DevTools Protocol).

mosquitto, the paper TWS and the daemon run as processes; two agents propose brackets; the test
loads the page once and, without reloading it, reads what it shows as a bracket fills and the
price moves: trading state and connection, working brackets per agent with their legs, the
latest decisions with their reasons, positions, P&L and its intraday chart, alerts (a halt).
Agent-supplied text (an agent id from a topic, a proposal id) is shown as text, never run.
A screenshot PNG goes to the test's tmp dir, and to $BRACKETGATE_ARTIFACTS when set.

Without a chromium binary the test fails when CI or BRACKETGATE_REQUIRE_CHROMIUM is set
(scripts/test.sh sets it and installs Debian's chromium), else it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.fixtures.chromium import Chromium, chromium_binary
from tests.fixtures.daemon import DaemonProcess, MqttProbe, run_cli, stock_bracket as bracket
from tests.fixtures.http import healthz, http_url_of, poll

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

EVIL_AGENT = '<img src=x onerror="window.pwned=1">'
EVIL_PID = "<script>window.pwned=2</script>"


def require_chromium() -> None:
    if chromium_binary() is not None:
        return
    message = ("Debian's chromium is not installed (apt-get install chromium): the dashboard "
               "is untested")
    if os.environ.get("CI") or os.environ.get("BRACKETGATE_REQUIRE_CHROMIUM"):
        pytest.fail(message)
    pytest.skip(message)


def js_text(selector: str) -> str:
    return f"({q(selector)} || {{}}).textContent"


def q(selector: str) -> str:
    """document.querySelector for `selector`, as a JS expression."""
    return f"document.querySelector({json.dumps(selector)})"


async def test_dashboard_follows_the_run_live(mosquitto, paper_tws_process, tmp_path: Path):
    require_chromium()
    tws = paper_tws_process
    await tws.set_price("AAPL", 230.0)
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                  tmp=tmp_path, extra_env={"HTTP_PORT": "0"})
    try:
        url = await http_url_of(tmp_path)
        await poll(lambda: healthz(url), lambda r: r[0] == 200, 15, "/healthz ready")
        async with MqttProbe(mosquitto.url, d.prefix) as agent, \
                Chromium.launch(tmp_path) as page:
            await page.navigate(url + "/")
            await page.evaluate("window.__loaded_once = true")   # gone if the page reloads
            await page.wait_for("document.getElementById('live').dataset.live === 'yes'", 15,
                                "the SSE stream is live")
            assert await page.evaluate(js_text("#trading-state")) == "ACTIVE"
            await page.wait_for(f"{js_text('#connection')} === 'IB ready'", 10, "IB ready")
            assert await page.evaluate(js_text("#ready")) == "ready"
            assert await page.evaluate(js_text("#mqtt")) == "MQTT connected"
            assert await page.evaluate(js_text("#mode")) == "paper"

            # --- two agents' brackets; one rejected with its reason; hostile text
            alpha, beta, rej = (f"{n}-{uuid.uuid4().hex[:6]}" for n in ("a", "b", "r"))
            await agent.propose("alpha", bracket(alpha))
            await agent.propose("beta", bracket(beta, limit_price=225.0, take_profit=232.0,
                                                stop_loss=222.0, quantity=5))
            await agent.propose("alpha", bracket(rej, stop_loss=231.0))
            await agent.propose(EVIL_AGENT, bracket("evil-1"))
            await agent.propose("beta", json.dumps(bracket(EVIL_PID)))
            for a, p in (("alpha", alpha), ("beta", beta), ("alpha", rej)):
                await agent.decision(a, p)
            await agent.wait_topic(f"decisions/{EVIL_AGENT}")

            await page.wait_for("document.querySelectorAll('#brackets .agent').length === 2", 10,
                                "brackets of two agents")
            agents = await page.evaluate(
                "[...document.querySelectorAll('#brackets .agent')].map(e => e.dataset.agent)")
            assert agents == ["alpha", "beta"]
            legs = await page.evaluate(
                f"[...document.querySelectorAll('#brackets tr[data-proposal=\"{alpha}\"]')]"
                ".map(r => r.dataset.leg)")
            assert legs == ["entry", "take_profit", "stop_loss"]
            entry_sel = f'#brackets tr[data-proposal="{alpha}"][data-leg="entry"]'
            assert await page.evaluate(
                f"document.querySelector('{entry_sel}').dataset.status") != "Filled"
            stop_price = await page.evaluate(
                f"document.querySelector('#brackets tr[data-proposal=\"{alpha}\"][data-leg="
                "\"stop_loss\"]').lastChild.textContent")
            assert stop_price == "226.50"

            rej_row = q(f'#decisions tr[data-proposal="{rej}"]')
            await page.wait_for(f"!!{rej_row}", 10, "the rejection in the decisions")
            row = await page.evaluate(f"(() => {{ const r = {rej_row};"
                                      " return [r.dataset.verdict,"
                                      " r.querySelector('.reasons').textContent]; })()")
            assert row[0] == "rejected" and "BRACKET_GEOMETRY" in row[1], row
            approved = await page.evaluate(
                q(f'#decisions tr[data-proposal="{alpha}"]') + ".dataset.verdict")
            assert approved == "approved"

            # hostile agent id and proposal id: shown literally, never parsed as HTML or run
            await page.wait_for("[...document.querySelectorAll('#decisions .agent-id')]"
                                f".some(td => td.textContent === {json.dumps(EVIL_AGENT)})",
                                10, "the hostile agent id shown as text")
            assert await page.evaluate("document.querySelectorAll('#decisions img').length") == 0
            assert await page.evaluate("document.querySelectorAll('main script').length") == 0
            assert await page.evaluate("window.pwned === undefined")

            # --- alpha's entry fills (beta's rests lower): the legs, position and P&L follow
            daily_before = await page.evaluate(js_text("#pnl-daily"))
            await tws.set_price("AAPL", 228.80)
            await page.wait_for(f"document.querySelector('{entry_sel}').dataset.status === "
                                "'Filled'", 15, "alpha's entry filled on the page")
            entry_price = await page.evaluate(
                f"document.querySelector('{entry_sel}').lastChild.textContent")
            assert entry_price != "–" and 228.0 < float(entry_price) <= 229.0, entry_price
            beta_entry = await page.evaluate(
                q(f'#brackets tr[data-proposal="{beta}"][data-leg="entry"]') + ".dataset.status")
            assert beta_entry != "Filled"
            await page.wait_for("(document.querySelector('#positions tr[data-symbol=AAPL] .qty')"
                                " || {}).textContent === '10'", 15, "the AAPL position")
            await tws.set_price("AAPL", 231.00)
            await page.wait_for("(document.querySelector('#positions tr[data-symbol=AAPL] .price')"
                                " || {}).textContent === '231.00'", 15, "the price moved")
            await page.wait_for(f"{js_text('#pnl-daily')} !== {json.dumps(daily_before)}", 15,
                                "daily P&L changed")
            unrealized = await page.wait_for(
                "(() => { const t = document.getElementById('pnl-unrealized');"
                " return t.classList.contains('pos') && t.textContent; })()", 15,
                "unrealized P&L positive")
            assert float(unrealized.replace(",", "")) > 15
            await page.wait_for("Number(document.getElementById('pnl-chart').dataset.points) >= 2",
                                15, "the intraday P&L chart has points")
            assert await page.evaluate(
                "document.querySelector('#pnl-chart polyline').getAttribute('points').split(' ')"
                ".length") >= 2

            # --- a halt: the state badge and an alert, still without a reload
            rc, out, err = await run_cli(d, "halt", "--reason", "dashboard test")
            assert rc == 0, out + err
            await page.wait_for(f"{js_text('#trading-state')} === 'HALTED'", 15, "HALTED shown")
            assert await page.evaluate(
                "!!document.querySelector('#alerts li[data-code=TRADING_HALTED]')")
            assert await page.evaluate("window.__loaded_once === true")   # never reloaded

            png = await page.screenshot(*[p for p in (
                tmp_path / "dashboard.png",
                Path(os.environ["BRACKETGATE_ARTIFACTS"]) / "dashboard.png"
                if os.environ.get("BRACKETGATE_ARTIFACTS") else None) if p is not None])
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
            assert not [c for c in page.console if c.startswith("EXCEPTION")], page.console
        assert await d.terminate() == 0
    finally:
        await d.kill()
