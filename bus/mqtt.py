"""The MQTT bridge: proposals and control commands in, decisions, orders and state out.

In   {prefix}/proposals/{agent_id}  QoS 1, persistent session  -> TradeProposal offered to the bus
     {prefix}/control               QoS 1                       -> ControlCommand on the bus
     {prefix}/commands/{agent_id}   QoS 1 (with an on_command hook) -> bracket command to the hook
Out  RiskDecision, CommandAnswer  -> {prefix}/decisions/{agent_id}  QoS 1
     OrderEvent, Fill             -> {prefix}/orders/{agent_id}     QoS 1, "type": order_event|fill
     PortfolioSnapshot            -> {prefix}/portfolio             QoS 0, retained, latest, rate-limited
     Status                       -> {prefix}/status                QoS 1, retained; will {"state":"offline"}
     TradingStateChanged, Alert   -> {prefix}/events                QoS 1, "type": trading_state|alert
     FlattenReport                -> {prefix}/events                QoS 1, "type": flatten

A proposal is acknowledged (PUBACK) only once it is durable: the `on_proposal` hook (the daemon
journals it) has returned and it is on the bus, or its answer is. Until then it stays in the
broker's persistent session, which delivers it again (DUP) on the next connection; so a crash, a
broker restart or a failing hook loses nothing (a failing hook ends the connection to get it
back). A batch of proposals only is offered to the gate while its commit is in flight (the
gate decides meanwhile: adapters/journal_early.py answers its id look-up before the commit; what
the gate then journals is queued behind, and nothing is placed for a proposal whose write
failed), and acknowledged once it returned. stop_intake() keeps the subscription and stops acknowledging: what arrives from then on,
and what agents publish while the daemon is down, is delivered after the next start. Answers:
bad input an `invalid` decision listing each error, an intake queue still full after
INTAKE_ROOM_WAIT_S (the bridge holds back first: what it has not acknowledged waits at the
broker) a `rejected` OVERLOADED one; a proposal_id seen before is answered by the gate with its first decision (idempotency).
Every decision, the bridge's own answers included (they travel through the bus), passes the
`on_decision` hook (the daemon journals it) before it is published.
One aiomqtt client per connection, entered once; `_run()` is the reconnect loop. Outgoing
messages wait in a bounded outbox while disconnected and are flushed, in order, after reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
import structlog
from pydantic import ValidationError

from bracketgate.bus.auth import Authenticator, Refusal
from bracketgate.bus.bus import Bus, BusState, Overflow, Subscription
from bracketgate.bus.combos import error_field
from bracketgate.bus.commands import CommandAnswer, FlattenReport
from bracketgate.bus.errors import BusError, ConfigError, LifecycleError, MqttError, MqttNotConnected
from bracketgate.bus.messages import (
    DENIAL_MESSAGES,
    Alert,
    ControlCommand,
    DenialCode,
    Fill,
    Message,
    OrderEvent,
    PortfolioSnapshot,
    Reason,
    RiskDecision,
    Status,
    TradeProposal,
    TradingStateChanged,
    Verdict,
)
from bracketgate.bus.mqtt_wire import Wire, send_outbox, tune
from bracketgate.config.settings import Settings
from bracketgate.core import stamps
from bracketgate.core.crashpoints import crash_point
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.mqtt")
# paho's own lines go to the "aiomqtt" stdlib logger, whose level core/logs.py sets (not "mqtt")
_PAHO_LOG = logging.getLogger("aiomqtt")

NOT_AUTHORIZED_RC = frozenset({4, 5, 134, 135})   # CONNACK: bad login / not authorised (3.1.1, 5)
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 10.0
CLOSE_FLUSH_TIMEOUT_S = 5.0
# proposals taken from the client's queue together (one journal commit, acknowledged in order);
# mosquitto has at most max_inflight_messages (20 by default) unacknowledged with us anyway
INTAKE_BATCH_MAX = 256
# decision batches journaled at once (the next handed to the journal while one commits), sent
# in order: an approval no longer waits for the rejections' commit in front of it to return
DECISION_OVERLAP = 4
# how long a proposal waits for room in a full intake queue before it is answered OVERLOADED
INTAKE_ROOM_WAIT_S = 1.0
# QoS 1 publishes awaiting their PUBACK at once (sent in order; resent in order after a reconnect)
OUTBOX_WINDOW = 64
WILL_PAYLOAD = b'{"state":"offline"}'
_PROPOSAL_ID_PEEK = re.compile(rb'"proposal_id"\s*:\s*"([^"\\]{1,64})"')
# a proposal is one flat JSON object: nothing an agent sends nests deeper than this
MAX_JSON_DEPTH = 16
# a lone surrogate: json.loads accepts "\ud800", but no encoder (JSON out, SQLite, logs) can
_SURROGATE = re.compile("[\ud800-\udfff]")
# the agent ids a proposals topic may carry (bus/messages.py AgentId): others are answered
# `invalid` on their own decisions topic, and the bridge logs INVALID_AGENT_ID
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")


def backoff_delay(attempt: int, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S,
                  rng: Callable[[], float] = random.random) -> float:
    """Jittered exponential backoff: between half and all of min(cap, base * 2**attempt)."""
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return ceiling / 2 + rng() * ceiling / 2


@dataclass(frozen=True)
class Topics:
    """Every topic of one prefix."""

    prefix: str

    @property
    def proposals_filter(self) -> str:
        return f"{self.prefix}/proposals/+"

    @property
    def control(self) -> str:
        return f"{self.prefix}/control"

    @property
    def portfolio(self) -> str:
        return f"{self.prefix}/portfolio"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    def proposals(self, agent_id: str) -> str:
        return f"{self.prefix}/proposals/{agent_id}"

    @property
    def commands_filter(self) -> str:
        return f"{self.prefix}/commands/+"

    def commands(self, agent_id: str) -> str:
        return f"{self.prefix}/commands/{agent_id}"

    def command_agent(self, topic: str) -> str | None:
        """The agent id of a commands topic (bracket lifecycle, issue 13), None otherwise."""
        head = f"{self.prefix}/commands/"
        if not topic.startswith(head):
            return None
        agent = topic[len(head):]
        return None if "/" in agent else agent

    def decisions(self, agent_id: str) -> str:
        return f"{self.prefix}/decisions/{agent_id}"

    def orders(self, agent_id: str) -> str:
        return f"{self.prefix}/orders/{agent_id}"

    def proposal_agent(self, topic: str) -> str | None:
        """The agent id of a proposals topic, None when `topic` is not one."""
        head = f"{self.prefix}/proposals/"
        if not topic.startswith(head):
            return None
        agent = topic[len(head):]
        return None if "/" in agent else agent


@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    proposal_id: str | None = None
    agent_id: str | None = None
    delivery: tuple[str, str] | None = None   # (kind, key) reported to on_delivered after PUBACK


class _Latest:
    """A latest-value channel (portfolio, status): only the newest payload is ever sent."""

    def __init__(self, topic: str, qos: int, retain: bool, min_interval: float) -> None:
        self.topic = topic
        self.qos = qos
        self.retain = retain
        self.min_interval = min_interval
        self.payload: bytes | None = None
        self.dirty = asyncio.Event()
        self.last_sent: float | None = None  # loop time

    def set(self, payload: bytes) -> None:
        self.payload = payload
        self.dirty.set()


def _rc_value(rc: Any) -> int | None:
    """An MQTT reason/return code as a plain int for logs (paho gives ints or ReasonCode objects)."""
    if rc is None:
        return None
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def _typed_json(kind: str, msg: Message) -> bytes:
    return json.dumps({"type": kind, **msg.model_dump(mode="json")}, separators=(",", ":")).encode()


def _reason_value(value: Any) -> float | str | None:
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an int past float (str() of one past 4,300 digits raises)
            return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, str) and len(value) <= 64:
        return value
    return None


def printable(text: str, limit: int = 256) -> str:
    """`text` as any encoder takes it: lone surrogates spelled out (\\ud800), at most `limit`."""
    text = text[:limit]
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object hook: a key given twice is an error (json.loads keeps the last one,
    which another reader of the same bytes may not)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


# json.loads(text, object_pairs_hook=...) builds a decoder (and its scanner) per call: one, kept
_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicates)


def _load_json(text: str) -> Any:
    """json.loads(text, object_pairs_hook=_object_without_duplicates), same errors."""
    if text.startswith("\ufeff"):   # json.loads' own check, not the decoder's
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def _unencodable(data: Any) -> tuple[DenialCode, str, str] | None:
    """(code, field, why) for a parsed payload no encoder could pass on: nesting deeper than
    MAX_JSON_DEPTH, or a lone surrogate in any key or string. Walks without recursion."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value) is not None:
                return (DenialCode.VALIDATION_ERROR, path,
                        "a string holds a lone surrogate (not Unicode)")
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return (DenialCode.MALFORMED_JSON, path,
                        f"nested deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _SURROGATE.search(key) is not None:
                    return (DenialCode.VALIDATION_ERROR, path,
                            "a key holds a lone surrogate (not Unicode)")
                stack.append((item, depth + 1, f"{path}.{key}" if path else str(key)))
    return None


def validation_reasons(exc: ValidationError) -> list[Reason]:
    """One Reason per pydantic error: field = dotted loc, message = msg, value = the input."""
    reasons = []
    for err in exc.errors(include_url=False):
        loc = printable(error_field(err["loc"], err["msg"]), 128) or None
        reasons.append(Reason(code=DenialCode.VALIDATION_ERROR, message=err["msg"], field=loc,
                              value=_reason_value(err.get("input")) if loc else None))
    return reasons



def _honour_cancel() -> None:
    """Python 3.11's asyncio.wait_for (inside aiomqtt's publish) loses a cancel that races the
    PUBACK: it returns normally with the task still marked cancelling. Raise it here instead of
    waiting for the next message forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _paho(client: aiomqtt.Client) -> paho.Client:
    """The paho client inside an aiomqtt one: the ONLY place this code reaches past aiomqtt.

    aiomqtt 2.5 lets paho acknowledge each QoS 1 message as soon as it is queued; a proposal
    must be acknowledged only once it is durable. paho 2.x can do that (`manual_ack_set(True)`
    before connecting, then `ack(mid, qos)`), but aiomqtt does not expose it: it keeps its paho
    client in the private `_client`. test_mqtt_bridge.py's manual-ack tests fail if that changes.
    """
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        raise MqttError(f"aiomqtt {aiomqtt.__version__} keeps no paho Client in `_client`: "
                        "manual acknowledgement (bus/mqtt.py `_paho`) must be adapted")
    return inner


def _inbox(client: aiomqtt.Client) -> asyncio.Queue[aiomqtt.Message] | None:
    """The queue behind `client.messages`, to take what is already in it without the task and
    asyncio.wait that aiomqtt's iterator spends on every message; None when aiomqtt keeps no
    asyncio.Queue in `_queue` (then messages come one at a time, through the iterator)."""
    inner = getattr(client, "_queue", None)
    return inner if isinstance(inner, asyncio.Queue) else None


# The daemon's intake hook: make the proposal durable (the daemon journals it). Raising means
# "not durable": the proposal is not acknowledged, and the broker delivers it again.
ProposalHook = Callable[[TradeProposal], Awaitable[None]]
# The same for the proposals that arrived together (one journal commit for all of them)
ProposalsHook = Callable[[list[TradeProposal]], Awaitable[None]]
# Runs before a decision goes out (the daemon journals it): what an agent has seen is on
# record, so after a crash a repeat is answered with exactly that decision, never a new one.
DecisionHook = Callable[[RiskDecision], Awaitable[None]]
# The same for the decisions that are ready together (one journal commit for all of them). It
# may return the JSON bytes it journaled, one per decision: those very bytes are published
# (one encode per decision, and what the agent gets is byte for byte what is on record)
DecisionsHook = Callable[[list[RiskDecision]], Awaitable[list[bytes] | None]]
# after the broker acknowledged (PUBACK) decisions or fills, those acknowledged meanwhile together:
# each (kind "decision" | "fill" | "command", proposal_id, agent_id, key: the fill's exec_id, a
# command answer's command_id, "" for a decision)
Delivery = tuple[str, str, str, str]
DeliveredHook = Callable[[list[Delivery]], Awaitable[None]]
# A bracket lifecycle command (bus/commands.py): made durable and handed on; raising means
# "not durable" (not acknowledged, the broker delivers it again)
CommandHook = Callable[[Any], Awaitable[None]]
# True when the journal already knows this proposal_id (taken in or answered before)
SeenIdHook = Callable[[str], Awaitable[bool]]


_DEFER = object()   # a proposal that came after stop_intake(): left unacknowledged


class _Redeliver(Exception):
    """Ends a connection so that the broker delivers our unacknowledged proposals again."""


class MqttBridge:
    """Bridge between MQTT topics and the bus. `url` overrides settings.mqtt_url (embedded broker);
    `on_proposal` runs before a proposal is acknowledged, `on_decision` before a decision is
    published (see ProposalHook, DecisionHook)."""

    def __init__(self, settings: Settings, bus: Bus, clock: Clock = SYSTEM_CLOCK, *,
                 url: str | None = None, on_proposal: ProposalHook | None = None,
                 on_decision: DecisionHook | None = None,
                 on_delivered: DeliveredHook | None = None,
                 seen_id: SeenIdHook | None = None,
                 on_proposals: ProposalsHook | None = None,
                 on_decisions: DecisionsHook | None = None,
                 authenticator: Authenticator | None = None,
                 on_command: CommandHook | None = None) -> None:
        if on_proposal is not None and on_proposals is not None \
                or on_decision is not None and on_decisions is not None:
            raise ConfigError("MqttBridge takes one proposal hook and one decision hook")
        self._settings = settings
        self.last_refusal: int | None = None   # the broker's CONNACK code when it refused our login
        self._auth = authenticator   # signed messages (bus/auth.py), when an agents file has keys
        self._on_command = on_command   # bracket commands: made durable before acknowledged
        self._seen_id = seen_id   # retained proposals: answered once (see _refuse_retained)
        self._delivered_hook = on_delivered
        self._delivery_tasks: set[asyncio.Task[None]] = set()
        self._decisions_out: asyncio.Future[None] | None = None   # the last batch, until sent
        self._deliveries: list[Delivery] = []   # acknowledged, not yet handed to the hook
        self._bus = bus
        self._clock = clock
        self._on_proposal = on_proposal
        self._on_proposals = on_proposals
        self._decision_hook = on_decision
        self._decisions_hook = on_decisions
        raw_url = url or settings.mqtt_url
        if raw_url is None:
            raise ConfigError("MqttBridge needs a broker: MQTT_URL or the embedded broker's url")
        parts = urlsplit(raw_url)
        if not parts.hostname:
            raise ConfigError(f"MQTT url has no host: {parts.scheme}://…")
        self._host = parts.hostname
        self._tls = settings.mqtt_tls or parts.scheme in ("mqtts", "ssl")
        self._port = parts.port or (8883 if self._tls else 1883)
        self._username = settings.mqtt_username or (parts.username or None)
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
        self._password = password or parts.password or None
        self._tls_context = self._make_tls_context() if self._tls else None
        self.topics = Topics(settings.mqtt_prefix)

        self._state = "UNOPENED"
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._client: aiomqtt.Client | None = None
        self._wire: Wire | None = None   # the tuned paths of the current client (mqtt_wire.py)
        self._runner: asyncio.Task[None] | None = None
        self._subs: list[Subscription[Any]] = []
        self._intake_open = True
        self._intake_idle = asyncio.Event()  # clear while one proposal is being taken in
        self._intake_idle.set()
        self._not_durable_streak = 0         # hook failures in a row: the reconnect backoff
        # outgoing QoS 1 messages, oldest first; bounded by settings.mqtt_outbox_size
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self._outbox_idle = asyncio.Event()
        self._outbox_idle.set()
        self._portfolio = _Latest(self.topics.portfolio, 0, True, settings.portfolio_publish_interval)
        self._status = _Latest(self.topics.status, 1, True, 0.0)
        self.counters = {"proposals": 0, "invalid": 0, "overloaded": 0, "deferred": 0,
                         "not_durable": 0, "controls": 0, "published": 0, "outbox_dropped": 0,
                         "connects": 0}

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def endpoint(self) -> str:
        """host:port, for logs (never credentials)."""
        return f"{self._host}:{self._port}"

    def attach(self) -> None:
        """Subscribe on the bus (idempotent). Call it before anything the agents must hear is
        published (the first reconcile); messages wait in the outbox until connected."""
        if self._subs:
            return
        bus = self._bus
        self._subs = [
            bus.subscribe_batch(RiskDecision, self._on_decisions, name="mqtt",
                                batch_max=INTAKE_BATCH_MAX, overlap=DECISION_OVERLAP),
            bus.subscribe(OrderEvent, self._on_order_event, name="mqtt"),
            bus.subscribe(Fill, self._on_fill, name="mqtt"),
            bus.subscribe(PortfolioSnapshot, self._on_snapshot, name="mqtt", maxsize=8,
                          overflow=Overflow.DROP_OLDEST),
            bus.subscribe(Status, self._on_status, name="mqtt"),
            bus.subscribe(TradingStateChanged, self._on_event, name="mqtt"),
            bus.subscribe(Alert, self._on_event, name="mqtt"),
            bus.subscribe(CommandAnswer, self._on_command_answer, name="mqtt"),
            bus.subscribe(FlattenReport, self._on_flatten_report, name="mqtt"),
        ]

    async def start(self) -> None:
        """Subscribe on the bus (if not yet) and start the connection loop (returns at once)."""
        if self._state != "UNOPENED":
            raise LifecycleError("mqtt_bridge", self._state, "start")
        self._state = "OPEN"
        self.attach()
        self._runner = asyncio.create_task(self._run(), name="mqtt-bridge")

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise MqttNotConnected(f"not connected to MQTT {self.endpoint} within {timeout}s") from None

    async def wait_disconnected(self, timeout: float) -> None:
        """Wait until the connection is down (tests, health checks)."""
        try:
            async with asyncio.timeout(timeout):
                await self._disconnected.wait()
        except TimeoutError:
            raise MqttError(f"still connected to MQTT {self.endpoint} after {timeout}s") from None

    async def stop_intake(self) -> None:
        """Stop taking proposals in (SIGTERM); returns once the one being taken in, if any, is
        durable, on the bus and acknowledged. The subscription stays: proposals arriving from
        now on are left unacknowledged, and those published while the daemon is down are
        queued by the broker; both are delivered when the daemon connects again."""
        if not self._intake_open:
            return
        self._intake_open = False
        log.info("mqtt_intake_stopped", topic=self.topics.proposals_filter,
                 in_progress=not self._intake_idle.is_set())
        await self._intake_idle.wait()

    async def close(self) -> None:
        """Flush the outbox, publish retained status offline, disconnect cleanly (no will)."""
        if self._state == "CLOSED":
            return
        self._state = "CLOSED"
        self._intake_open = False  # what arrives while we say goodbye is delivered next time
        self._closing.set()
        if self._runner is not None and not self.connected:
            self._runner.cancel()  # connecting or backing off: nothing to say goodbye on
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._delivery_tasks:  # delivery records of the last decisions
            await asyncio.wait(list(self._delivery_tasks), timeout=CLOSE_FLUSH_TIMEOUT_S)
        for sub in self._subs:
            await self._bus.unsubscribe(sub)
        self._subs = []
        log.info("mqtt_bridge_closed", undelivered=len(self._outbox), **self.counters)

    async def __aenter__(self) -> MqttBridge:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ connection loop

    def _make_tls_context(self) -> ssl.SSLContext:
        s = self._settings
        try:
            ctx = ssl.create_default_context(cafile=str(s.mqtt_ca_file) if s.mqtt_ca_file else None)
            if s.mqtt_cert_file and s.mqtt_key_file:
                ctx.load_cert_chain(str(s.mqtt_cert_file), str(s.mqtt_key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"MQTT TLS files unusable: {exc}") from exc
        if s.mqtt_tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _make_client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self._host, self._port,
            username=self._username, password=self._password,
            identifier=self._settings.mqtt_client_id,
            clean_session=False,  # persistent session: QoS 1 proposals wait for us while we are away
            keepalive=self._settings.mqtt_keepalive,
            will=aiomqtt.Will(self.topics.status, WILL_PAYLOAD, qos=1, retain=True),
            tls_context=self._tls_context,
            tls_insecure=True if self._tls and self._settings.mqtt_tls_insecure else None,
            timeout=10,
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),  # decisions: no Nagle delay
            logger=_PAHO_LOG,
            max_inflight_messages=OUTBOX_WINDOW,   # paho's own default window is 20
        )
        client.pending_calls_threshold = OUTBOX_WINDOW + 16   # a full window is no warning
        _paho(client).manual_ack_set(True)  # acknowledged by _ack(), once handled
        # one send per burst, one recv per chunk, publishes without a task each (issue 9)
        self._wire = tune(client, _paho(client), self._outbox_ready)
        return client

    async def _run(self) -> None:
        """The reconnect loop: connect, serve until the connection dies, back off, again."""
        failures = 0
        while not self._closing.is_set():
            log.info("mqtt_connecting", endpoint=self.endpoint, client_id=self._settings.mqtt_client_id,
                     attempt=failures)
            try:
                async with self._make_client() as client:
                    failures = 0
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                rc = _rc_value(getattr(exc, "rc", None))
                self.last_refusal = rc if rc in NOT_AUTHORIZED_RC else None
                log.warning("mqtt_connection_lost", endpoint=self.endpoint, code=rc,
                            error=str(exc), not_authorized=self.last_refusal is not None)
            except _Redeliver:  # logged where the hook failed; back off longer each time in a row
                failures = self._not_durable_streak
            except Exception:
                log.exception("mqtt_bridge_error", endpoint=self.endpoint)
            finally:
                self._client = None
                self._connected.clear()
                self._disconnected.set()
            if self._closing.is_set():
                break
            delay = backoff_delay(failures)
            failures += 1
            log.info("mqtt_reconnect_backoff", delay=round(delay, 3), attempt=failures)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
        log.info("mqtt_disconnected", endpoint=self.endpoint, clean=True)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connection: read, subscribe, then read / write until it dies or close() is called.
        Reading starts first: a persistent session's unacknowledged proposals come at once, and
        amqtt handles nothing else (not even our SUBSCRIBE) until they are acknowledged."""
        workers = [asyncio.create_task(self._read(client), name="mqtt-read")]
        closing: asyncio.Task[Any] | None = None
        try:
            # always, even after stop_intake(): the session keeps queueing proposals for next time
            await self._subscribe(client, self.topics.proposals_filter)
            await self._subscribe(client, self.topics.control)
            if self._on_command is not None:   # bracket lifecycle commands (bus/command_intake.py)
                await self._subscribe(client, self.topics.commands_filter)
            self._client = client
            self.counters["connects"] += 1
            if self._status.payload is None:
                self._on_status_payload(Status(state="starting", mode=self._settings.mode,
                                               ts=self._clock.now()).model_dump_json().encode())
            for channel in (self._status, self._portfolio):
                if channel.payload is not None:
                    channel.dirty.set()  # re-assert: a will may have replaced our status meanwhile
            self._disconnected.clear()
            self._connected.set()
            log.info("mqtt_connected", endpoint=self.endpoint,
                     client_id=self._settings.mqtt_client_id, intake=self._intake_open,
                     outbox=len(self._outbox))
            workers += [
                asyncio.create_task(self._write_outbox(client), name="mqtt-outbox"),
                asyncio.create_task(self._write_latest(client, self._status), name="mqtt-status"),
                asyncio.create_task(self._write_latest(client, self._portfolio),
                                    name="mqtt-portfolio"),
            ]
            closing = asyncio.create_task(self._closing.wait(), name="mqtt-closing")
            done, _ = await asyncio.wait([*workers, closing], return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                status_writer = workers[2]  # offline must be the LAST retained status
                status_writer.cancel()
                await asyncio.wait([status_writer], timeout=CLOSE_FLUSH_TIMEOUT_S)
                await self._goodbye(client)
            else:
                for task in done:
                    task.result()  # re-raise what ended the connection
        finally:
            tasks = [*workers, *([closing] if closing is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _subscribe(self, client: aiomqtt.Client, topic: str) -> None:
        granted = await client.subscribe(topic, qos=1)
        refused = [rc for rc in granted if getattr(rc, "is_failure", False) or rc == 0x80]
        if refused:  # e.g. the broker's ACL: say so loudly, keep the rest of the bridge running
            log.error("mqtt_subscribe_refused", topic=topic, code=_rc_value(refused[0]))
        else:
            log.info("mqtt_subscribed", topic=topic, qos=1)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Clean close: deliver what the bus already gave us (bounded), then status offline."""
        try:
            async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT_S):
                if self._bus.state is BusState.OPEN:
                    for sub in self._subs:
                        await sub.queue.join()
                await self._outbox_idle.wait()
        except TimeoutError:
            log.warning("mqtt_close_flush_timeout", undelivered=len(self._outbox))
        offline = Status(state="offline", mode=self._settings.mode, detail="clean shutdown",
                         ts=self._clock.now())
        await client.publish(self.topics.status, offline.model_dump_json().encode(), qos=1, retain=True)
        log.info("mqtt_status_published", state="offline")

    # ------------------------------------------------------------------ writing

    def _enqueue(self, item: _Outgoing) -> None:
        limit = self._settings.mqtt_outbox_size
        if len(self._outbox) >= limit:
            dropped = self._outbox.popleft()
            self.counters["outbox_dropped"] += 1
            log.error("mqtt_outbox_dropped", topic=dropped.topic, proposal_id=dropped.proposal_id,
                      agent_id=dropped.agent_id, limit=limit, dropped=self.counters["outbox_dropped"])
        self._outbox.append(item)
        self._outbox_idle.clear()
        self._outbox_ready.set()

    async def _write_outbox(self, client: aiomqtt.Client) -> None:
        """Send the outbox in order, up to OUTBOX_WINDOW awaiting their PUBACK at once. What is
        not acknowledged when the connection ends goes back to the front, in order (QoS 1: a
        repeat is possible, a loss is not). Through paho directly: bus/mqtt_wire.py."""
        wire = self._wire
        if wire is None or wire.client is not client:
            raise MqttError("the outbox writer runs on the client _make_client() tuned")
        await send_outbox(wire, self._outbox, self._outbox_idle, self._acked, OUTBOX_WINDOW,
                          client.timeout)

    def _acked(self, item: _Outgoing) -> None:
        self.counters["published"] += 1
        if item.delivery is not None and self._delivered_hook is not None:
            self._decision_delivered(item)

    def _decision_delivered(self, item: _Outgoing) -> None:
        """The broker has the decision or fill (PUBACK): tell the daemon (it journals the
        delivery) off the writer's path; what is acknowledged meanwhile goes with it."""
        assert self._delivered_hook is not None and item.delivery is not None
        kind, key = item.delivery
        self._deliveries.append((kind, item.proposal_id or "", item.agent_id or "", key))
        if self._delivery_tasks:
            return   # the running one takes it
        task = asyncio.get_running_loop().create_task(self._report_deliveries(),
                                                      name="mqtt-delivered")
        self._delivery_tasks.add(task)
        task.add_done_callback(self._delivery_tasks.discard)

    async def _report_deliveries(self) -> None:
        assert self._delivered_hook is not None
        while self._deliveries:
            batch, self._deliveries = self._deliveries, []
            try:
                await self._delivered_hook(batch)
            except Exception as exc:  # a missing delivery record only means a repeat at restart
                log.warning("delivery_not_recorded", deliveries=len(batch), error=repr(exc),
                            proposal_id=batch[0][1], agent_id=batch[0][2])

    async def _write_latest(self, client: aiomqtt.Client, channel: _Latest) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await channel.dirty.wait()
            if channel.last_sent is not None and channel.min_interval > 0:
                wait = channel.last_sent + channel.min_interval - loop.time()
                if wait > 0:  # rate limit: whatever arrives meanwhile replaces the payload
                    await asyncio.sleep(wait)
            channel.dirty.clear()
            payload = channel.payload
            if payload is None:
                continue
            try:
                await client.publish(channel.topic, payload, qos=channel.qos, retain=channel.retain)
            except BaseException:
                channel.dirty.set()
                raise
            channel.last_sent = loop.time()
            self.counters["published"] += 1
            _honour_cancel()

    # ------------------------------------------------------------------ bus -> MQTT

    async def _on_decision(self, decision: RiskDecision) -> None:
        await self._on_decisions([decision])

    async def _on_decisions(self, decisions: list[RiskDecision]) -> None:
        """Journal the decisions ready together (the hook: one commit), then send each (the
        bytes the hook journaled, when it returns them)."""
        if stamps.ON:
            for decision in decisions:
                stamps.stamp(decision.proposal_id, "decision_at_bridge")
        # the batches journal at once (one may be committing while the next is handed to the
        # journal: bus overlap); they go out in the order they came, each once journaled
        before, self._decisions_out = self._decisions_out, asyncio.get_running_loop().create_future()
        mine = self._decisions_out
        try:
            payloads = await self._journal_decisions(decisions)
            if before is not None and not before.done():
                await asyncio.shield(before)
            self._send_decisions(decisions, payloads)
        finally:
            mine.set_result(None)
            if self._decisions_out is mine:
                self._decisions_out = None

    async def _journal_decisions(self, decisions: list[RiskDecision]) -> list[bytes] | None:
        payloads: list[bytes] | None = None
        if self._decisions_hook is not None:
            try:
                payloads = await self._decisions_hook(decisions)
            except Exception as exc:  # the agents still get their answers: never silence
                for decision in decisions:
                    self._not_recorded(decision, exc)
        elif self._decision_hook is not None:
            for decision in decisions:
                try:
                    await self._decision_hook(decision)
                except Exception as exc:
                    self._not_recorded(decision, exc)
        if payloads is not None and len(payloads) != len(decisions):
            payloads = None
        if stamps.ON:
            for decision in decisions:
                stamps.stamp(decision.proposal_id, "decision_journaled")
        return payloads

    def _send_decisions(self, decisions: list[RiskDecision], payloads: list[bytes] | None) -> None:
        debug = log.is_enabled_for(logging.DEBUG)
        for i, decision in enumerate(decisions):
            # the gate (risk_decision) or the bridge (proposal_invalid, ...) logged it already
            if debug:
                log.debug("decision_out", proposal_id=decision.proposal_id,
                          agent_id=decision.agent_id, verdict=decision.verdict.value)
            self._enqueue(_Outgoing(self.topics.decisions(decision.agent_id),
                                    decision.model_dump_json().encode() if payloads is None
                                    else payloads[i], 1, False,
                                    decision.proposal_id, decision.agent_id,
                                    delivery=("decision", "")))

    @staticmethod
    def _not_recorded(decision: RiskDecision, exc: BaseException) -> None:
        log.error("decision_not_recorded", code="NOT_DURABLE", error=repr(exc),
                  proposal_id=decision.proposal_id, agent_id=decision.agent_id)

    async def _on_order_event(self, event: OrderEvent) -> None:
        self._enqueue(_Outgoing(self.topics.orders(event.agent_id), _typed_json("order_event", event),
                                1, False, event.proposal_id, event.agent_id))

    async def _on_fill(self, fill: Fill) -> None:
        self._enqueue(_Outgoing(self.topics.orders(fill.agent_id), _typed_json("fill", fill),
                                1, False, fill.proposal_id, fill.agent_id,
                                delivery=("fill", fill.exec_id)))

    async def _on_event(self, event: TradingStateChanged | Alert) -> None:
        kind = "trading_state" if isinstance(event, TradingStateChanged) else "alert"
        self._enqueue(_Outgoing(self.topics.events, _typed_json(kind, event), 1, False,
                                getattr(event, "proposal_id", None), getattr(event, "agent_id", None)))

    async def _on_command_answer(self, answer: CommandAnswer) -> None:
        self._enqueue(_Outgoing(self.topics.decisions(answer.agent_id),
                                answer.model_dump_json().encode(), 1, False,
                                answer.proposal_id, answer.agent_id,
                                delivery=("command", answer.command_id)))

    async def _on_flatten_report(self, report: FlattenReport) -> None:
        self._enqueue(_Outgoing(self.topics.events, _typed_json("flatten", report), 1, False))

    async def _command(self, agent: str, payload: bytes, *, retained: bool) -> None:
        """A bracket lifecycle command: checked like a proposal (bus/command_intake.py), made
        durable by the hook (the desk journals it and acts on it), then acknowledged. Raising
        hook: not acknowledged, delivered again."""
        from bracketgate.bus.command_intake import parse_command_payload, refusal_answer
        from bracketgate.bus.commands import CommandVerdict

        if retained:   # a broker's replay at every SUBSCRIBE: never acted on
            log.warning("command_ignored", code="RETAINED", agent_id=printable(agent, 80))
            return
        self.counters["commands"] = self.counters.get("commands", 0) + 1
        now = self._clock.now()
        if self._auth is not None and len(payload) <= self._settings.mqtt_max_payload:
            opened = self._auth.open_command(self.topics.commands(agent), agent, payload)
            if isinstance(opened, Refusal):
                log.warning("command_unauthenticated", code=str(opened.code), detail=opened.detail,
                            agent_id=printable(agent, 80))
                await self._bus.publish(refusal_answer(
                    agent, payload, CommandVerdict.REJECTED,
                    [Reason(code=opened.code, message=opened.message)], now))
                return
            payload = opened
        parsed = parse_command_payload(agent, payload, self._settings.mqtt_max_payload, now)
        if isinstance(parsed, CommandAnswer):
            log.info("command_invalid", code=str(parsed.reasons[0].code), agent_id=parsed.agent_id,
                     command_id=parsed.command_id or None, errors=len(parsed.reasons))
            await self._bus.publish(parsed)
            return
        assert self._on_command is not None
        try:
            await self._on_command(parsed)
        except Exception as exc:  # not durable: not acknowledged, the broker delivers it again
            log.error("command_not_durable", code="NOT_DURABLE", error=repr(exc),
                      command_id=parsed.command_id, agent_id=agent)
            raise _Redeliver(parsed.command_id) from exc
        log.info("command_received", command_id=parsed.command_id, agent_id=agent,
                 proposal_id=parsed.proposal_id, action=parsed.action)

    async def _on_snapshot(self, snapshot: PortfolioSnapshot) -> None:
        self._portfolio.set(snapshot.model_dump_json().encode())

    async def _on_status(self, status: Status) -> None:
        self._on_status_payload(status.model_dump_json().encode())

    def _on_status_payload(self, payload: bytes) -> None:
        self._status.set(payload)

    # ------------------------------------------------------------------ MQTT -> bus

    async def _read(self, client: aiomqtt.Client) -> None:
        """Handle each message, then acknowledge it; a proposal only once it is durable.

        What is already queued when one message arrives is taken with it (up to
        INTAKE_BATCH_MAX): its proposals are parsed, then made durable together (one journal
        commit), then each message is handled and acknowledged in the order it came."""
        messages = client.messages
        inbox = _inbox(client)
        while True:
            try:
                batch = [await anext(messages)]
            except StopAsyncIteration:
                return
            if inbox is not None:
                while len(batch) < INTAKE_BATCH_MAX:
                    try:
                        batch.append(inbox.get_nowait())
                    except asyncio.QueueEmpty:
                        break
            await self._handle(client, batch)

    async def _handle(self, client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> None:
        # (message, topic, payload, agent of a proposals topic, parsed proposal or answer)
        items: list[tuple[aiomqtt.Message, str, bytes, str | None, Any]] = []
        fresh: list[TradeProposal] = []
        taken = time.perf_counter() if stamps.ON else 0.0
        for message in batch:
            topic = message.topic.value
            raw = message.payload
            payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
            agent = self.topics.proposal_agent(topic)
            parsed: Any = None
            if agent is not None and not self._intake_open:
                parsed = _DEFER
            elif agent is not None and not message.retain:
                parsed = self._take_in(agent, payload)
                if isinstance(parsed, TradeProposal):
                    fresh.append(parsed)
            items.append((message, topic, payload, agent, parsed))
        self._intake_idle.clear()
        try:
            if fresh and len(fresh) == len(items):   # proposals only (the common case)
                if stamps.ON:
                    for p in fresh:
                        stamps.stamp(p.proposal_id, "mqtt_rx", taken)
                failure = await self._offer_while_durable(fresh)
                if failure is not None:
                    self._not_durable(fresh[0], failure)
                for message, *_ in items:
                    self._ack(client, message)
                return
            failure = await self._make_durable(fresh) if fresh else None
            if stamps.ON:
                for p in fresh:
                    stamps.stamp(p.proposal_id, "mqtt_rx", taken)
                    stamps.stamp(p.proposal_id, "proposal_journaled")
            for message, topic, payload, agent, parsed in items:
                try:
                    if agent is not None:
                        if parsed is _DEFER:
                            self._defer(topic, payload, message.mid)
                            continue  # unacknowledged: the broker delivers it on the next connection
                        if message.retain:   # a replay by the broker: answered, never offered
                            await self._refuse_retained(agent, payload)
                        elif isinstance(parsed, TradeProposal):
                            if failure is not None:
                                self._not_durable(parsed, failure)
                            await self._submit(parsed, "proposal_received")
                        else:
                            await self._answer_invalid(parsed, len(payload))
                    elif topic == self.topics.control:
                        await self._control(payload, retained=message.retain)
                    elif (cmd_agent := self.topics.command_agent(topic)) is not None:
                        await self._command(cmd_agent, payload, retained=message.retain)
                    else:  # e.g. amqtt hands out retained messages of other sessions' filters
                        log.debug("mqtt_ignored", topic=topic)
                except _Redeliver:
                    raise  # not acknowledged; ends this connection (see _make_durable)
                except (BusError, LifecycleError) as exc:
                    log.error("mqtt_inbound_failed", topic=topic, code=exc.code, error=str(exc))
                except Exception:  # a bug must not end the connection; the message is logged
                    log.exception("mqtt_inbound_failed", topic=topic, code="INTERNAL",
                                  size=len(payload))
                self._ack(client, message)
        finally:
            self._intake_idle.set()

    def _ack(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        if message.qos == 0:
            return
        rc = _paho(client).ack(message.mid, message.qos)
        if rc != paho.MQTT_ERR_SUCCESS:  # paho could not queue it: the broker delivers it again
            log.info("mqtt_ack_not_sent", topic=message.topic.value, mid=message.mid,
                     code=_rc_value(rc))

    def _defer(self, topic: str, payload: bytes, mid: int) -> None:
        self.counters["deferred"] += 1
        peek = _PROPOSAL_ID_PEEK.search(payload, 0, 4096)
        log.info("proposal_deferred", topic=topic, mid=mid, reason="intake stopped",
                 proposal_id=peek.group(1).decode("utf-8", "replace") if peek else None,
                 agent_id=self.topics.proposal_agent(topic))

    async def _refuse_retained(self, agent: str, payload: bytes) -> None:
        """A proposal delivered with the retain flag is the broker replaying a stored message
        (at every SUBSCRIBE, so at every reconnect): answered `rejected` RETAINED_PROPOSAL
        through the normal answer path (journaled, published), never offered to the gate. It
        is answered once: when the journal already knows the id (`seen_id`: it was taken in
        live, or refused before), the replay is only acknowledged. The retained message
        itself is the publisher's: the daemon never clears it.

        What is detected: mosquitto 2.0 and amqtt 0.12 forward a live publish with retain=1
        to current subscribers with retain=0 (MQTT 3.1.1 §3.3.1.3), so that one is decided
        like any proposal; the retained copy comes with retain=1 on every later SUBSCRIBE."""
        self.counters["retained"] = self.counters.get("retained", 0) + 1
        parsed = self.parse_proposal(agent, payload)
        pid = parsed.proposal_id
        with structlog.contextvars.bound_contextvars(proposal_id=pid or None, agent_id=agent):
            if pid and self._seen_id is not None:
                try:
                    known = await self._seen_id(pid)
                except Exception as exc:  # cannot tell: refusing again is the safe answer
                    log.warning("retained_lookup_failed", error=repr(exc))
                    known = False
                if known:
                    log.info("retained_proposal_replay", code=str(DenialCode.RETAINED_PROPOSAL),
                             action="acknowledged; answered before")
                    return
            log.warning("proposal_retained", code=str(DenialCode.RETAINED_PROPOSAL),
                        action="refused, never placed; the publisher should clear it")
            await self._answer(RiskDecision(
                proposal_id=pid, agent_id=agent, verdict=Verdict.REJECTED,
                reasons=[Reason(code=DenialCode.RETAINED_PROPOSAL,
                                message=DENIAL_MESSAGES[DenialCode.RETAINED_PROPOSAL])],
                ts=self._clock.now()))

    def _take_in(self, topic_agent: str, payload: bytes) -> TradeProposal | RiskDecision:
        """Every payload gets exactly one answer: the proposal goes to the gate (which answers
        it), or the bridge answers `invalid` on the topic agent's decisions topic, whatever the
        topic's agent id (an MQTT topic that took the proposal takes the answer too)."""
        self.counters["proposals"] += 1
        if _AGENT_ID.fullmatch(topic_agent) is None:
            log.warning("proposal_topic_invalid", code="INVALID_AGENT_ID",
                        topic_agent=printable(topic_agent, 80), length=len(topic_agent),
                        action="answered invalid on its decisions topic")
        if self._auth is not None and len(payload) <= self._settings.mqtt_max_payload:
            opened = self._auth.open_proposal(self.topics.proposals(topic_agent), topic_agent,
                                              payload)
            if isinstance(opened, Refusal):
                return self._unauthenticated(topic_agent, payload, opened)
            payload = opened
        try:
            return self.parse_proposal(topic_agent, payload)
        except Exception as exc:  # a payload no check foresaw: still answered, and logged
            log.exception("proposal_unparsed", code="INTERNAL", agent_id=printable(topic_agent, 80),
                          size=len(payload))
            return self._invalid(topic_agent, "", [Reason(
                code=DenialCode.VALIDATION_ERROR,
                message=f"{DENIAL_MESSAGES[DenialCode.VALIDATION_ERROR]}: it could not be "
                        f"checked ({type(exc).__name__})")])

    def _unauthenticated(self, agent: str, payload: bytes, refusal: Refusal) -> RiskDecision:
        """A proposal whose signature is missing, wrong or replayed: answered `rejected` with the
        code (journaled like every answer), never offered to the gate, and not remembered as
        the id's decision (a forger cannot burn an agent's proposal_id: see journal_ids)."""
        self.counters["unauthenticated"] = self.counters.get("unauthenticated", 0) + 1
        peek = _PROPOSAL_ID_PEEK.search(payload.replace(b'\\"', b'"'), 0, 8192)
        pid = peek.group(1).decode("utf-8", "replace") if peek else ""
        log.warning("proposal_unauthenticated", code=str(refusal.code), detail=refusal.detail,
                    proposal_id=printable(pid) or None, agent_id=printable(agent, 80))
        return RiskDecision(proposal_id=printable(pid), agent_id=printable(agent, 65_535),
                            verdict=Verdict.REJECTED,
                            reasons=[Reason(code=refusal.code, message=refusal.message)],
                            ts=self._clock.now())

    async def _intake(self, topic_agent: str, payload: bytes) -> None:
        """One payload, alone: parsed, made durable, offered (or answered)."""
        result = self._take_in(topic_agent, payload)
        if isinstance(result, RiskDecision):
            await self._answer_invalid(result, len(payload))
            return
        failure = await self._make_durable([result])
        if failure is not None:
            self._not_durable(result, failure)
        await self._submit(result, "proposal_received")

    async def _answer_invalid(self, result: RiskDecision, size: int) -> None:
        self.counters["invalid"] += 1
        with structlog.contextvars.bound_contextvars(proposal_id=result.proposal_id,
                                                     agent_id=result.agent_id):
            log.info("proposal_invalid", code=str(result.reasons[0].code),
                     errors=len(result.reasons), size=size)
            await self._answer(result)

    async def _offer_while_durable(self, proposals: list[TradeProposal]) -> BaseException | None:
        """Make the proposals durable and, while their commit is in flight, offer them to the
        gate (in order); the failure, if any. Their writes are handed to the journal first, so
        whatever the gate writes for them (an order intent, a decision) is queued behind and
        never committed before them; the caller acknowledges them only once this returned
        without a failure (a failure: not acknowledged, the broker delivers them again and the
        gate answers its own decision)."""
        durable = asyncio.get_running_loop().create_task(self._make_durable(proposals))
        await asyncio.sleep(0)   # its first step: the writes are queued before the gate runs
        try:
            for proposal in proposals:
                try:
                    await self._submit(proposal, "proposal_received")
                except (BusError, LifecycleError) as exc:
                    log.error("mqtt_inbound_failed", topic=self.topics.proposals(proposal.agent_id),
                              code=exc.code, error=str(exc))
                except Exception:  # a bug must not end the connection; the message is logged
                    log.exception("mqtt_inbound_failed", code="INTERNAL",
                                  topic=self.topics.proposals(proposal.agent_id))
            crash_point("proposal_offered")   # with the gate, its commit perhaps not returned
        finally:   # (shielded: a reader cancelled meanwhile does not cut the write short)
            failure = await asyncio.shield(durable)
        if stamps.ON:
            taken = time.perf_counter()
            for p in proposals:
                stamps.stamp(p.proposal_id, "proposal_journaled", taken)
        return failure

    async def _make_durable(self, proposals: list[TradeProposal]) -> BaseException | None:
        """Run the hook over the proposals that came together; the failure, if any (then none
        of them is acknowledged: see _not_durable)."""
        try:
            if self._on_proposals is not None:
                await self._on_proposals(proposals)
            elif self._on_proposal is not None:
                for proposal in proposals:
                    await self._on_proposal(proposal)
        except Exception as exc:  # any failure: not durable, so not acknowledged (see module doc)
            return exc
        self._not_durable_streak = 0
        return None

    def _not_durable(self, proposal: TradeProposal, exc: BaseException) -> None:
        """End the connection so that the broker delivers it (and what came after) again."""
        self.counters["not_durable"] += 1
        self._not_durable_streak += 1
        log.error("proposal_not_durable", code="NOT_DURABLE", error=repr(exc),
                  proposal_id=proposal.proposal_id, agent_id=proposal.agent_id,
                  streak=self._not_durable_streak, action="reconnect for redelivery")
        raise _Redeliver(proposal.proposal_id) from exc

    async def _submit(self, proposal: TradeProposal, event: str) -> None:
        # the gate is behind: hold back (unacknowledged, the broker keeps the rest) for a while
        # before refusing; a backlog drained after a restart is decided, not answered OVERLOADED
        if self._bus.state is BusState.OPEN:
            await self._bus.wait_for_room(TradeProposal, INTAKE_ROOM_WAIT_S)
        if self._bus.offer(proposal):
            log.info(event, proposal_id=proposal.proposal_id, agent_id=proposal.agent_id,
                     symbol=proposal.symbol, side=proposal.side.value, quantity=proposal.quantity)
        else:
            self.counters["overloaded"] += 1
            with structlog.contextvars.bound_contextvars(proposal_id=proposal.proposal_id,
                                                         agent_id=proposal.agent_id):
                log.warning("proposal_refused", code=str(DenialCode.OVERLOADED))
                await self._answer(self._refusal(proposal, DenialCode.OVERLOADED))

    async def resubmit(self, proposal: TradeProposal) -> None:
        """Offer a proposal that was durable (journaled, so acknowledged) but never decided —
        the daemon stopped in between — to the gate again: the broker will not send it again.
        Refused like any other when the intake queue is full."""
        await self._submit(proposal, "proposal_resubmitted")

    def parse_proposal(self, topic_agent: str, payload: bytes) -> TradeProposal | RiskDecision:
        """A valid TradeProposal, or the `invalid` RiskDecision that answers the payload.

        Whatever the bytes: not UTF-8, not JSON, NaN, 1e400, ints past Python's 4,300 digits,
        duplicate keys, nesting past MAX_JSON_DEPTH (or past the parser's recursion limit),
        lone surrogates in any key or string, not an object, too large. The answer itself
        always encodes (every string in it is `printable`).
        """
        limit = self._settings.mqtt_max_payload
        if len(payload) > limit:
            peek = _PROPOSAL_ID_PEEK.search(payload, 0, 4096)
            return self._invalid(topic_agent, peek.group(1).decode("utf-8", "replace") if peek else "", [
                Reason(code=DenialCode.PAYLOAD_TOO_LARGE, message=DENIAL_MESSAGES[DenialCode.PAYLOAD_TOO_LARGE],
                       limit=float(limit), value=float(len(payload)))])
        try:
            data = _load_json(payload.decode("utf-8"))
        except _DuplicateKey as exc:
            return self._invalid(topic_agent, "", [Reason(
                code=DenialCode.VALIDATION_ERROR, field=printable(exc.key, 128),
                message=f"{DENIAL_MESSAGES[DenialCode.VALIDATION_ERROR]}: duplicate key")])
        except RecursionError:
            return self._invalid(topic_agent, "", [Reason(
                code=DenialCode.MALFORMED_JSON,
                message=f"{DENIAL_MESSAGES[DenialCode.MALFORMED_JSON]}: nested too deep to parse")])
        except (UnicodeDecodeError, ValueError) as exc:
            return self._invalid(topic_agent, "", [Reason(
                code=DenialCode.MALFORMED_JSON,
                message=f"{DENIAL_MESSAGES[DenialCode.MALFORMED_JSON]}: {printable(str(exc))}")])
        if not isinstance(data, dict):
            return self._invalid(topic_agent, "", [Reason(
                code=DenialCode.MALFORMED_JSON,
                message=f"{DENIAL_MESSAGES[DenialCode.MALFORMED_JSON]}: got {type(data).__name__}")])
        raw_id = data.get("proposal_id")
        proposal_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 256 else ""
        # a lone surrogate comes only from a \u escape (UTF-8 cannot carry one), depth only from
        # a nested value: a flat payload without escapes has neither to look for
        bad = _unencodable(data) if b"\\u" in payload or any(
            isinstance(v, dict | list) for v in data.values()) else None
        if bad is not None:
            code, where, why = bad
            return self._invalid(topic_agent, proposal_id, [Reason(
                code=code, field=printable(where, 128) or None,
                message=f"{DENIAL_MESSAGES[code]}: {why}")])
        reasons: list[Reason] = []
        given_agent = data.get("agent_id")
        if given_agent is not None and given_agent != topic_agent:
            reasons.append(Reason(code=DenialCode.VALIDATION_ERROR, field="agent_id",
                                  message=f"agent_id in the payload contradicts the topic ({topic_agent!r})",
                                  value=_reason_value(given_agent)))
        data["agent_id"] = topic_agent
        try:
            proposal = TradeProposal.model_validate(data)   # parsed once: from the dict
        except ValidationError as exc:
            reasons.extend(validation_reasons(exc))
        else:
            if not reasons:
                return proposal
        return self._invalid(topic_agent, proposal_id, reasons)

    def _invalid(self, agent_id: str, proposal_id: str, reasons: list[Reason]) -> RiskDecision:
        """The `invalid` answer. The ids are echoed `printable` (a topic's agent id is UTF-8
        already, so it is the answer's topic unchanged; see _intake)."""
        return RiskDecision(proposal_id=printable(proposal_id),
                            agent_id=printable(agent_id, 65_535), verdict=Verdict.INVALID,
                            reasons=reasons, ts=self._clock.now())

    def _refusal(self, proposal: TradeProposal, code: DenialCode) -> RiskDecision:
        return RiskDecision(proposal_id=proposal.proposal_id, agent_id=proposal.agent_id,
                            verdict=Verdict.REJECTED,
                            reasons=[Reason(code=code, message=DENIAL_MESSAGES[code])],
                            ts=self._clock.now())

    async def _answer(self, decision: RiskDecision) -> None:
        """Our own decisions go through the bus (journal, logs) and come back out via _on_decision."""
        try:
            await self._bus.publish(decision)
        except (BusError, LifecycleError) as exc:
            log.warning("decision_bus_unavailable", code=exc.code, error=str(exc))
            await self._on_decision(decision)

    async def _control(self, payload: bytes, *, retained: bool) -> None:
        if retained:
            log.warning("control_ignored", code="RETAINED",
                        reason="retained control commands would replay on every reconnect")
            return
        if len(payload) > self._settings.mqtt_max_payload:
            log.warning("control_invalid", code=str(DenialCode.PAYLOAD_TOO_LARGE), size=len(payload))
            return
        if self._auth is not None:
            opened = self._auth.open_control(self.topics.control, payload)
            if isinstance(opened, Refusal):   # journaled and published as an Alert
                self.counters["controls_refused"] = self.counters.get("controls_refused", 0) + 1
                log.warning("control_refused", code=str(opened.code), detail=opened.detail)
                await self._bus.publish(Alert(code=str(opened.code),
                                              message=f"control command refused: {opened.message}",
                                              ts=self._clock.now()))
                return
            payload = opened
        try:
            command = ControlCommand.model_validate_json(payload)
        except ValidationError as exc:
            json_error = any(e["type"] == "json_invalid" for e in exc.errors())
            code = DenialCode.MALFORMED_JSON if json_error else DenialCode.VALIDATION_ERROR
            log.warning("control_invalid", code=str(code),
                        errors=[f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()])
            return
        self.counters["controls"] += 1
        log.info("control_received", action=command.action, reason=command.reason, by=command.by)
        await self._bus.publish(command)
