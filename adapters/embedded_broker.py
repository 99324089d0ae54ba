"""The zero-setup MQTT broker of default mode: amqtt's broker on a loopback port, in-process.

    async with EmbeddedBroker(credentials_file=data/"default"/"mqtt-credentials.json") as broker:
        broker.url                    # "mqtt://127.0.0.1:<port>" (no secret: safe to log)
        broker.login_url("daemon")    # "mqtt://daemon:<password>@127.0.0.1:<port>" (never log it)

It is not open: it binds loopback only (any other host is refused), and every client must log in
with a username and password from its credentials file. On first start the file is created
owner-only (0600, in a 0700 directory) with one random password per login: `daemon` (the
daemon's bridge), `operator` (run.py submit|status|halt|reduce|resume) and `demo` (the README's
mosquitto_pub example); later starts reuse it. Without `credentials_file` (tests) the passwords
live in memory only. Anonymous clients and wrong passwords get CONNACK 5 "not authorized", and
they are refused BEFORE amqtt looks at their client id: amqtt would otherwise let a refused client
that reuses the daemon's id take over (disconnect) the daemon's connection or delete its
persistent session. There is no ACL here: every login may publish and read every topic, so keep
the file to the people who may trade (use mosquitto with config/mosquitto/ for per-agent ACLs).

amqtt 0.12 quirks (verified against aiomqtt 2.5, see tests/integration/test_mqtt_bridge.py):

- Persistent sessions only work for NON-anonymous sessions: with amqtt's AnonymousAuthPlugin
  every client is flagged anonymous, and then QoS 1 messages for a disconnected clean_session=False
  client are NOT queued and its session is deleted within a second. Our `PasswordAuthPlugin`
  admits only known logins and leaves them non-anonymous, so the daemon's persistent session
  behaves as on mosquitto.
- On every CONNECT amqtt sends the new client the retained messages matching ANY session's
  subscription filters, not only its own. A client can thus receive retained messages on topics it
  never subscribed to; the MQTT bridge routes by topic and ignores anything it did not ask for.
- A client that reconnects with the same id while amqtt still sees the old connection is made to
  wait one second ("reconnecting too quickly").
- Messages queued for a disconnected persistent session are delivered with retain=1 on the
  next connection, as if they were retained ones; `_Broker` delivers them with retain=0 (as
  mosquitto does), so the MQTT bridge can refuse real retained proposals (RETAINED_PROPOSAL).
- Sessions and retained messages live in memory only: they are gone when the broker stops. In
  default mode the broker lives and dies with the daemon, so nothing is lost that could be kept.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from bracketgate.bus.errors import LifecycleError, MqttError
from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.embedded_broker")


LOGINS = ("daemon", "operator", "demo")   # the logins made on first start (username = role)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def load_or_create_credentials(path: Path | None) -> dict[str, dict[str, str]]:
    """`{role: {"username", "password"}}` from `path`, made owner-only on first use (None: in memory).

    A file readable by group or others is refused (tighten it with chmod 600)."""
    if path is None:
        return {role: {"username": role, "password": secrets.token_urlsafe(24)} for role in LOGINS}
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        creds = {role: {"username": role, "password": secrets.token_urlsafe(24)} for role in LOGINS}
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f, indent=2)
        log.info("embedded_broker_credentials_created", path=str(path), logins=list(LOGINS))
        return creds
    if mode & 0o077:
        raise MqttError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    try:
        creds = json.loads(path.read_text())
        missing = [r for r in LOGINS if not (creds.get(r) or {}).get("username") or not creds[r].get("password")]
    except (OSError, ValueError, AttributeError) as exc:
        raise MqttError(f"{path}: not a credentials file ({type(exc).__name__})") from None
    if missing:
        raise MqttError(f"{path}: no username/password for {missing}")
    return creds


class PasswordAuthPlugin(BaseAuthPlugin):
    """Admit only a known username with its password, as a non-anonymous client."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool | None:
        broker = getattr(self.context, "_broker_instance", None)
        if not isinstance(broker, _Broker) or not broker.admits(session.username, session.password):
            return False
        session.is_anonymous = False
        return True


class _Broker(Broker):
    """amqtt's Broker that refuses bad logins before any session logic, and delivers a session's
    queued messages as what they are: not retained."""

    def __init__(self, config: dict[str, Any], logins: dict[str, str]) -> None:
        super().__init__(config)
        self._logins = logins   # username -> password

    def admits(self, username: str | None, password: str | bytes | None) -> bool:
        if not username or password is None:
            return False
        if isinstance(password, bytes):
            password = password.decode(errors="replace")
        expected = self._logins.get(username)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        """amqtt's own steps (broker.py, 0.12.1), with the login checked right after CONNECT."""
        try:
            handler, client_session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        if not self.admits(client_session.username, client_session.password):
            log.warning("embedded_broker_login_refused", username=client_session.username,
                        client_id=client_session.client_id, peer=f"{remote_address}:{remote_port}")
            writer.write(ConnackPacket.build(0, NOT_AUTHORIZED).to_bytes())
            await writer.drain()
            await writer.close()
            raise MQTTError("not authorized")
        if client_session.clean_session:
            if client_session.client_id:
                await self._delete_session(client_session.client_id)
            else:
                from amqtt.utils import gen_client_id

                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            for attr in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive",
                         "username", "password"):
                setattr(existing, attr, getattr(client_session, attr))
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(delay, int):
            client_session.keep_alive += delay
        return handler, client_session

    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        tasks = []
        while handler and not session.retained_messages.empty():
            queued = await session.retained_messages.get()
            tasks.append(asyncio.ensure_future(
                handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)))
        if tasks:
            await asyncio.wait(tasks)


class EmbeddedBroker:
    """amqtt broker on `host` (loopback only) and `port` (0 = pick a free one), password-only
    logins from `credentials_file` (None: made in memory). Lifecycle: once."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, credentials_file: Path | None = None) -> None:
        if host not in LOOPBACK:
            raise MqttError(f"the embedded broker binds loopback only, not {host!r}")
        self.host = host
        self.credentials_file = credentials_file
        self.credentials: dict[str, dict[str, str]] = {}
        self._requested_port = port
        self._port: int | None = None
        self._broker: Broker | None = None
        self._state = "UNOPENED"

    @property
    def port(self) -> int:
        if self._port is None:
            raise LifecycleError("embedded_broker", self._state, "read port")
        return self._port

    @property
    def url(self) -> str:
        """The broker's address, without credentials (safe to log and to write to endpoints.json)."""
        return f"mqtt://{self.host}:{self.port}"

    def login_url(self, role: str = "daemon") -> str:
        """The URL with `role`'s username and password in it: for a client, never for a log."""
        login = self.credentials[role]
        return (f"mqtt://{quote(login['username'], safe='')}:{quote(login['password'], safe='')}"
                f"@{self.host}:{self.port}")

    async def start(self) -> None:
        if self._state != "UNOPENED":
            raise LifecycleError("embedded_broker", self._state, "start")
        self._state = "STARTING"
        try:
            self.credentials = load_or_create_credentials(self.credentials_file)
        except (MqttError, OSError) as exc:
            self._state = "CLOSED"
            if isinstance(exc, MqttError):
                raise
            raise MqttError(f"embedded broker credentials {self.credentials_file}: {exc}") from exc
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self._requested_port}"}},
            "plugins": {f"{__name__}.PasswordAuthPlugin": {}},
        }
        broker = _Broker(config, {c["username"]: c["password"] for c in self.credentials.values()})
        try:
            await broker.start()
        except Exception as exc:
            self._state = "CLOSED"
            raise MqttError(f"embedded broker failed to start on {self.host}:{self._requested_port}: {exc}") from exc
        self._broker = broker
        server = broker._servers["default"].instance  # amqtt has no public accessor for it
        sockets = getattr(server, "sockets", None) or ()
        if not sockets:
            await broker.shutdown()
            self._state = "CLOSED"
            raise MqttError("embedded broker started without a listening socket")
        self._port = sockets[0].getsockname()[1]
        self._state = "OPEN"
        log.info("embedded_broker_started", url=self.url)

    async def stop(self) -> None:
        """Stop the broker; a second call is a no-op."""
        if self._state != "OPEN" or self._broker is None:
            self._state = "CLOSED"
            return
        self._state = "CLOSED"
        broker, self._broker = self._broker, None
        await broker.shutdown()
        # amqtt closes its servers but lets client handlers finish on their own; give them a turn
        await asyncio.sleep(0)
        log.info("embedded_broker_stopped", url=f"mqtt://{self.host}:{self._port}")

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
