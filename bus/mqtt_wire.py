"""The wire under the MQTT bridge's aiomqtt client, made cheap per packet (issue 9).

At a few thousand proposals a second the bridge moves four small packets per proposal (the
proposal's PUBLISH in, our PUBACK out, the decision's PUBLISH out, the broker's PUBACK in), and
stock paho + aiomqtt spend more on each than the daemon spends deciding it:

  writes    every queued packet asks aiomqtt for a writer callback (call_soon_threadsafe: a
            self-pipe write, then add_writer / remove_writer), and paho send()s each packet
            alone: one loopback TCP transmission (and one wake-up of the broker) per packet.
            `tune()`: a burst is written from a plain `loop.call_soon`, in ONE send() of the
            queued packets joined (`coalesce`); aiomqtt's writer registration takes over only
            while the socket is full.
  reads     paho reads each packet with three recv() calls (type, length, body). `tune()`: one
            recv() of up to READ_CHUNK bytes feeds them from a buffer, and loop_read goes on
            while the buffer holds bytes (nothing waits in it for the next readable event). An
            MQTT 3.1.1 PUBACK (two bytes: the mid) is read without paho's decoder, which builds
            a ReasonCode and a Properties object for each.
  publishes aiomqtt's publish() is a task, an asyncio.Event, a wait_for and a scan of every
            pending call per message. `send_outbox` publishes through paho directly and waits
            on one event (`Wire.wake`), set by paho's on_publish (chained after aiomqtt's own)
            and by whoever fills the outbox.

The bytes on the wire and their order are exactly paho's; what paho believes sent is in the
kernel's socket buffer, as before; a packet whose completion paho acts on (a QoS 0 PUBLISH, a
DISCONNECT) is never merged. QoS 1 semantics are unchanged: a message leaves the outbox only once
its PUBACK came, and what is unacknowledged when a connection ends goes back to its front.

These reach paho's internals (`_out_packet`, `_sock_recv`, `_sock`, `_handle_pubackcomp`, ...),
measured with paho-mqtt 2.2.0 (pinned in requirements.txt); `tune()` refuses a client without
them, and tests/integration/test_mqtt_wire.py fails if they change.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bracketgate.bus.errors import MqttError
from bracketgate.core import stamps

# one recv() takes up to this much (a burst of PUBLISHes and PUBACKs at once)
READ_CHUNK = 64 * 1024   # under malloc's mmap threshold: no mmap/munmap per recv()
# a merged packet is at most about this large (then the next one starts)
MERGE_MAX = 64 * 1024
# packets handled per read callback before the loop gets a turn (the rest: call_soon)
READ_PACKETS_MAX = 4096

_PUBLISH = paho.PUBLISH   # 0x30
_DISCONNECT = paho.DISCONNECT   # 0xE0
_MERGED = paho.PUBACK   # the command of a merged packet: one paho does nothing on completing
_SUCCESS = paho.MQTT_ERR_SUCCESS
# what paho hands on_publish for every MQTT 3.1.1 PUBACK (its defaults; never read by aiomqtt)
_PUBACK_RC = ReasonCode(PacketTypes.PUBACK)
_PUBACK_PROPS = Properties(PacketTypes.PUBACK)


def _own_completion(pkt: dict[str, Any]) -> bool:
    """paho acts when this packet is written (on_publish of QoS 0, DISCONNECT): never merged."""
    cmd = pkt["command"] & 0xF0
    return cmd == _DISCONNECT or (cmd == _PUBLISH and pkt["qos"] == 0)


def coalesce(out: deque[Any]) -> None:
    """Join runs of queued packets (paho's `_out_packet`) into single packets, in order; what
    is left of a partly written one (its `pos`) is taken from where paho stopped."""
    if len(out) < 2:
        return
    merged: deque[Any] = deque()
    run: list[bytes] = []
    size = 0
    first: dict[str, Any] | None = None

    def close_run() -> None:
        nonlocal run, size, first
        if first is not None:
            if len(run) == 1:
                merged.append(first)
            else:
                data = b"".join(run)
                merged.append({"command": _MERGED, "mid": 0, "qos": 0, "pos": 0,
                               "to_process": len(data), "packet": data, "info": None})
        run, size, first = [], 0, None

    for pkt in out:
        if _own_completion(pkt):
            close_run()
            merged.append(pkt)
            continue
        data = pkt["packet"]
        if pkt["pos"]:
            data = data[pkt["pos"]:]
        if first is not None and size + len(data) > MERGE_MAX:
            close_run()
        if first is None:
            first = pkt
        run.append(bytes(data))
        size += len(data)
    close_run()
    if len(merged) < len(out):
        out.clear()
        out.extend(merged)


class Wire:
    """The tuned paths of one aiomqtt client (see the module docstring). Made on the loop that
    runs the client, before it connects; `wake` (given, or its own) is set at each PUBACK."""

    def __init__(self, client: aiomqtt.Client, inner: paho.Client,
                 wake: asyncio.Event | None = None) -> None:
        for name in ("_out_packet", "_sock_recv", "_sock", "loop_read", "loop_write",
                     "want_write", "on_socket_register_write", "on_socket_unregister_write",
                     "on_publish", "_in_packet",
                     "_handle_pubackcomp", "_do_on_publish", "_out_messages",
                     "_out_message_mutex"):
            if not hasattr(inner, name):
                raise MqttError(f"paho-mqtt {getattr(paho, '__version__', '?')} has no `{name}`:"
                                " bus/mqtt_wire.py must be adapted")
        self.client = client
        self.inner = inner
        self.loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.wake = wake if wake is not None else asyncio.Event()
        self.stats = {"write_bursts": 0, "sends_saved": 0, "recvs": 0, "reads_buffered": 0}
        self._write_scheduled = False
        self._aio_register_write = inner.on_socket_register_write   # aiomqtt's (add_writer)
        self._aio_unregister_write = inner.on_socket_unregister_write   # (remove_writer)
        self._aio_writer = False   # a writer registration was handed to aiomqtt
        self._aio_on_publish = inner.on_publish                     # aiomqtt's (its events)
        self._raw_recv = inner._sock_recv
        self._raw_loop_read = inner.loop_read
        self._buf = b""
        self._pos = 0
        self._buf_sock: Any = None
        self._drained = False   # the last recv() took less than asked: the socket had no more
        self._read_more_scheduled = False
        inner.on_socket_register_write = self._register_write
        inner.on_socket_unregister_write = self._unregister_write
        inner.on_publish = self._on_publish
        inner._sock_recv = self._recv            # type: ignore[method-assign]
        inner.loop_read = self._loop_read        # type: ignore[method-assign]
        self._raw_pubackcomp = inner._handle_pubackcomp
        if getattr(inner, "_protocol", None) in (paho.MQTTv31, paho.MQTTv311):
            inner._handle_pubackcomp = self._pubackcomp   # type: ignore[method-assign]

    # -- writes
    def _register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._thread:   # paho's connect, in aiomqtt's executor
            self._aio_writer = True
            self._aio_register_write(client, userdata, sock)
            return
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._write_scheduled = False
        inner = self.inner
        if inner._sock is None:
            return
        out = inner._out_packet
        before = len(out)
        coalesce(out)
        self.stats["write_bursts"] += 1
        self.stats["sends_saved"] += before - len(out)
        try:
            inner.loop_write()
        except Exception as exc:  # as aiomqtt's own writer callback: the connection is broken
            self._broken(exc)
            return
        if inner.want_write() and inner._sock is not None:
            # the socket is full: wait until it is writable, aiomqtt's way (add_writer); paho
            # still counts this registration as its own, and unregisters it when drained
            self._aio_writer = True
            self._aio_register_write(inner, inner._userdata, inner._sock)

    def _unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        """paho's "nothing left to write": aiomqtt's remove_writer, when it has a writer."""
        if self._aio_writer:
            self._aio_writer = False
            self._aio_unregister_write(client, userdata, sock)

    def _broken(self, exc: BaseException) -> None:
        disconnected = getattr(self.client, "_disconnected", None)
        if isinstance(disconnected, asyncio.Future):
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        raise exc

    def _on_publish(self, *args: Any) -> None:
        self._aio_on_publish(*args)
        self.wake.set()

    # -- reads
    def _pubackcomp(self, cmd: str) -> Any:
        """A PUBACK of MQTT 3.1.1 (two bytes: the mid) without paho's decoder, which builds a
        ReasonCode and a Properties object for it (3.1.1 has neither: paho passes defaults)."""
        inner = self.inner
        packet = inner._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return self._raw_pubackcomp(cmd)   # paho's own, with its MalformedPacket
        mid = (packet[0] << 8) | packet[1]
        inner._easy_log(paho.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with inner._out_message_mutex:
            if mid in inner._out_messages:
                return inner._do_on_publish(mid, _PUBACK_RC, _PUBACK_PROPS)
        return _SUCCESS

    def _recv(self, bufsize: int) -> bytes:
        sock = self.inner._sock
        if sock is not self._buf_sock:   # a new connection: nothing of the old one is kept
            self._buf, self._pos, self._buf_sock, self._drained = b"", 0, sock, False
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            if self._drained:
                # the last recv() emptied the socket: its EAGAIN is known without a syscall;
                # what came since makes the (level-triggered) selector call us again
                self._drained = False
                raise BlockingIOError
            data = self._raw_recv(READ_CHUNK)   # raises what paho expects (BlockingIOError, ...)
            self.stats["recvs"] += 1
            self._drained = 0 < len(data) < READ_CHUNK
            if len(data) <= bufsize:
                self._buf, self._pos = b"", 0
                return data
            self._buf, self._pos = buf, pos = data, 0
        else:
            self.stats["reads_buffered"] += 1
        end = pos + bufsize
        self._pos = end
        return buf[pos:end]

    def buffered(self) -> int:
        """Bytes read from the socket and not yet handed to paho."""
        return len(self._buf) - self._pos if self.inner._sock is self._buf_sock else 0

    def _loop_read(self, max_packets: int = 1) -> Any:
        rc = self._raw_loop_read(max_packets)
        handled = 1
        while rc == _SUCCESS and self.buffered() and self.inner._sock is not None:
            if handled >= READ_PACKETS_MAX:   # the loop gets a turn; the rest right after
                if not self._read_more_scheduled:
                    self._read_more_scheduled = True
                    self.loop.call_soon(self._read_more)
                break
            rc = self._raw_loop_read(max_packets)
            handled += 1
        return rc

    def _read_more(self) -> None:
        self._read_more_scheduled = False
        if self.inner._sock is None:
            return
        try:
            self._loop_read()
        except Exception as exc:  # as aiomqtt's own reader callback
            self._broken(exc)


def tune(client: aiomqtt.Client, inner: paho.Client, wake: asyncio.Event | None = None) -> Wire:
    """Put the tuned paths (module docstring) on `client` (its paho client `inner`)."""
    return Wire(client, inner, wake)


async def send_outbox(wire: Wire, outbox: deque[Any], idle: asyncio.Event,
                      on_acked: Callable[[Any], None], window: int, timeout: float) -> None:
    """Send `outbox` in order through paho, up to `window` awaiting their PUBACK at once;
    `on_acked(item)` for each, in order, once the broker acknowledged it (QoS 0: once written).
    It wakes on `wire.wake`: set by whoever appends to `outbox` and by each PUBACK. A PUBACK
    later than `timeout` s ends the connection (aiomqtt.MqttError, as aiomqtt's own publish).
    Returns only by raising (the connection ended) or being cancelled; then what is not
    acknowledged goes back to the front of `outbox`, in order (QoS 1: a repeat is possible, a
    loss is not). `idle` is set whenever nothing is queued or awaiting its PUBACK."""
    inner = wire.inner
    loop = wire.loop
    wake = wire.wake
    # (item, paho's MQTTMessageInfo, loop time sent), oldest first
    inflight: deque[tuple[Any, paho.MQTTMessageInfo, float]] = deque()
    try:
        while True:
            while outbox and len(inflight) < window:
                item = outbox[0]
                info = inner.publish(item.topic, item.payload, item.qos, item.retain)
                if info.rc != _SUCCESS:
                    raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
                outbox.popleft()
                inflight.append((item, info, loop.time()))
                if stamps.ON and item.proposal_id:
                    stamps.stamp(item.proposal_id, "mqtt_out_" + item.topic.split("/", 2)[1])
            while inflight and inflight[0][1].is_published():
                on_acked(inflight.popleft()[0])
            if outbox and len(inflight) < window:
                continue
            # nothing between the checks above and this clear can set it (one thread, no await)
            wake.clear()
            if not inflight:
                idle.set()
                await wake.wait()
                continue
            wait = inflight[0][2] + timeout - loop.time()
            if wait <= 0:
                raise aiomqtt.MqttError("Operation timed out")
            try:
                async with asyncio.timeout(wait):
                    await wake.wait()
            except TimeoutError:
                pass   # the oldest's deadline is checked above
    finally:
        # not acknowledged: sent again, in order, after reconnect
        outbox.extendleft(reversed([item for item, info, _ in inflight
                                    if not _acknowledged(info)]))


def _acknowledged(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (ValueError, RuntimeError):
        return False
