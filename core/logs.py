"""The one log configuration: structlog JSON lines on stdout (console renderer only on a TTY).

Our own events take structlog's fast path (a level-filtering bound logger that renders and
writes the line itself: ~4x cheaper than going through stdlib logging, and a filtered call
costs almost nothing). `get_logger` binds once per configuration (structlog's lazy proxy
assembles a new bound logger on every call) and says whether a level is on, so a hot path
skips building a line nobody will write; the line's JSON encoder and its timestamp are built
once, not per line. Stdlib logging (ib_async, aiomqtt, amqtt) is routed through structlog's
ProcessorFormatter into the same stream with the same keys, so every line of the process is
one JSON object: `event`, `level`, `timestamp`, `logger`, plus the context bound per unit of
work (`proposal_id`, `agent_id`, `order_id`, `code`).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, Literal, TextIO

import structlog
from structlog._config import _CONFIG   # what structlog's lazy proxy reads on every call

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


# json.dumps(event, default=...) builds a JSONEncoder, and each encode a C encoder, per line:
# here the C encoder is built once (same output as json.dumps; no circular-reference check,
# a log line is flat)
try:
    from json.encoder import c_make_encoder, encode_basestring_ascii
except ImportError:  # pragma: no cover - a Python without the C accelerator
    c_make_encoder = None
if c_make_encoder is not None:
    _c_encode = c_make_encoder(None, _json_fallback, encode_basestring_ascii, None, ": ", ", ",
                               False, False, True)

    def _dumps(event: dict[str, Any], **_kw: Any) -> str:
        """JSONRenderer's serializer (its keyword arguments are ours already)."""
        return "".join(_c_encode(event, 0))
else:  # pragma: no cover
    _encode = json.JSONEncoder(default=_json_fallback).encode

    def _dumps(event: dict[str, Any], **_kw: Any) -> str:
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
    """One stream shared by our fast path and the stdlib handler: whole lines, never mixed."""

    def __init__(self, stream: TextIO, lock: Any) -> None:
        self._stream = stream
        self._lock = lock

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _LockedStreamHandler(logging.StreamHandler):
    def __init__(self, stream: TextIO, lock: Any) -> None:
        super().__init__(stream)
        self.lock = lock  # the same lock as the fast path


def configure_logging(fmt: LogFormat = "auto", level: str = "INFO", stream: Any = None) -> None:
    """Configure structlog and stdlib logging once per process. Idempotent."""
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_level_and_name,
            timestamper,
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
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
    handler = _LockedStreamHandler(stream, lock)
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

    __slots__ = ("_name", "_bound", "_procs", "_wrapper", "_factory", "_levels")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._levels: dict[int, bool] = {}     # level -> written, for this configuration
        self._procs: Any = None
        self._wrapper: Any = None
        self._factory: Any = None

    def bound(self) -> Any:
        """The bound logger for the current structlog configuration."""
        cfg = _CONFIG
        if (cfg.default_processors is not self._procs or cfg.default_wrapper_class
                is not self._wrapper or cfg.logger_factory is not self._factory):
            self._procs, self._wrapper = cfg.default_processors, cfg.default_wrapper_class
            self._factory = cfg.logger_factory
            self._bound = structlog.get_logger(logger_name=self._name).bind()
            self._levels = {}
        return self._bound

    def is_enabled_for(self, level: int) -> bool:
        """Would a line at `level` be written? (A wrapper that cannot tell: yes.)"""
        bound = self.bound()
        on = self._levels.get(level)
        if on is None:
            check = getattr(bound, "is_enabled_for", None)
            on = self._levels[level] = True if check is None else bool(check(level))
        return on

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.bound().debug(event, *args, **kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.bound().info(event, *args, **kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.bound().warning(event, *args, **kw)

    warn = warning

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.bound().error(event, *args, **kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.bound().exception(event, *args, **kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.bound().critical(event, *args, **kw)

    def __getattr__(self, name: str) -> Any:   # bind, new, msg, log, ... as the bound logger's
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.bound(), name)


def get_logger(name: str) -> Logger:
    """A logger whose every line carries `logger=<name>` (see Logger)."""
    return Logger(name)
