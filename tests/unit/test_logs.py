"""The log fast path (core/logs.py): a module-level logger binds once per configuration, yet
follows every later configuration (level, stream, capture_logs); the JSON line keeps its keys."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

from structlog.testing import capture_logs

from bracketgate.core.logs import configure_logging, get_logger


def test_a_logger_made_before_configuration_follows_every_later_one() -> None:
    log = get_logger("bracketgate.test")           # as at module import: before any configure
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "INFO", stream=first)
    assert log.is_enabled_for(logging.INFO)
    log.info("one", proposal_id="p1", api_token="s3cret", n=float("nan"), obj=object())
    configure_logging("json", "WARNING", stream=second)
    assert not log.is_enabled_for(logging.INFO) and log.is_enabled_for(logging.WARNING)
    log.info("filtered")
    log.warning("two", codes=["X"])
    try:
        line = json.loads(first.getvalue())
        assert (line["event"], line["level"], line["logger"], line["proposal_id"]) == (
            "one", "info", "bracketgate.test", "p1")
        assert line["api_token"] == "***" and "object object" in line["obj"]
        assert datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).tzinfo
        assert line["timestamp"].endswith("Z") and len(line["timestamp"]) == 27
        lines = [json.loads(x) for x in second.getvalue().splitlines()]
        assert [(x["event"], x["codes"]) for x in lines] == [("two", ["X"])]
    finally:
        configure_logging("json", "INFO", stream=io.StringIO())


def test_capture_logs_sees_the_lines_of_a_logger_already_bound() -> None:
    configure_logging("json", "INFO", stream=io.StringIO())
    log = get_logger("bracketgate.test")
    log.info("before")                              # binds for this configuration
    with capture_logs() as logs:
        log.info("inside", k=1)
    log.info("after")
    assert [(e["event"], e["k"]) for e in logs] == [("inside", 1)]
