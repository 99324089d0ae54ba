"""The one log configuration: structlog JSON lines on stdout (console renderer only on a TTY).

Stdlib logging (ib_async, aiomqtt, amqtt) is routed through structlog's ProcessorFormatter so
every line of the process is one JSON object with stable keys: `event`, `level`, `timestamp`,
`logger`, and the context bound per unit of work (`proposal_id`, `agent_id`, `order_id`, `code`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

_SECRET_KEYS = ("password", "passwd", "secret", "token", "api_key")


def _redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure_logging(fmt: LogFormat = "auto", level: str = "INFO", stream: Any = None) -> None:
    """Configure structlog and stdlib logging once per process. Idempotent."""
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # below the level: dropped before any work
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bracketgate", False):
            root.removeHandler(old)
    handler._bracketgate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty third-party loggers: keep their warnings, drop their per-message debug noise.
    for name, lvl in (("ib_async", "WARNING"), ("ib_insync", "WARNING"), ("amqtt", "WARNING"),
                      ("transitions", "WARNING"), ("aiomqtt", "INFO"), ("asyncio", "WARNING")):
        logging.getLogger(name).setLevel(lvl)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
