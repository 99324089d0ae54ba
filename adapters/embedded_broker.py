"""The zero-setup MQTT broker of default mode: amqtt's broker on a loopback port, in-process.

    async with EmbeddedBroker() as broker:        # port=0: a free port, read it from .url
        settings_url = broker.url                  # "mqtt://127.0.0.1:<port>"

amqtt 0.12 quirks (verified against aiomqtt 2.5, see tests/integration/test_mqtt_bridge.py):

- Persistent sessions only work for NON-anonymous sessions: with amqtt's AnonymousAuthPlugin
  every client is flagged anonymous, and then QoS 1 messages for a disconnected clean_session=False
  client are NOT queued and its session is deleted within a second. We therefore load our own
  `LoopbackAuthPlugin`, which admits every client (the listener is bound to 127.0.0.1 only) and
  leaves it non-anonymous, so the daemon's persistent session behaves as on mosquitto.
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
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from bus.errors import LifecycleError, MqttError
from core.logs import get_logger

log = get_logger("bracketgate.embedded_broker")


class LoopbackAuthPlugin(BaseAuthPlugin):
    """Admit every client as a non-anonymous one (so persistent sessions keep QoS 1 messages)."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool | None:
        session.is_anonymous = False
        return True


class _Broker(Broker):
    """amqtt's Broker, delivering a session's queued messages as what they are: not retained."""

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
    """amqtt broker on `host` (loopback) and `port` (0 = pick a free one). Lifecycle: once."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
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
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._state != "UNOPENED":
            raise LifecycleError("embedded_broker", self._state, "start")
        self._state = "STARTING"
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self._requested_port}"}},
            "plugins": {f"{__name__}.LoopbackAuthPlugin": {}},
        }
        broker = _Broker(config)
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
