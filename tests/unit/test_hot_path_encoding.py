"""The rejected-proposal path's cheaper steps (issue 9): the journal's payload encoder gives
json.dumps' exact text, a run of plain inserts is one executemany with the seqs record() would
give, the once-per-id look-up in one statement still sees a proposal whose id row was pruned, a
decision is encoded once (the bytes journaled are the bytes the bridge publishes), and the log
fast path writes the line structlog's own chain would write."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

import bracketgate.core.logs as logs
from bracketgate.adapters.journal import Journal, _json, encode
from bracketgate.agents.rules import deny
from bracketgate.bus.messages import DenialCode, RiskDecision, TradeProposal, Verdict
from bracketgate.core.app import _journal_decision

PROPOSAL = {"proposal_id": "p-1", "agent_id": "alpha", "symbol": "AAPL", "side": "BUY",
            "quantity": 10, "order_type": "LMT", "limit_price": 175.0, "take_profit": 180.0,
            "stop_loss": 172.5}


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [1.5, None, True, "é\u2028\ud800"], "c": {"x": 1e16, "y": -0.0, "z": 2**70}},
    {1: "int key", "n": {}}, [], {}, "text", 3, 0.1, None])
def test_the_payload_encoder_writes_what_json_dumps_writes(value: object) -> None:
    assert _json(value) == json.dumps(value, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("value,error", [({"x": float("nan")}, ValueError),
                                         ({"x": object()}, TypeError)])
def test_the_payload_encoder_refuses_what_json_dumps_refuses(value: object, error: type) -> None:
    with pytest.raises(error):
        _json(value)


async def test_plain_inserts_in_one_batch_get_consecutive_seqs(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        acks = [{"kind": "ack", "proposal_id": f"p-{i}", "agent_id": "alpha",
                 "payload": {"delivered": "decision"}} for i in range(5)]
        seqs = await journal.record_many(
            [{"kind": "proposal", "payload": TradeProposal(**PROPOSAL), "durable": True,
              "once": True}] + acks[:3]
            + [{"kind": "note", "payload": {"n": 1}}] + acks[3:4]
            + [{"kind": "proposal", "payload": TradeProposal(**PROPOSAL), "once": True}]
            + acks[4:])
        rows = await journal.events()
        assert seqs == [r["seq"] for r in rows[:5]] + [rows[5]["seq"], None, rows[6]["seq"]]
        assert [(r["kind"], r["proposal_id"]) for r in rows] == (
            [("proposal", "p-1")] + [("ack", f"p-{i}") for i in range(3)] + [("note", None)]
            + [("ack", "p-3"), ("ack", "p-4")])
        assert [r["payload"] for r in rows if r["kind"] == "ack"] == [{"delivered": "decision"}] * 5
        # record() goes on from there
        assert await journal.record("note", payload={"n": 2}) == rows[-1]["seq"] + 1


async def test_once_sees_a_journaled_proposal_whose_id_row_was_pruned(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal:
        p = TradeProposal(**PROPOSAL)
        assert isinstance(await journal.record("proposal", payload=p, once=True), int)
        assert await journal.prune_ids(datetime.now(timezone.utc) + timedelta(days=1)) == 1
        assert await journal.record_many([{"kind": "proposal", "payload": p, "once": True}]) == [None]
        assert len(await journal.events(kinds="proposal")) == 1


async def test_a_decision_is_encoded_once_and_published_as_journaled(tmp_path: Path) -> None:
    decision = RiskDecision(proposal_id="p-1", agent_id="alpha", verdict=Verdict.REJECTED,
                            reasons=[deny(DenialCode.PER_TRADE_LOSS_LIMIT, 1.0, float("nan"))],
                            ts=datetime.now(timezone.utc))
    async with Journal(tmp_path / "j.sqlite") as journal:
        published = await _journal_decision(journal)([decision])
        row = (await journal.events(kinds="decision"))[0]
        assert published == [encode(decision).text.encode()]
        assert json.loads(published[0]) == row["payload"] == decision.model_dump(mode="json") | {
            "reasons": [decision.reasons[0].model_dump(mode="json") | {"value": "nan"}]}
        assert RiskDecision.model_validate_json(published[0]) == decision
        assert (await journal.first_seen("p-1")).verdict == "rejected"   # the id row in step


def _lines(emit: object) -> list[dict[str, object]]:
    out = io.StringIO()
    logs.configure_logging("json", "DEBUG", stream=out)
    try:
        emit()   # type: ignore[operator]
    finally:
        logs.configure_logging("json", "INFO", stream=io.StringIO())
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_the_log_fast_path_writes_structlog_s_line(monkeypatch: pytest.MonkeyPatch) -> None:
    log = logs.get_logger("bracketgate.test")

    def emit() -> None:
        with structlog.contextvars.bound_contextvars(proposal_id="ctx", agent_id="alpha"):
            log.info("risk_decision", proposal_id="p-1", codes=["X"], api_token="s3cret",
                     n=float("nan"), obj=object)
            log.warning("w", logger="shadowed", level="shadowed")
            log.debug("d")
            log.error("e", exc_info=False)          # exc_info: structlog's path
            log.info("args %s", "interpolated")     # positional arguments: structlog's path

    fast = _lines(emit)
    monkeypatch.setattr(logs._JsonLines, "current", lambda *_: False)   # all through structlog
    slow = _lines(emit)
    assert [list(x) for x in fast] == [list(x) for x in slow]   # the same keys, same order
    for line in fast + slow:
        assert line.pop("timestamp").endswith("Z")
    nan = [x.pop("n") for x in (fast[0], slow[0])]
    assert all(v != v for v in nan) and fast == slow
    assert fast[0] == {"proposal_id": "p-1", "codes": ["X"], "api_token": "***",
                       "obj": "<class 'object'>", "event": "risk_decision", "agent_id": "alpha",
                       "level": "info", "logger": "bracketgate.test"}
    assert [x["event"] for x in fast] == ["risk_decision", "w", "d", "e", "args interpolated"]


def test_the_fast_path_steps_aside_for_capture_logs_and_the_level() -> None:
    log = logs.get_logger("bracketgate.test")
    logs.configure_logging("json", "WARNING", stream=io.StringIO())
    try:
        assert log.info("filtered") is None
        with capture_logs() as captured:
            log.warning("captured", k=1)
        assert [(e["event"], e["k"], e["log_level"]) for e in captured] == [("captured", 1, "warning")]
        assert not log.is_enabled_for(logging.INFO)
    finally:
        logs.configure_logging("json", "INFO", stream=io.StringIO())
