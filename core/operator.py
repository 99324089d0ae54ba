"""Operator commands over MQTT: submit a proposal, halt / reduce / resume trading, read status.

They talk to the daemon only through the broker, as any strategy agent or operator would:
  python run.py submit --agent demo --symbol AAPL --side BUY --qty 10 --limit 175 --tp 180 --sl 172.5
  python run.py submit --agent demo --json '{"proposal_id": "...", ...}'
  python run.py halt --reason "news"      python run.py resume
  python run.py flatten [--agent A] [--symbol S]   (halt, cancel entries, close at market)
  python run.py status [--json]       (order files: python run.py orders FILE, core/order_files.py)
The broker comes from MQTT_URL, else from the endpoints file the daemon writes in default mode
(data/endpoints.json), else mqtt://127.0.0.1:1883. The login comes from MQTT_URL's user:password,
else MQTT_USERNAME / MQTT_PASSWORD, else (MQTT_URL unset: default mode) the `operator` login of
the embedded broker's credentials file, DATA_DIR/default/mqtt-credentials.json.
With AGENTS_FILE set, a proposal is signed with its agent's key and a control command with the
operator's, when the file has them (bus/auth.py; the daemon then requires it).
Output is JSON on stdout; errors are one JSON line on stderr, with every secret redacted.

Exit codes: 0 approved / done, 1 rejected or invalid, 2 bad usage or a bad MQTT_URL,
3 no answer from the daemon before the timeout, 4 MQTT broker unreachable,
6 the broker refused the login ("not authorized": wrong or missing username/password).
`status` prints one line (state, mode, trading state, IB connection, positions, daily P&L,
working orders, snapshot age, then uptime, the last IB heartbeat's round trip, IB and MQTT
reconnects, journal lag; `--json`: the whole retained status and portfolio) and exits
0 online, 1 degraded (IB not ready, or starting / stopping), 3 offline or no status retained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from bracketgate.bus.errors import ConfigError



def _getenv(name: str, default: str | None = None) -> str | None:
    """A setting as every command reads it (config/settings.py): the environment, else .env."""
    from bracketgate.config.settings import settings_env

    value = settings_env().get(name.lower())
    return value if value is not None else default


ENDPOINTS_FILE = Path(_getenv("DATA_DIR", "data") or "data") / "endpoints.json"
CREDENTIALS_FILE = Path(_getenv("DATA_DIR", "data") or "data") / "default" / "mqtt-credentials.json"
EXIT_USAGE, EXIT_NO_ANSWER, EXIT_UNREACHABLE, EXIT_NOT_AUTHORIZED = 2, 3, 4, 6
MQTT_SCHEMES = ("mqtt", "tcp", "mqtts", "ssl")
NOT_AUTHORIZED_CODES = {4, 5, 134, 135}   # MQTT 3.1.1 CONNACK 4/5, MQTT 5 reason codes 134/135
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


class BadUrl(ValueError):
    pass


def broker_url() -> str:
    if _getenv("MQTT_URL"):
        return _getenv("MQTT_URL")  # type: ignore[return-value]
    try:
        return json.loads(ENDPOINTS_FILE.read_text())["mqtt_url"]
    except (OSError, KeyError, ValueError, TypeError):
        return "mqtt://127.0.0.1:1883"


def _embedded_login() -> tuple[str | None, str | None]:
    """Default mode only (MQTT_URL unset): the operator login the embedded broker made."""
    if _getenv("MQTT_URL"):
        return None, None
    try:
        login = json.loads(CREDENTIALS_FILE.read_text())["operator"]
        return str(login["username"]), str(login["password"])
    except (OSError, KeyError, ValueError, TypeError):
        return None, None


def login() -> tuple[str | None, str | None]:
    """(username, password): MQTT_URL's, else MQTT_USERNAME/MQTT_PASSWORD, else the embedded one."""
    try:
        u = urlsplit(broker_url())
        if u.username is not None:
            return unquote(u.username), unquote(u.password) if u.password is not None else None
    except ValueError:
        pass
    if _getenv("MQTT_USERNAME"):
        return _getenv("MQTT_USERNAME"), _getenv("MQTT_PASSWORD") or None
    return _embedded_login()


def secrets_in_play() -> list[str]:
    """Every secret this process knows, longest first: what redact() must never let through."""
    found = {_getenv("MQTT_PASSWORD") or "", _embedded_login()[1] or "", login()[1] or ""}
    try:
        raw = urlsplit(broker_url()).password
        if raw:
            found |= {raw, unquote(raw)}
    except ValueError:
        pass
    return sorted((x for x in found if x), key=len, reverse=True)


def redact(text: str) -> str:
    """`text` without any URL userinfo (scheme://user:pass@ -> scheme://***@) nor known secret."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}***@", text)
    for secret in secrets_in_play():
        text = text.replace(secret, "***")
    return text


def safe_url() -> str:
    return redact(broker_url())


def is_not_authorized(exc: BaseException) -> bool:
    """The broker refused the login (CONNACK 4/5, paho's "Not authorized" / "Bad user name...")."""
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    if isinstance(value, int) and value in NOT_AUTHORIZED_CODES:
        return True
    text = f"{rc} {exc}".lower()
    return "not authori" in text or "bad user name or password" in text


def prefix() -> str:
    """MQTT_PREFIX, else (default mode) the prefix the daemon wrote to the endpoints file."""
    if _getenv("MQTT_PREFIX"):
        return _getenv("MQTT_PREFIX")  # type: ignore[return-value]
    if not _getenv("MQTT_URL"):
        try:
            return str(json.loads(ENDPOINTS_FILE.read_text())["mqtt_prefix"])
        except (OSError, KeyError, ValueError, TypeError):
            pass
    return "bracketgate"


def _client(url: str, client_id: str) -> aiomqtt.Client:
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as exc:
        raise BadUrl(f"MQTT_URL is not a valid URL ({exc})") from None
    if u.scheme.lower() not in MQTT_SCHEMES:
        raise BadUrl(f"MQTT_URL scheme must be one of {list(MQTT_SCHEMES)}, got {u.scheme!r}")
    if not u.hostname:
        raise BadUrl("MQTT_URL has no host")
    tls = None
    if u.scheme.lower() in ("mqtts", "ssl") or _getenv("MQTT_CA_FILE"):
        tls = aiomqtt.TLSParameters(ca_certs=_getenv("MQTT_CA_FILE") or None)
    username, password = login()
    return aiomqtt.Client(
        hostname=u.hostname, port=port or (8883 if tls else 1883),
        username=username, password=password,
        identifier=client_id, tls_params=tls, timeout=5,
    )


async def submit(proposal: dict[str, Any], agent_id: str, timeout: float) -> tuple[int, dict[str, Any] | None]:
    pid = proposal["proposal_id"]
    topic_dec = f"{prefix()}/decisions/{agent_id}"
    async with _client(broker_url(), f"bg-submit-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topic_dec, qos=1)
        topic = f"{prefix()}/proposals/{agent_id}"
        await client.publish(topic, _maybe_signed(topic, json.dumps(proposal), agent_id), qos=1)
        decision = await _first_json(client, lambda d: d.get("proposal_id") == pid, timeout)
    if decision is None:
        return 3, None
    return (0 if decision.get("verdict") == "approved" else 1), decision


def _maybe_signed(topic: str, body: str, agent_id: str | None) -> str | bytes:
    """Signed with the agent's key (a proposal) or the operator's (control) when the agents
    file (AGENTS_FILE) has one, as the daemon then requires (bus/auth.py, docs/AUTH.md)."""
    path = _getenv("AGENTS_FILE")
    if not path:
        return body
    from bracketgate.bus.auth import sign
    from bracketgate.config.agents import load_agents

    agents = load_agents(path)
    key = agents.key_for(agent_id) if agent_id is not None else agents.operator_key
    return body if key is None else sign(key, topic, body)


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
        topic = f"{prefix()}/control"
        await client.publish(topic, _maybe_signed(topic, json.dumps({"action": action,
                                                                     "reason": reason}), None),
                             qos=1)
        want = {"halt": "HALTED", "reduce": "REDUCING", "resume": "ACTIVE"}[action]
        ev = await _first_json(client, lambda e: e.get("new") == want, timeout)
    if ev is not None:
        return 0, ev
    # no change event: the state may already be the wanted one; report status
    _, st = await status(2.0)
    if st and (st.get("status") or {}).get("trading_state") == want:
        return 0, st
    return 3, st


async def flatten(agent: str | None, symbol: str | None, reason: str,
                  timeout: float) -> tuple[int, dict[str, Any] | None]:
    """Publish a flatten and wait for its report ({prefix}/events, "type": "flatten"): exit 0
    when it did everything, 1 when something failed (the report says what), 3 no report."""
    body = {"action": "flatten", "reason": reason}
    if agent:
        body["agent_id"] = agent
    if symbol:
        body["symbol"] = symbol
    async with _client(broker_url(), f"bg-flatten-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(f"{prefix()}/events", qos=1)
        topic = f"{prefix()}/control"
        await client.publish(topic, _maybe_signed(topic, json.dumps(body), None), qos=1)
        report = await _first_json(client, lambda e: e.get("type") == "flatten"
                                   and e.get("agent_id") == (agent or None)
                                   and e.get("symbol") == (symbol or None), timeout)
    if report is None:
        return 3, None
    return (1 if report.get("failed") else 0), report


STATUS_EXIT = {"online": 0, "degraded": 1, "starting": 1, "stopping": 1, "offline": 3}


def status_exit(out: dict[str, Any]) -> int:
    """0 online, 1 degraded (or starting / stopping), 3 offline or no status at all."""
    st = out.get("status")
    return STATUS_EXIT.get(st.get("state"), 3) if isinstance(st, dict) else 3


def _age_s(iso: Any, now: datetime) -> float | None:
    try:
        return (now - datetime.fromisoformat(str(iso).replace("Z", "+00:00"))).total_seconds()
    except (TypeError, ValueError):
        return None


def status_line(out: dict[str, Any], now: datetime | None = None) -> str:
    """One line: `online mode=paper trading=ACTIVE ib=ready positions=2 daily_pnl=-12.50
    working_orders=3 age=0.4s` (age: of the portfolio snapshot)."""
    now = now or datetime.now(UTC)
    st, pf = out.get("status"), out.get("portfolio")
    if not isinstance(st, dict):
        return f"offline: no status retained on {prefix()}/status at {safe_url()}"
    parts = [str(st.get("state"))]
    if st.get("detail"):
        parts[0] += f" ({st['detail']})"
    parts += [f"mode={st.get('mode') or '?'}", f"trading={st.get('trading_state') or '?'}",
              f"ib={st.get('connection') or '?'}"]
    if st.get("halted_scopes"):
        parts.append("halted=" + ",".join(str(x).replace(" ", ":") for x in st["halted_scopes"]))
    if st.get("state") == "offline":
        age = _age_s(st.get("ts"), now)
        return " ".join(parts + ([f"since={st.get('ts')}"] if age is None else [f"for={age:.0f}s"]))
    if isinstance(pf, dict):
        daily = (pf.get("pnl") or {}).get("daily")
        age = _age_s(pf.get("ts"), now)
        parts += [f"positions={len(pf.get('positions') or [])}",
                  f"daily_pnl={'?' if daily is None else f'{daily:.2f}'}",
                  f"working_orders={len(pf.get('working_orders') or [])}",
                  f"age={'?' if age is None else f'{age:.1f}s'}"]
    else:
        parts.append("portfolio=none")
    return " ".join(parts + _health_parts(st, now))


def _health_parts(st: dict[str, Any], now: datetime) -> list[str]:
    """`up=1h02m rtt=1.3ms reconnects=ib:0,mqtt:1 journal_lag=0.8ms`, from what the status has
    (uptime from started_at, so a status retained a while ago still says the truth)."""
    out: list[str] = []
    since = _age_s(st.get("started_at"), now) if st.get("started_at") else None
    up = since if since is not None else st.get("uptime_s")
    if isinstance(up, int | float):
        s = int(up)
        out.append(f"up={s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600
                   else f"up={s // 60}m{s % 60:02d}s")
    if isinstance(st.get("heartbeat_rtt_ms"), int | float):
        out.append(f"rtt={st['heartbeat_rtt_ms']:.1f}ms")
    if st.get("ib_reconnects") is not None or st.get("mqtt_reconnects") is not None:
        out.append(f"reconnects=ib:{st.get('ib_reconnects', '?')},"
                   f"mqtt:{st.get('mqtt_reconnects', '?')}")
    if isinstance(st.get("journal_lag_ms"), int | float):
        out.append(f"journal_lag={st['journal_lag_ms']:.1f}ms")
    if st.get("http"):
        out.append(f"http={st['http']}")
    return out


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
    return status_exit(out), out


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
    fl = sub.add_parser("flatten", help="halt (scoped when filtered), cancel working entries,"
                                        " close positions at market; prints what was done")
    fl.add_argument("--agent", help="only this agent's brackets (a scoped halt)")
    fl.add_argument("--symbol", help="only this symbol's brackets (a scoped halt)")
    fl.add_argument("--reason", default="operator")
    fl.add_argument("--timeout", type=float, default=30.0)
    st = sub.add_parser("status", help="one line of the retained status and portfolio"
                                       " (exit 0 online, 1 degraded, 3 offline)")
    st.add_argument("--json", action="store_true", help="the whole retained status and portfolio")
    st.add_argument("--timeout", type=float, default=3.0)
    a = ap.parse_args(argv)
    if (a.cmd == "submit" and not (a.json or a.file)
            and None in (a.symbol, a.side, a.qty, a.tp, a.sl)):
        ap.error("submit needs --json/--file, or --symbol --side --qty --tp --sl [--limit]")

    def run() -> int:
        if a.cmd == "submit":
            code, out = asyncio.run(submit(_proposal_from_args(a), a.agent, a.timeout))
        elif a.cmd == "flatten":
            code, out = asyncio.run(flatten(a.agent, a.symbol, a.reason, a.timeout))
        elif a.cmd == "status":
            code, out = asyncio.run(status(a.timeout))
            if not a.json:
                print(status_line(out or {}))
                return code
        else:
            code, out = asyncio.run(control(a.cmd, a.reason, a.timeout))
        if out is None:
            print(json.dumps({"error": "no answer from the daemon before the timeout"}),
                  file=sys.stderr)
        else:
            print(json.dumps(out, indent=2))
        return code

    return guarded(run)


def guarded(run: Any) -> int:
    """`run()`'s exit code, or the exit code and one redacted JSON line on stderr of the error
    it raised (a bad MQTT_URL, an AGENTS_FILE, an unreachable or refusing broker, a bad input)."""
    try:
        return int(run())
    except BadUrl as e:
        return _fail(EXIT_USAGE, f"bad MQTT_URL {safe_url()}: {e}")
    except ConfigError as e:   # AGENTS_FILE unreadable or invalid (it never prints a key)
        return _fail(EXIT_USAGE, f"AGENTS_FILE: {e}")
    except aiomqtt.MqttError as e:
        if is_not_authorized(e):
            return _fail(EXIT_NOT_AUTHORIZED, f"MQTT broker at {safe_url()} refused the login: not authorized"
                         f" (user {login()[0] or '(none)'}; check MQTT_URL / MQTT_USERNAME / MQTT_PASSWORD)")
        return _fail(EXIT_UNREACHABLE, f"MQTT broker unreachable at {safe_url()}: {e}")
    except (OSError, ValueError) as e:   # a bad --file or --json, a TLS file that is not there
        return _fail(EXIT_USAGE, f"{type(e).__name__}: {e}")


def _fail(code: int, message: str) -> int:
    print(json.dumps({"error": redact(message), "exit_code": code}), file=sys.stderr)
    return code
