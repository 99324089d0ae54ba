"""The daemon's one HTTP port: the dashboard at /, /metrics, /healthz, /api/state, /events (SSE).

Read-only and loopback by default (config/settings.py refuses another HTTP_HOST without
HTTP_ALLOW_REMOTE): GET and HEAD only (405 otherwise), a Host header naming this machine
(DNS rebinding), one request per connection, bounded request size, time and connections.
A minimal HTTP/1.1 server on asyncio streams (docs/OPERATIONS.md says why not a library):
every answer is built from what the Observer (core/metrics.py) already holds, so nothing here
blocks the loop; /events pushes the dashboard's state when it changes (at most 4 times a second).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bracketgate.bus.errors import ConfigError
from bracketgate.config.settings import is_loopback_host
from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.http")

STATIC = Path(__file__).resolve().parent / "dashboard"
MAX_LINE = 8192               # request line or one header
MAX_HEADERS = 64
HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64          # at once; beyond that a connection is closed at once
MAX_STREAMS = 8               # /events clients at once (503 beyond)
PUSH_MIN_INTERVAL_S = 0.25
KEEPALIVE_S = 15.0
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
_STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                 "/app.css": ("app.css", "text/css; charset=utf-8")}
_SECURITY_HEADERS = (
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
    "X-Frame-Options: DENY\r\nCache-Control: no-store\r\n"
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'\r\n")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    """Lifecycle: start() binds (raising ConfigError when it cannot), stop() closes every
    connection, streams included."""

    def __init__(self, observer: Any, host: str = "127.0.0.1", port: int = 0, *,
                 allow_remote: bool = False) -> None:
        self.observer = observer
        self.host, self.port = host, port
        self.allow_remote = allow_remote
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._streams = 0
        self._static = {path: (STATIC / name).read_bytes() for path, (name, _) in
                        _STATIC_FILES.items()}
        self.requests = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._on_connect, self.host, self.port,
                                                      limit=MAX_LINE, reuse_address=True)
        except OSError as e:
            raise ConfigError(f"HTTP_HOST={self.host} HTTP_PORT={self.port}: cannot listen "
                              f"({e.strerror or e})", code="HTTP_BIND") from e
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http_listening", url=self.url, paths=["/", "/metrics", "/healthz",
                                                        "/api/state", "/events"])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ one connection

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._conns) >= MAX_CONNECTIONS or task is None:
            writer.close()
            return
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("http_error")
        finally:
            self._conns.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, headers = await asyncio.wait_for(_read_head(reader), HEADER_TIMEOUT_S)
        except HttpError as e:
            await _send(writer, e.status, "text/plain; charset=utf-8", f"{e}\n".encode())
            return
        self.requests += 1
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await _send(writer, 405, "text/plain; charset=utf-8",
                        b"read-only: GET and HEAD only\n", extra="Allow: GET, HEAD\r\n")
            return
        if not self.allow_remote and not _host_ok(headers.get("host", "")):
            await _send(writer, 403, "text/plain; charset=utf-8",
                        b"the Host header must name this machine (127.0.0.1 or localhost)\n")
            return
        route = path.split("?", 1)[0]
        obs = self.observer
        if route == "/metrics":
            await _send(writer, 200, CONTENT_TYPE_LATEST, generate_latest(obs.registry),
                        head_only)
        elif route == "/healthz":
            ready, reason, detail = obs.readiness()
            body = {"status": "ready"} if ready else \
                {"status": "not_ready", "reason": reason, "detail": detail}
            await _send(writer, 200 if ready else 503, "application/json",
                        json.dumps(body).encode(), head_only)
        elif route == "/api/state":
            await _send(writer, 200, "application/json", _state_json(obs), head_only)
        elif route == "/events":
            await self._stream(writer, head_only)
        elif route in _STATIC_FILES:
            await _send(writer, 200, _STATIC_FILES[route][1], self._static[route], head_only)
        else:
            await _send(writer, 404, "text/plain; charset=utf-8", b"not found\n", head_only)

    async def _stream(self, writer: asyncio.StreamWriter, head_only: bool) -> None:
        """Server-Sent Events: the state at once, then whenever it changes (throttled)."""
        if self._streams >= MAX_STREAMS:
            await _send(writer, 503, "text/plain; charset=utf-8", b"too many streams\n")
            return
        writer.write(("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      "Connection: close\r\n" + _SECURITY_HEADERS + "\r\n").encode())
        await writer.drain()
        if head_only:
            return
        obs = self.observer
        self._streams += 1
        obs.listeners += 1
        try:
            loop = asyncio.get_running_loop()
            sent, series_sent = -1, None
            while True:
                if not await obs.changed(sent, KEEPALIVE_S):
                    writer.write(b": keepalive\n\n")
                    await writer.drain()
                    continue
                sent = obs.version
                state = obs.state()
                series = state["pnl_series"]
                mark = (len(series), tuple(series[-1]) if series else None)
                if mark == series_sent:
                    state["pnl_series"] = None     # unchanged: the page keeps the one it has
                series_sent = mark
                writer.write(b"event: state\ndata: " + _json(state) + b"\n\n")
                await writer.drain()
                next_at = loop.time() + PUSH_MIN_INTERVAL_S
                await asyncio.sleep(max(0.0, next_at - loop.time()))   # a rate limit
        finally:
            self._streams -= 1
            obs.listeners -= 1


def _state_json(obs: Any) -> bytes:
    return _json(obs.state())


def _json(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":"), allow_nan=False, default=str).encode()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request line too long") from None
    parts = line.decode("latin-1").strip().split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[1].startswith("/"):
        raise HttpError(400, "bad request line")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, "header too long") from None
        text = raw.decode("latin-1").strip()
        if not text:
            return parts[0].upper(), parts[1], headers
        name, sep, value = text.partition(":")
        if not sep:
            raise HttpError(400, "bad header")
        headers[name.strip().lower()] = value.strip()
    raise HttpError(431, "too many headers")


def _host_ok(host: str) -> bool:
    """The Host header names a loopback address or localhost (any port)."""
    name = host.strip()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return bool(name) and is_loopback_host(name)


async def _send(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes,
                head_only: bool = False, extra: str = "") -> None:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}{_SECURITY_HEADERS}\r\n")
    writer.write(head.encode() + (b"" if head_only else body))
    await writer.drain()


async def start_http(settings: Any, observer: Any) -> HttpServer | None:
    """The HTTP port as configured: HTTP_PORT given (0 = a free one), or unset in default mode
    (a free one); unset in paper/live: none (a port a supervisor polls is chosen, not found)."""
    port = settings.http_port
    if port is None and settings.mode != "default":
        log.info("http_disabled", reason="HTTP_PORT is not set (paper/live)",
                 hint="set HTTP_PORT (0 = any free port, written to DATA_DIR/endpoints.json)")
        return None
    server = HttpServer(observer, settings.http_host, port or 0,
                        allow_remote=settings.http_allow_remote)
    await server.start()
    observer.http_url = server.url
    return server
