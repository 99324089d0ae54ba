"""Operator commands over MQTT: submit a proposal, halt / reduce / resume trading, read status.

They talk to the daemon only through the broker, as any strategy agent or operator would:
  python run.py submit --agent demo --symbol AAPL --side BUY --qty 10 --limit 175 --tp 180 --sl 172.5
  python run.py submit --agent demo --json '{"proposal_id": "...", ...}'
  python run.py halt --reason "news"      python run.py resume      python run.py status
The broker comes from MQTT_URL, else from the endpoints file the daemon writes in default mode
(data/endpoints.json), else mqtt://127.0.0.1:1883. Output is JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

ENDPOINTS_FILE = Path(os.environ.get("DATA_DIR", "data")) / "endpoints.json"


def broker_url() -> str:
    if os.environ.get("MQTT_URL"):
        return os.environ["MQTT_URL"]
    try:
        return json.loads(ENDPOINTS_FILE.read_text())["mqtt_url"]
    except (OSError, KeyError, ValueError):
        return "mqtt://127.0.0.1:1883"


def prefix() -> str:
    return os.environ.get("MQTT_PREFIX", "bracketgate")


def _client(url: str, client_id: str) -> aiomqtt.Client:
    u = urlsplit(url)
    tls = None
    if u.scheme in ("mqtts", "ssl"):
        tls = aiomqtt.TLSParameters(ca_certs=os.environ.get("MQTT_CA_FILE") or None)
    return aiomqtt.Client(
        hostname=u.hostname or "127.0.0.1", port=u.port or (8883 if tls else 1883),
        username=u.username or os.environ.get("MQTT_USERNAME") or None,
        password=u.password or os.environ.get("MQTT_PASSWORD") or None,
        identifier=client_id, tls_params=tls, timeout=5,
    )


async def submit(proposal: dict[str, Any], agent_id: str, timeout: float) -> tuple[int, dict[str, Any] | None]:
    pid = proposal["proposal_id"]
    topic_dec = f"{prefix()}/decisions/{agent_id}"
    async with _client(broker_url(), f"bg-submit-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topic_dec, qos=1)
        await client.publish(f"{prefix()}/proposals/{agent_id}", json.dumps(proposal), qos=1)
        decision = await _first_json(client, lambda d: d.get("proposal_id") == pid, timeout)
    if decision is None:
        return 3, None
    return (0 if decision.get("verdict") == "approved" else 1), decision


async def _first_json(client: aiomqtt.Client, pred: Any, timeout: float) -> dict[str, Any] | None:
    """The first JSON object received that satisfies `pred`, or None after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            async for msg in client.messages:
                try:
                    obj = json.loads(msg.payload)
                except ValueError:
                    continue
                if isinstance(obj, dict) and pred(obj):
                    return obj
    except TimeoutError:
        pass
    return None


async def control(action: str, reason: str, timeout: float) -> tuple[int, dict[str, Any] | None]:
    async with _client(broker_url(), f"bg-control-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(f"{prefix()}/events", qos=1)
        await client.publish(f"{prefix()}/control", json.dumps({"action": action, "reason": reason}), qos=1)
        want = {"halt": "HALTED", "reduce": "REDUCING", "resume": "ACTIVE"}[action]
        ev = await _first_json(client, lambda e: e.get("new") == want, timeout)
    if ev is not None:
        return 0, ev
    # no change event: the state may already be the wanted one; report status
    _, st = await status(2.0)
    if st and (st.get("status") or {}).get("trading_state") == want:
        return 0, st
    return 3, st


async def status(timeout: float) -> tuple[int, dict[str, Any] | None]:
    out: dict[str, Any] = {}
    async with _client(broker_url(), f"bg-status-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(f"{prefix()}/status", qos=1)
        await client.subscribe(f"{prefix()}/portfolio", qos=0)
        try:
            async with asyncio.timeout(timeout):
                async for msg in client.messages:
                    key = str(msg.topic).rsplit("/", 1)[-1]
                    try:
                        out[key] = json.loads(msg.payload)
                    except ValueError:
                        out[key] = msg.payload.decode(errors="replace")
                    if "status" in out and "portfolio" in out:
                        break
        except TimeoutError:
            pass
    return (0 if "status" in out else 3), out


def _proposal_from_args(a: argparse.Namespace) -> dict[str, Any]:
    if a.json:
        p = json.loads(a.json)
    elif a.file:
        p = json.loads(Path(a.file).read_text() if a.file != "-" else sys.stdin.read())
    else:
        p = {"symbol": a.symbol, "side": a.side, "quantity": a.qty, "take_profit": a.tp, "stop_loss": a.sl,
             "order_type": "MKT" if a.limit is None else "LMT", "sec_type": a.sec_type, "tif": a.tif}
        if a.limit is not None:
            p["limit_price"] = a.limit
        for k in ("expiry", "strike", "right", "exchange"):
            v = getattr(a, k)
            if v is not None:
                p[k] = v
    p.setdefault("proposal_id", uuid.uuid4().hex)
    return p


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="publish one proposal and print the decision")
    s.add_argument("--agent", default="cli")
    s.add_argument("--json", help="the proposal as a JSON string")
    s.add_argument("--file", help="a JSON file with the proposal ('-' = stdin)")
    s.add_argument("--symbol")
    s.add_argument("--side", choices=["BUY", "SELL"])
    s.add_argument("--qty", type=int)
    s.add_argument("--limit", type=float, help="limit price (omit for a market entry)")
    s.add_argument("--tp", type=float, help="take-profit price")
    s.add_argument("--sl", type=float, help="stop-loss price")
    s.add_argument("--sec-type", default="STK", choices=["STK", "OPT", "FUT"])
    s.add_argument("--tif", default="DAY", choices=["DAY", "GTC"])
    s.add_argument("--expiry")
    s.add_argument("--strike", type=float)
    s.add_argument("--right", choices=["C", "P"])
    s.add_argument("--exchange")
    s.add_argument("--timeout", type=float, default=10.0)
    for name in ("halt", "reduce", "resume"):
        c = sub.add_parser(name, help=f"{name} trading")
        c.add_argument("--reason", default="operator")
        c.add_argument("--timeout", type=float, default=5.0)
    st = sub.add_parser("status", help="print the retained status and portfolio")
    st.add_argument("--timeout", type=float, default=3.0)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "submit":
            if not (a.json or a.file) and None in (a.symbol, a.side, a.qty, a.tp, a.sl):
                ap.error("submit needs --json/--file, or --symbol --side --qty --tp --sl [--limit]")
            code, out = asyncio.run(submit(_proposal_from_args(a), a.agent, a.timeout))
        elif a.cmd == "status":
            code, out = asyncio.run(status(a.timeout))
        else:
            code, out = asyncio.run(control(a.cmd, a.reason, a.timeout))
    except aiomqtt.MqttError as e:
        print(json.dumps({"error": f"MQTT broker unreachable at {broker_url()}: {e}"}), file=sys.stderr)
        return 4
    if out is None:
        print(json.dumps({"error": "no answer from the daemon before the timeout"}), file=sys.stderr)
    else:
        print(json.dumps(out, indent=2))
    return code
