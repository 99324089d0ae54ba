"""The one log configuration: structlog JSON lines on stdout (console renderer only on a TTY).

Our own events take a fast path: `get_logger`'s Logger filters by level itself and, while
the JSON configuration is the current one, runs that configuration's processors as plain
calls and writes the line: the same keys in the same order as structlog's level-filtering
bound logger would write, ~7 µs instead of ~11-12 µs for the gate's decision line to a null
stream (no bound-logger proxy, no processor loop, no renderer object). A line with positional
arguments or exc_info, the console renderer and capture_logs take structlog's own path. A hot
path can also ask whether a level is on and skip building a line nobody will write; the
line's JSON encoder and its timestamp are built once, not per line. Stdlib logging (ib_async,
aiomqtt, amqtt) is routed through structlog's
ProcessorFormatter into the same stream with the same keys, so every line of the process is
one JSON object: `event`, `level`, `timestamp`, `logger`, plus the context bound per unit of
work (`proposal_id`, `agent_id`, `order_id`, `code`).
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import sys
import threading
import time
from asyncio import _get_running_loop
from typing import Any, Literal, TextIO

import structlog
from structlog._config import _CONFIG   # what structlog's lazy proxy reads on every call
from structlog.contextvars import STRUCTLOG_KEY_PREFIX

from bracketgate.core.fastjson import encoder

LogFormat = Literal["auto", "json", "console"]

_SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key")
_secret_key_cache: dict[str, bool] = {}
# the keys of a line (in order) -> those of them that name a secret; lines repeat their keys
_secret_keys_of: dict[tuple[str, ...], tuple[str, ...]] = {}


def _is_secret(key: str) -> bool:
    hit = _secret_key_cache.get(key)
    if hit is None:
        if len(_secret_key_cache) > 4096:
            _secret_key_cache.clear()
        hit = _secret_key_cache[key] = any(w in key.lower() for w in _SECRET_WORDS)
    return hit


def _redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    keys = tuple(event)
    secret = _secret_keys_of.get(keys)
    if secret is None:
        if len(_secret_keys_of) > 4096:
            _secret_keys_of.clear()
        secret = _secret_keys_of[keys] = tuple(k for k in keys if _is_secret(k))
    for key in secret:
        event[key] = "***"
    return event


def _add_level_and_name(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["level"] = "warning" if method == "warn" else method
    name = event.pop("logger_name", None)   # bound by get_logger ("logger" is reserved there)
    if name is not None:
        event["logger"] = name
    return event


def _json_fallback(obj: Any) -> Any:
    """What JSON cannot take: its `__structlog__()`, else its repr (as structlog's renderer)."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


# the line's encoder, built once (core/fastjson.py): json.dumps(event, default=...)'s output
_encode = encoder(_json_fallback, separators=(", ", ": "), allow_nan=True)


def _dumps(event: dict[str, Any], **_kw: Any) -> str:
    """JSONRenderer's serializer (its keyword arguments are ours already)."""
    return _encode(event)


_second: tuple[int, str] = (-1, "")   # (a UTC second, its "YYYY-MM-DDTHH:MM:SS")


def _stamp_iso_utc(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """`timestamp` as ISO 8601 UTC with microseconds (`2026-11-20T15:00:00.123456Z`, always six
    digits): the date and time formatted once per second, not once per line."""
    global _second
    t = time.time()
    sec = int(t)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    event["timestamp"] = f"{cached[1]}.{min(999_999, int((t - sec) * 1e6)):06d}Z"
    return event


class _LockedWriter:
    """One stream shared by our fast path and the stdlib handler: whole lines, never mixed.

    On a stream with a file descriptor (stdout, a file), the lines an event-loop step writes
    go out as one write when the step's callbacks are done (`loop.call_soon`), not one
    syscall each (unbuffered stdout made that a fifth of the daemon's loop under load). A
    line from a thread without a running loop, or from the stdlib handler, first writes out
    what is pending, so lines keep their order; at most PENDING_MAX wait; exit writes the rest.
    """

    PENDING_MAX = 256

    def __init__(self, stream: TextIO, lock: Any) -> None:
        self._stream = stream
        self._lock = lock
        self._pending: list[str] = []
        self._armed: Any = None          # the loop a drain is scheduled on
        try:
            stream.fileno()
            self._coalesce = True
            atexit.register(self._drain_at_exit)
        except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is both
            self._coalesce = False       # an in-memory stream: each line at once, as written

    def msg(self, message: str) -> None:
        loop = _get_running_loop() if self._coalesce else None
        with self._lock:
            if loop is not None:
                pending = self._pending
                pending.append(message)
                if self._armed is not loop:
                    loop.call_soon(self.drain)
                    self._armed = loop
                elif len(pending) >= self.PENDING_MAX:
                    self.drain_locked()
                return
            if self._pending:
                self.drain_locked()
            self._stream.write(message + "\n")
            self._stream.flush()

    def drain(self) -> None:
        with self._lock:
            self._armed = None
            self.drain_locked()

    def _drain_at_exit(self) -> None:
        try:
            self.drain()
        except (OSError, ValueError):   # the stream closed first: nothing left to write to
            pass

    def drain_locked(self) -> None:
        """Write out the pending lines (the caller holds the lock)."""
        if self._pending:
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            self._stream.write(text)
            self._stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _LockedStreamHandler(logging.StreamHandler):
    def __init__(self, stream: TextIO, lock: Any, writer: _LockedWriter) -> None:
        super().__init__(stream)
        self.lock = lock  # the same lock as the fast path
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:
            self._writer.drain_locked()   # the fast path's pending lines first: one order
            super().emit(record)


class _JsonLines:
    """The JSON configuration's own chain, run without structlog's machinery: the same
    processors in the same order (merge_contextvars, _add_level_and_name, _stamp_iso_utc,
    _redact_secrets, the renderer), so the same line with the same keys in the same order,
    for a line without positional arguments or exc_info (those take structlog's path).

    It stands for the chain it was built with only while that chain is the configured one
    (`Logger` checks the list object and its renderer: capture_logs edits the list in place)."""

    __slots__ = ("processors", "renderer", "count", "write", "wrapper", "factory")

    def __init__(self, processors: list[Any], renderer: Any, writer: _LockedWriter) -> None:
        self.processors = processors
        self.wrapper: Any = None    # structlog's wrapper class and logger factory, once configured
        self.factory: Any = None
        self.renderer = renderer
        self.count = len(processors)
        self.write = writer.msg

    def current(self, procs: Any) -> bool:
        return procs is self.processors and len(procs) == self.count and procs[-1] is self.renderer

    def emit(self, method: str, name: str, event: str, kw: dict[str, Any]) -> None:
        # structlog's event dict: the bound context (logger_name, popped again below), the
        # keywords, then "event"; merge_contextvars adds what the keywords do not set
        kw["event"] = event
        for var, value in _copy_context().items():
            if value is not Ellipsis:
                vname = var.name
                if vname.startswith(STRUCTLOG_KEY_PREFIX):
                    kw.setdefault(vname[_PREFIX_LEN:], value)
        kw["level"] = "warning" if method == "warn" else method
        kw["logger"] = name
        _stamp_iso_utc(None, method, kw)
        _redact_secrets(None, method, kw)
        self.write(_dumps(kw))


_copy_context = contextvars.copy_context
_PREFIX_LEN = len(STRUCTLOG_KEY_PREFIX)
_json_lines: _JsonLines | None = None   # the current JSON configuration's fast chain


def configure_logging(fmt: LogFormat = "auto", level: str = "INFO", stream: Any = None) -> None:
    """Configure structlog and stdlib logging once per process. Idempotent."""
    global _json_lines
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    timestamper = _stamp_iso_utc
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if use_console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    lock = threading.RLock()  # logging.Handler re-acquires its lock inside flush()
    writer = _LockedWriter(stream, lock)
    level_no = logging.getLevelName(level.upper())
    if not isinstance(level_no, int):
        level_no = logging.INFO
    processors = [
        structlog.contextvars.merge_contextvars,
        _add_level_and_name,
        timestamper,
        _redact_secrets,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    _json_lines = None
    if not use_console:
        lines = _JsonLines(processors, renderer, writer)
        lines.wrapper, lines.factory = _CONFIG.default_wrapper_class, _CONFIG.logger_factory
        _json_lines = lines
    # third-party stdlib loggers: same stream, same keys
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
            _redact_secrets,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = _LockedStreamHandler(stream, lock, writer)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bracketgate", False):
            root.removeHandler(old)
    handler._bracketgate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level_no)
    # Chatty third-party loggers: keep their warnings, drop their per-message debug noise.
    for name, lvl in (("ib_async", "WARNING"), ("ib_insync", "WARNING"), ("amqtt", "WARNING"),
                      ("transitions", "WARNING"), ("aiomqtt", "INFO"), ("asyncio", "WARNING")):
        logging.getLogger(name).setLevel(lvl)


class Logger:
    """A module-level logger whose every line carries `logger=<name>`.

    It follows a later configure_logging() (or structlog.testing.capture_logs) as structlog's
    lazy proxy does, but assembles its bound logger once per configuration instead of on every
    call. `is_enabled_for(logging.INFO)` says whether a line at that level would be written.
    """

    __slots__ = ("_name", "_bound", "_procs", "_wrapper", "_factory", "_levels", "_lines")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._levels: dict[int, bool] = {}     # level -> written, for this configuration
        self._procs: Any = None
        self._wrapper: Any = None
        self._factory: Any = None
        self._lines: _JsonLines | None = None  # the JSON fast chain of this configuration

    def bound(self) -> Any:
        """The bound logger for the current structlog configuration."""
        cfg = _CONFIG
        if (cfg.default_processors is not self._procs or cfg.default_wrapper_class
                is not self._wrapper or cfg.logger_factory is not self._factory):
            self._procs, self._wrapper = cfg.default_processors, cfg.default_wrapper_class
            self._factory = cfg.logger_factory
            self._bound = structlog.get_logger(logger_name=self._name).bind()
            self._levels = {}
            lines = _json_lines
            self._lines = lines if (lines is not None and lines.processors is self._procs
                                    and lines.wrapper is self._wrapper
                                    and lines.factory is self._factory) else None
        return self._bound

    def is_enabled_for(self, level: int) -> bool:
        """Would a line at `level` be written? (A wrapper that cannot tell: yes.)"""
        bound = self.bound()
        on = self._levels.get(level)
        if on is None:
            check = getattr(bound, "is_enabled_for", None)
            on = self._levels[level] = True if check is None else bool(check(level))
        return on

    def _line(self, level: int, method: str, event: str, args: tuple[Any, ...],
              kw: dict[str, Any]) -> Any:
        """One line: filtered by level, then our JSON chain run directly when it is the
        configured one (same line as structlog's path), else structlog's bound logger."""
        bound = self.bound()
        on = self._levels.get(level)
        if on is None:
            on = self.is_enabled_for(level)
        if not on:
            return None
        lines = self._lines
        if (lines is not None and not args and "exc_info" not in kw and "logger_name" not in kw
                and lines.current(self._procs)):
            lines.emit(method, self._name, event, kw)
            return None
        return getattr(bound, method)(event, *args, **kw)

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._line(logging.DEBUG, "debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._line(logging.INFO, "info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._line(logging.WARNING, "warning", event, args, kw)

    warn = warning

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._line(logging.ERROR, "error", event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.bound().exception(event, *args, **kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._line(logging.CRITICAL, "critical", event, args, kw)

    def __getattr__(self, name: str) -> Any:   # bind, new, msg, log, ... as the bound logger's
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.bound(), name)


def get_logger(name: str) -> Logger:
    """A logger whose every line carries `logger=<name>` (see Logger)."""
    return Logger(name)
