"""adapters/journal.py: every API, the CLI (in-process and as a subprocess), migration,
concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bracketgate.adapters.journal import (
    DURABLE_KINDS,
    MIGRATIONS,
    SCHEMA_VERSION,
    DuplicateIntent,
    EventKind,
    IntentState,
    IntentStateError,
    Journal,
    JournalOpenError,
    JournalStateError,
    SchemaVersionError,
    UnknownIntent,
    intent_move_allowed,
    main,
)
from bracketgate.bus.messages import (
    ApprovedBracket,
    BracketOrderIds,
    Fill,
    Leg,
    RiskDecision,
    Side,
    TradeProposal,
    TradingState,
    TradingStateChanged,
    Verdict,
)
from bracketgate.core.clock import ManualClock

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


@pytest.fixture
async def journal(path: Path, clock: ManualClock):
    async with Journal(path, clock) as j:
        yield j


def proposal(pid: str = "p-1", agent: str = "alpha") -> TradeProposal:
    return TradeProposal(proposal_id=pid, agent_id=agent, symbol="AAPL", side=Side.BUY,
                         quantity=10, limit_price=175.0, take_profit=180.0, stop_loss=172.5)


def bracket(pid: str = "p-1", agent: str = "alpha") -> ApprovedBracket:
    return ApprovedBracket(proposal=proposal(pid, agent), approved_at=T0)


def fill(exec_id: str, pid: str = "p-1", order_id: int = 11) -> Fill:
    return Fill(proposal_id=pid, agent_id="alpha", order_id=order_id, leg=Leg.ENTRY,
                exec_id=exec_id, symbol="AAPL", side=Side.BUY, quantity=10, price=175.0, ts=T0)


def decision(pid: str, verdict: Verdict = Verdict.APPROVED) -> RiskDecision:
    approved = verdict is Verdict.APPROVED
    ids = BracketOrderIds(entry=11, take_profit=12, stop_loss=13) if approved else None
    return RiskDecision(proposal_id=pid, agent_id="alpha", verdict=verdict, order_ids=ids, ts=T0)


# --------------------------------------------------------------------------- lifecycle and file


async def test_open_creates_wal_file_at_current_schema(path: Path, clock: ManualClock) -> None:
    j = await Journal.open(path, clock)
    assert j.is_open
    await j.close()
    assert not j.is_open
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert {"events", "intents"} <= tables
    assert {"events_proposal", "events_ts", "events_fill_exec"} <= indexes


async def test_open_makes_parent_directories(tmp_path: Path, clock: ManualClock) -> None:
    async with Journal(tmp_path / "a" / "b" / "j.sqlite", clock) as j:
        await j.record("note", payload={"hello": "world"})
    assert (tmp_path / "a" / "b" / "j.sqlite").is_file()


async def test_lifecycle_moves_are_checked(path: Path, clock: ManualClock) -> None:
    j = Journal(path, clock)
    with pytest.raises(JournalStateError):
        await j.record("note", payload={})
    await j.start()
    with pytest.raises(JournalStateError):
        await j.start()
    await j.close()
    await j.close()  # twice is fine
    with pytest.raises(JournalStateError):
        await j.record("note", payload={})
    with pytest.raises(JournalStateError):
        async with j:
            pass


def test_constructor_validates_options(path: Path) -> None:
    with pytest.raises(ValueError):
        Journal(path, synchronous="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Journal(path, batch_max=0)


async def test_events_survive_close_and_reopen(path: Path, clock: ManualClock) -> None:
    async with Journal(path, clock) as j:
        seq = await j.record("note", payload={"n": 1})
        await j.record_intent(bracket("p-9"), (1, 2, 3))
    async with Journal(path, clock) as j:
        events = await j.events()
        assert [e["seq"] for e in events] == [seq, seq + 1]
        assert [i.proposal_id for i in await j.intents()] == ["p-9"]


async def test_in_memory_journal_works_for_baselines(clock: ManualClock) -> None:
    async with Journal(":memory:", clock) as j:
        await j.record("note", payload={"x": 1})
        assert len(await j.events()) == 1


# --------------------------------------------------------------------------- record


async def test_record_model_takes_ids_from_payload(journal: Journal, clock: ManualClock) -> None:
    seq = await journal.record("fill", payload=fill("e-1"))
    [event] = await journal.events()
    assert event["seq"] == seq
    assert event["kind"] == "fill"
    assert (event["proposal_id"], event["agent_id"], event["order_id"]) == ("p-1", "alpha", 11)
    assert event["ts"] == "2026-11-20T15:00:00.000000+00:00"
    assert event["payload"] == fill("e-1").model_dump(mode="json")


async def test_record_explicit_ids_win_and_nested_proposal_is_found(journal: Journal) -> None:
    await journal.record("proposal", payload=proposal("p-2", "beta"))
    await journal.record("ack", proposal_id="p-x", agent_id="gamma", order_id=7,
                         payload={"proposal_id": "p-2", "order_id": 8})
    await journal.record("decision", payload=bracket("p-3"))  # ApprovedBracket: ids nested
    a, b, c = await journal.events()
    assert (a["proposal_id"], a["agent_id"], a["order_id"]) == ("p-2", "beta", None)
    assert (b["proposal_id"], b["agent_id"], b["order_id"]) == ("p-x", "gamma", 7)
    assert (c["proposal_id"], c["agent_id"]) == ("p-3", "alpha")


async def test_record_uses_clock_time_in_utc(journal: Journal, clock: ManualClock) -> None:
    clock.advance(90.5)
    await journal.record("note", payload={})
    [event] = await journal.events()
    assert datetime.fromisoformat(event["ts"]) == T0 + timedelta(seconds=90.5)


async def test_record_payload_json_edge_cases(journal: Journal) -> None:
    class Colour(str):
        pass

    await journal.record("note", payload={
        "nan": float("nan"), "inf": float("inf"), "when": T0, "state": TradingState.HALTED,
        "nested": [{"x": float("-inf")}], "tags": {"b", "a"}, "text": Colour("red"),
    })
    [event] = await journal.events()
    assert event["payload"] == {
        "nan": "nan", "inf": "inf", "when": "2026-11-20T15:00:00.000000+00:00",
        "state": "HALTED", "nested": [{"x": "-inf"}], "tags": ["a", "b"], "text": "red",
    }


async def test_record_refuses_bad_input(journal: Journal) -> None:
    with pytest.raises(ValueError):
        await journal.record("gossip", payload={})
    with pytest.raises(ValueError, match="record_intent"):
        await journal.record("intent", payload={})
    with pytest.raises(TypeError):
        await journal.record("note", payload={"obj": object()})
    assert await journal.events() == []


async def test_every_kind_is_recordable_or_routed(journal: Journal) -> None:
    for kind in EventKind:
        if kind is not EventKind.INTENT:
            await journal.record(kind, payload={"k": kind.value})
    assert {e["kind"] for e in await journal.events()} == {k.value for k in EventKind} - {"intent"}


async def test_durable_kinds_commit_full_others_normal(journal: Journal) -> None:
    assert DURABLE_KINDS == {EventKind.INTENT, EventKind.DECISION, EventKind.TRADING_STATE}
    await journal.record("note", payload={})
    await journal.record("fill", payload=fill("e-1"))
    assert journal.stats["full_commits"] == 0
    await journal.record("decision", payload=decision("p-1"))
    await journal.record("trading_state", payload=TradingStateChanged(
        old=TradingState.ACTIVE, new=TradingState.HALTED, reason="t", by="operator", ts=T0))
    await journal.record_intent(bracket(), None)
    await journal.mark_intent("p-1", "sent")
    assert journal.stats["full_commits"] == 4
    await journal.record("note", payload={}, durable=True)
    assert journal.stats["full_commits"] == 5


async def test_forced_synchronous_modes(path: Path, clock: ManualClock) -> None:
    async with Journal(path, clock, synchronous="full") as j:
        await j.record("note", payload={})
        assert j.stats["full_commits"] == 1
    async with Journal(path, clock, synchronous="normal") as j:
        await j.record_intent(bracket(), None)
        assert j.stats["full_commits"] == 0


# --------------------------------------------------------------------------- intents


async def test_record_intent_is_pending_with_order_ids(journal: Journal) -> None:
    ids = BracketOrderIds(entry=11, take_profit=12, stop_loss=13)
    seq = await journal.record_intent(bracket("p-1"), ids)
    [intent] = await journal.intents()
    assert intent.proposal_id == "p-1" and intent.agent_id == "alpha"
    assert intent.state is IntentState.PENDING
    assert intent.order_ids == {"entry": 11, "take_profit": 12, "stop_loss": 13}
    assert intent.created_ts == T0 == intent.updated_ts
    assert intent.payload == bracket("p-1").model_dump(mode="json")
    [event] = await journal.events()
    assert event["seq"] == seq and event["kind"] == "intent" and event["order_id"] == 11
    assert event["payload"]["state"] == "pending"
    assert event["payload"]["bracket"]["proposal"]["proposal_id"] == "p-1"


async def test_record_intent_accepts_dicts_and_id_shapes(journal: Journal) -> None:
    await journal.record_intent({"proposal_id": "d-1", "agent_id": "a"}, {"entry": 5})
    await journal.record_intent({"proposal": {"proposal_id": "d-2"}}, [7, 8])
    await journal.record_intent({"proposal_id": "d-3"}, None)
    by_id = {i.proposal_id: i for i in await journal.intents()}
    assert by_id["d-1"].order_ids == {"entry": 5}
    assert by_id["d-2"].order_ids == {"entry": 7, "take_profit": 8}
    assert by_id["d-3"].order_ids is None
    with pytest.raises(ValueError):
        await journal.record_intent({"symbol": "AAPL"}, None)
    with pytest.raises(ValueError):
        await journal.record_intent({"proposal_id": "d-4"}, [1, 2, 3, 4])


async def test_second_intent_for_a_proposal_is_refused(journal: Journal) -> None:
    await journal.record_intent(bracket("p-1"), (1, 2, 3))
    with pytest.raises(DuplicateIntent) as err:
        await journal.record_intent(bracket("p-1"), (4, 5, 6))
    assert err.value.proposal_id == "p-1"
    assert len(await journal.events(kinds="intent")) == 1
    [intent] = await journal.intents()
    assert intent.order_ids == {"entry": 1, "take_profit": 2, "stop_loss": 3}


async def test_mark_intent_walks_the_states(journal: Journal, clock: ManualClock) -> None:
    await journal.record_intent(bracket("p-1"), None)
    clock.advance(1)
    assert await journal.mark_intent("p-1", IntentState.SENT, (11, 12, 13)) is IntentState.PENDING
    assert await journal.mark_intent("p-1", "sent") is IntentState.SENT  # no-op
    assert await journal.mark_intent("p-1", "acked") is IntentState.SENT
    assert await journal.mark_intent("p-1", "done") is IntentState.ACKED
    [intent] = await journal.intents()
    assert intent.state is IntentState.DONE
    assert intent.order_ids == {"entry": 11, "take_profit": 12, "stop_loss": 13}
    assert intent.updated_ts == T0 + timedelta(seconds=1)
    moves = [(e["payload"].get("from"), e["payload"]["state"])
             for e in await journal.events(kinds="intent")]
    assert moves == [(None, "pending"), ("pending", "sent"), ("sent", "acked"), ("acked", "done")]


async def test_mark_intent_is_full_unless_told_a_full_commit_follows(journal: Journal) -> None:
    """ExecutionAgent marks an intent acked with durable=False: the approved decision's FULL
    commit comes next, before anything is published (a power cut between leaves it pending,
    which start-up reconciles); every other move is committed FULL."""
    await journal.record_intent(bracket("p-1"), None)
    before = journal.stats["full_commits"]
    await journal.mark_intent("p-1", "sent")
    assert journal.stats["full_commits"] == before + 1
    await journal.mark_intent("p-1", "acked", durable=False)
    assert journal.stats["full_commits"] == before + 1
    [intent] = await journal.intents()
    assert intent.state is IntentState.ACKED
    await journal.record("decision", proposal_id="p-1", agent_id="alpha",
                         payload={"proposal_id": "p-1", "verdict": "approved"})
    assert journal.stats["full_commits"] == before + 2


async def test_mark_intent_refuses_illegal_moves_and_unknown_ids(journal: Journal) -> None:
    await journal.record_intent(bracket("p-1"), None)
    await journal.mark_intent("p-1", "acked")
    with pytest.raises(IntentStateError):
        await journal.mark_intent("p-1", "pending")
    with pytest.raises(IntentStateError):
        await journal.mark_intent("p-1", "sent")
    await journal.mark_intent("p-1", "failed")
    with pytest.raises(IntentStateError):
        await journal.mark_intent("p-1", "unknown")
    with pytest.raises(UnknownIntent):
        await journal.mark_intent("nope", "sent")
    with pytest.raises(ValueError):
        await journal.mark_intent("p-1", "lost")
    [intent] = await journal.intents()
    assert intent.state is IntentState.FAILED


def test_intent_move_table() -> None:
    S = IntentState
    allowed = {(a, b) for a in S for b in S if intent_move_allowed(a, b)}
    assert allowed == {
        (S.PENDING, S.SENT), (S.PENDING, S.ACKED), (S.PENDING, S.DONE), (S.PENDING, S.FAILED),
        (S.SENT, S.ACKED), (S.SENT, S.DONE), (S.SENT, S.FAILED),
        (S.ACKED, S.DONE), (S.ACKED, S.FAILED),
        (S.PENDING, S.UNKNOWN), (S.SENT, S.UNKNOWN), (S.ACKED, S.UNKNOWN),
        (S.UNKNOWN, S.SENT), (S.UNKNOWN, S.ACKED), (S.UNKNOWN, S.DONE), (S.UNKNOWN, S.FAILED),
    }


async def test_intents_filter_by_state(journal: Journal, clock: ManualClock) -> None:
    for n, state in enumerate(["pending", "sent", "acked", "done", "failed", "unknown"]):
        pid = f"p-{n}"
        await journal.record_intent(bracket(pid), None)
        clock.advance(1)
        if state != "pending":
            await journal.mark_intent(pid, state)
    unresolved = await journal.intents(states=("pending", "sent", "unknown"))
    assert [(i.proposal_id, i.state.value) for i in unresolved] == [
        ("p-0", "pending"), ("p-1", "sent"), ("p-5", "unknown")]
    assert [i.proposal_id for i in await journal.intents("acked")] == ["p-2"]
    assert [i.proposal_id for i in await journal.intents(IntentState.DONE)] == ["p-3"]
    assert len(await journal.intents()) == 6
    with pytest.raises(ValueError):
        await journal.intents(["bogus"])


# --------------------------------------------------------------------------- decisions, fills


async def test_decision_for_returns_the_first_decision(journal: Journal) -> None:
    assert await journal.decision_for("p-1") is None
    await journal.record("decision", payload=decision("p-1", Verdict.APPROVED))
    await journal.record("decision", payload=decision("p-1", Verdict.REJECTED))
    await journal.record("decision", payload=decision("p-2", Verdict.REJECTED))
    first = await journal.decision_for("p-1")
    assert first is not None
    assert first["verdict"] == "approved"
    assert first["order_ids"] == {"entry": 11, "take_profit": 12, "stop_loss": 13}
    assert RiskDecision.model_validate(first) == decision("p-1")
    assert (await journal.decision_for("p-2"))["verdict"] == "rejected"  # type: ignore[index]


async def test_exec_ids_and_duplicate_fills(journal: Journal) -> None:
    assert await journal.exec_ids() == set()
    assert await journal.last_exec_id() is None
    s1 = await journal.record("fill", payload=fill("e-1"))
    s2 = await journal.record("fill", payload=fill("e-2"))
    await journal.record("commission", payload={"exec_id": "e-2", "commission": 1.0})
    assert await journal.record("fill", payload=fill("e-1")) == s1  # re-sent execDetails
    assert await journal.exec_ids() == {"e-1", "e-2"}
    assert await journal.last_exec_id() == "e-2"
    assert [e["seq"] for e in await journal.events(kinds="fill")] == [s1, s2]


# --------------------------------------------------------------------------- events


async def test_events_filters(journal: Journal, clock: ManualClock) -> None:
    await journal.record("proposal", payload=proposal("p-1"))
    clock.advance(60)
    await journal.record("decision", payload=decision("p-1"))
    await journal.record("proposal", payload=proposal("p-2"))
    clock.advance(60)
    await journal.record("fill", payload=fill("e-1", "p-2"))
    assert len(await journal.events()) == 4
    assert [e["kind"] for e in await journal.events(proposal_id="p-1")] == ["proposal", "decision"]
    assert [e["kind"] for e in await journal.events(since=T0 + timedelta(seconds=60))] == [
        "decision", "proposal", "fill"]
    naive = (T0 + timedelta(seconds=120)).replace(tzinfo=None)  # naive = UTC
    assert [e["kind"] for e in await journal.events(since=naive)] == ["fill"]
    other_zone = (T0 + timedelta(seconds=61)).astimezone(timezone(timedelta(hours=-5)))
    assert [e["kind"] for e in await journal.events(since=other_zone)] == ["fill"]
    assert [e["proposal_id"] for e in await journal.events(kinds=["proposal", "fill"])] == [
        "p-1", "p-2", "p-2"]
    assert [e["kind"] for e in await journal.events(T0 + timedelta(seconds=1), "p-2")] == [
        "proposal", "fill"]
    assert [e["seq"] for e in await journal.events(after_seq=2, limit=1)] == [3]
    assert await journal.events(proposal_id="nobody") == []


async def test_iter_events_pages_through_everything(journal: Journal) -> None:
    await asyncio.gather(*(journal.record("note", payload={"n": n}) for n in range(23)))
    seen = [e["payload"]["n"] async for e in journal.iter_events(page=5)]
    assert sorted(seen) == list(range(23))
    assert len([e async for e in journal.iter_events(kinds="note", page=23)]) == 23


# --------------------------------------------------------------------------- concurrency


async def test_many_concurrent_records_are_group_committed(journal: Journal) -> None:
    seqs = await asyncio.gather(*(journal.record("note", payload={"n": n}) for n in range(500)))
    assert len(set(seqs)) == 500
    events = await journal.events()
    assert sorted(e["payload"]["n"] for e in events) == list(range(500))
    stats = journal.stats
    assert stats["batches"] < stats["ops"]  # one commit served many writers


async def test_a_failing_operation_does_not_undo_its_batch_neighbours(journal: Journal) -> None:
    await journal.record_intent(bracket("p-1"), None)
    results = await asyncio.gather(
        journal.record("note", payload={"n": 1}),
        journal.record_intent(bracket("p-1"), None),
        journal.mark_intent("nope", "sent"),
        journal.record("note", payload={"n": 2}),
        return_exceptions=True,
    )
    assert isinstance(results[1], DuplicateIntent)
    assert isinstance(results[2], UnknownIntent)
    assert [e["payload"]["n"] for e in await journal.events(kinds="note")] == [1, 2]
    assert len(await journal.events(kinds="intent")) == 1


async def test_cancelled_caller_does_not_withdraw_the_write(journal: Journal) -> None:
    task = asyncio.ensure_future(journal.record_intent(bracket("p-1"), None))
    await asyncio.sleep(0)  # submitted to the writer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [i.proposal_id for i in await journal.intents("pending")] == ["p-1"]


async def test_close_finishes_queued_writes(path: Path, clock: ManualClock) -> None:
    j = await Journal.open(path, clock)
    tasks = [asyncio.ensure_future(j.record("note", payload={"n": n})) for n in range(50)]
    await asyncio.sleep(0)
    await j.close()
    assert len(await asyncio.gather(*tasks)) == 50
    async with Journal(path, clock) as j2:
        assert len(await j2.events()) == 50


# --------------------------------------------------------------------------- migration


def make_v1_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    for _ in range(2):  # v1 did not keep fills unique: a repeated one must survive migration
        conn.execute("INSERT INTO events(ts, kind, proposal_id, payload) VALUES"
                     " ('2026-11-19T10:00:00.000000+00:00', 'fill', 'old',"
                     " '{\"exec_id\": \"x-1\"}')")
    conn.execute("INSERT INTO intents(proposal_id, agent_id, created_ts, state, order_ids, payload)"
                 " VALUES ('old', 'alpha', '2026-11-19T10:00:00.000000+00:00', 'sent',"
                 " '{\"entry\": 3}', '{}')")
    conn.close()


async def test_migrates_a_version_1_file(path: Path, clock: ManualClock) -> None:
    make_v1_file(path)
    async with Journal(path, clock) as j:
        [intent] = await j.intents()
        assert intent.state is IntentState.SENT and intent.order_ids == {"entry": 3}
        assert intent.updated_ts == intent.created_ts  # filled in by the migration
        assert await j.exec_ids() == {"x-1"}
        assert len(await j.events(kinds="fill")) == 2  # history is kept as it was
        assert await j.record("fill", payload=fill("x-1", "old")) == 1  # the first one's seq
        await j.mark_intent("old", "acked")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_refuses_a_file_from_a_newer_schema(path: Path, clock: ManualClock) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    j = Journal(path, clock)
    with pytest.raises(SchemaVersionError):
        await j.start()
    assert not j.is_open


async def test_failed_migration_leaves_the_file_untouched(path: Path, clock: ManualClock) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (x)")  # squatter: v1 cannot create its table
    conn.close()
    with pytest.raises(JournalOpenError, match="table events already exists"):
        await Journal.open(path, clock)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert names == {"events"}
    conn.close()


# --------------------------------------------------------------------------- CLI


@pytest.fixture
async def cli_file(path: Path, clock: ManualClock) -> Path:
    async with Journal(path, clock) as j:
        await j.record("proposal", payload=proposal("p-1"))
        clock.advance(60)
        await j.record("decision", payload=decision("p-1"))
        await j.record_intent(bracket("p-1"), (11, 12, 13))
        await j.record("proposal", payload=proposal("p-2"))
        clock.advance(60)
        await j.record("fill", payload=fill("e-1", "p-1"))
    return path


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_cli_prints_json_lines_with_filters(cli_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--path", str(cli_file)]) == 0
    everything = lines(capsys.readouterr().out)
    assert [e["kind"] for e in everything] == ["proposal", "decision", "intent", "proposal", "fill"]
    assert set(everything[0]) == {"seq", "ts", "kind", "proposal_id", "agent_id", "order_id",
                                  "payload"}
    assert everything[4]["payload"]["exec_id"] == "e-1"

    assert main(["--path", str(cli_file), "--proposal", "p-2"]) == 0
    assert [e["kind"] for e in lines(capsys.readouterr().out)] == ["proposal"]
    assert main(["--path", str(cli_file), "--since", "2026-11-20T15:02:00Z"]) == 0
    assert [e["kind"] for e in lines(capsys.readouterr().out)] == ["fill"]
    assert main(["--path", str(cli_file), "--since", "2026-11-20T15:01:00"]) == 0  # naive = UTC
    assert len(lines(capsys.readouterr().out)) == 4
    assert main(["--path", str(cli_file), "--kind", "decision", "--kind", "fill",
                 "--proposal", "p-1"]) == 0
    assert [e["kind"] for e in lines(capsys.readouterr().out)] == ["decision", "fill"]


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--path", str(tmp_path / "missing.sqlite")]) == 2
    assert "no journal file" in capsys.readouterr().err
    not_journal = tmp_path / "other.sqlite"
    sqlite3.connect(not_journal).execute("CREATE TABLE t (x)").connection.close()
    assert main(["--path", str(not_journal)]) == 2
    assert "not a bracketgate journal" in capsys.readouterr().err
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    assert main(["--path", str(garbage)]) == 2
    for bad in (["--kind", "gossip"], ["--since", "yesterday"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--path", str(not_journal), *bad])
        assert exit_.value.code == 2


def test_cli_default_path_from_env(cli_file: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNAL_PATH", str(cli_file))
    assert main([]) == 0
    assert len(lines(capsys.readouterr().out)) == 5


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from bracketgate.adapters.journal import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


def test_cli_as_a_subprocess(cli_file: Path, tmp_path: Path) -> None:
    done = cli("--path", str(cli_file), "--kind", "intent")
    assert done.returncode == 0, done.stderr
    [intent] = lines(done.stdout)
    assert intent["proposal_id"] == "p-1" and intent["order_id"] == 11
    assert intent["payload"]["order_ids"] == {"entry": 11, "take_profit": 12, "stop_loss": 13}
    missing = cli(env={"JOURNAL_PATH": str(tmp_path / "nope.sqlite")})
    assert missing.returncode == 2
    assert "no journal file" in missing.stderr and missing.stdout == ""


async def test_cli_reads_while_the_daemon_writes(path: Path, clock: ManualClock) -> None:
    async with Journal(path, clock) as j:
        await j.record_intent(bracket("p-live"), None)
        done = await asyncio.to_thread(cli, "--path", str(path))
        assert done.returncode == 0, done.stderr
        assert [e["proposal_id"] for e in lines(done.stdout)] == ["p-live"]
        await j.record("note", payload={})  # the reader did not lock the writer out


async def test_a_dead_writer_fails_callers_instead_of_hanging(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    from bracketgate.adapters import journal as module

    def explode(self: object, conn: object, batch: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(module._Writer, "_run_batch", explode)
    with pytest.raises(module.JournalError, match="boom"):
        await asyncio.wait_for(journal.record("note", payload={}), 5)
    await asyncio.to_thread(journal._writer.join, 5)  # type: ignore[union-attr]
    with pytest.raises(module.JournalError, match="gone"):
        await journal.record("note", payload={})
