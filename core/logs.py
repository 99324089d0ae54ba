"""The one log configuration: structlog JSON lines on stdout (console renderer only on a TTY).

Our own events take structlog's fast path (a level-filtering bound logger that renders and
writes the line itself: ~4x cheaper than going through stdlib logging, and a filtered call
costs almost nothing). Stdlib logging (ib_async, aiomqtt, amqtt) is routed through structlog's
ProcessorFormatter into the same stream with the same keys, so every line of the process is
one JSON object: `event`, `level`, `timestamp`, `logger`, plus the context bound per unit of
work (`proposal_id`, `agent_id`, `order_id`, `code`).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

_SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key")
_secret_key_cache: dict[str, bool] = {}


def _is_secret(key: str) -> bool:
    hit = _secret_key_cache.get(key)
    if hit is None:
        hit = _secret_key_cache[key] = any(w in key.lower() for w in _SECRET_WORDS)
    return hit


def _redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if _is_secret(key):
            event[key] = "***"
    return event


def _add_level_and_name(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["level"] = "warning" if method == "warn" else method
    name = event.pop("logger_name", None)   # bound by get_logger ("logger" is reserved there)
    if name is not None:
        event["logger"] = name
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
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
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


def get_logger(name: str) -> Any:
    """A logger whose every line carries `logger=<name>`."""
    # initial values stay lazy: module-level loggers follow a later configure_logging()
    return structlog.get_logger(logger_name=name)
