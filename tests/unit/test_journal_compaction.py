"""Compaction in bounded chunks (issue 9): the writer keeps committing records while a large
compaction runs, and what is left is what the one-shot retention statements left."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bracketgate.adapters import journal_compact, journal_ids
from bracketgate.adapters.journal import IntentState, Journal, _insert_event, _ts
from bracketgate.core.clock import ManualClock

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
TERMINAL = [s.value for s in IntentState if s.terminal]

# the retention as it was written before it was chunked: the oracle
ONE_SHOT_INTENTS = "DELETE FROM intents WHERE updated_ts < ? AND state IN (?, ?)"
ONE_SHOT_EVENTS = (
    "DELETE FROM events WHERE ts < ?"
    " AND (proposal_id IS NULL OR proposal_id NOT IN (SELECT proposal_id FROM intents))"
    " AND seq NOT IN (SELECT proposal_seq FROM proposal_ids WHERE proposal_seq IS NOT NULL)"
    " AND seq NOT IN (SELECT decision_seq FROM proposal_ids WHERE decision_seq IS NOT NULL)")
ONE_SHOT_IDS = "DELETE FROM proposal_ids WHERE first_seen < ?"


async def _new_file(path: Path) -> None:
    async with Journal(path, ManualClock(NOW)):
        pass   # the schema


def _fill(path: Path, seed: int, n: int = 3000) -> None:
    """Events over 30 days (timestamps drawn from few values: many ties across chunk ends), ids
    remembered as record() would, intents of every state, notes without an id."""
    rng = random.Random(seed)
    stamps = [_ts(NOW - timedelta(days=30) + timedelta(hours=rng.randrange(30 * 24)))
              for _ in range(60)]
    pids = [f"p{i}" for i in range(400)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for _ in range(n):
        ts = rng.choice(stamps)
        kind = rng.choice(["proposal", "decision", "note", "ack", "fill", "order_status"])
        pid = None if kind == "note" or rng.random() < 0.1 else rng.choice(pids)
        body = {"proposal_id": pid, "verdict": rng.choice(["approved", "rejected", "invalid"]),
                "reasons": []}
        seq = _insert_event(conn, ts, kind, pid, "a1" if pid else None, None, json.dumps(body))
        if kind in ("proposal", "decision"):
            journal_ids.remember(conn, kind, pid, "a1", ts, seq, body)
    for pid in rng.sample(pids, 120):
        state = rng.choice([s.value for s in IntentState])
        created = rng.choice(stamps)
        conn.execute("INSERT INTO intents(proposal_id, agent_id, created_ts, state, order_ids,"
                     " payload, updated_ts) VALUES (?, 'a1', ?, ?, NULL, '{}', ?)",
                     (pid, created, state, rng.choice(stamps)))
    conn.execute("COMMIT")
    conn.close()


def _contents(path: Path) -> tuple[list[tuple], list[tuple], list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT * FROM events ORDER BY seq").fetchall(),
                conn.execute("SELECT * FROM intents ORDER BY proposal_id").fetchall(),
                conn.execute("SELECT * FROM proposal_ids ORDER BY proposal_id").fetchall())
    finally:
        conn.close()


def _one_shot(path: Path, ids_before: str, before: str) -> dict[str, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        ids = conn.execute(ONE_SHOT_IDS, (ids_before,)).rowcount
        intents = conn.execute(ONE_SHOT_INTENTS, (before, *TERMINAL)).rowcount
        events = conn.execute(ONE_SHOT_EVENTS, (before,)).rowcount
        return {"ids": ids, "intents": intents, "events": events}
    finally:
        conn.close()


@pytest.mark.parametrize("seed,chunk", [(1, 7), (2, 1), (3, 250), (4, 100000)])
async def test_chunked_retention_leaves_exactly_what_the_one_shot_left(tmp_path, seed, chunk):
    base = tmp_path / "base.sqlite"
    await _new_file(base)
    _fill(base, seed)
    oracle, chunked = tmp_path / "oracle.sqlite", tmp_path / "chunked.sqlite"
    shutil.copy(base, oracle)
    shutil.copy(base, chunked)
    ids_before, before = NOW - timedelta(days=21), NOW - timedelta(days=14)
    expected = _one_shot(oracle, _ts(ids_before), _ts(before))
    assert expected["events"] > 100 and expected["intents"] > 5 and expected["ids"] > 10
    async with Journal(chunked, ManualClock(NOW)) as j:
        pruned = await j.prune_ids(ids_before, chunk_rows=chunk)
        counts = await j.compact(before, chunk_rows=chunk)
    assert (pruned, counts["intents"], counts["events"]) == (
        expected["ids"], expected["intents"], expected["events"])
    kept_o, kept_c = _contents(oracle), _contents(chunked)
    assert kept_c[0] == kept_o[0] and kept_c[1] == kept_o[1] and kept_c[2] == kept_o[2]
    # a remembered id still answers with its proposal and decision after the compaction
    assert kept_c[2], "some ids are remembered"
    if chunk <= 250:
        assert counts["chunks"] > 2


def _old_notes(path: Path, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    ts = _ts(NOW - timedelta(days=30))
    conn.executemany("INSERT INTO events(ts, kind, proposal_id, agent_id, order_id, payload)"
                     " VALUES (?, 'note', NULL, NULL, NULL, '{\"text\": \"old\"}')",
                     [(ts,)] * n)
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.parametrize("chunk", [500])
async def test_records_keep_committing_between_chunks_of_a_large_compaction(tmp_path, chunk):
    path = tmp_path / "j.sqlite"
    await _new_file(path)
    old = 20_000
    _old_notes(path, old)
    progress = {"chunks": 0, "events": 0}

    def on_chunk(stage: str, deleted: int) -> None:
        progress["chunks"] += 1
        if stage == "events":
            progress["events"] += deleted

    waits: list[int] = []         # chunks committed while one record waited for its commit
    during: list[int] = []        # events deleted so far when a record was committed
    async with Journal(path, ManualClock(NOW)) as j:
        task = asyncio.create_task(j.compact(NOW - timedelta(days=14), chunk_rows=chunk,
                                             on_chunk=on_chunk))
        i = 0
        while not task.done():
            before = progress["chunks"]
            await j.record("proposal", proposal_id=f"new{i}", agent_id="a1",
                           payload={"proposal_id": f"new{i}", "i": i})
            waits.append(progress["chunks"] - before)
            during.append(progress["events"])
            i += 1
        counts = await task
        assert counts["events"] == old and counts["chunks"] >= old // chunk
        # records were committed while the compaction was under way, not only before or after it
        interleaved = [d for d in during if 0 < d < old]
        assert len(interleaved) >= 5, (len(interleaved), counts)
        # and none waited for more than about two chunks, however many chunks there were
        assert max(waits) <= 2, max(waits)
        new = await j.events(kinds="proposal")
        assert len(new) == i                      # every record is in, none lost to a chunk
        assert await j.events(kinds="note") == []


async def test_one_shot_compaction_would_hold_every_record_until_it_ends(tmp_path):
    """The same run with one chunk for the whole table: no record gets in between, which is
    what the test above rules out (so it can fail)."""
    path = tmp_path / "j.sqlite"
    await _new_file(path)
    _old_notes(path, 20_000)
    deleted = {"events": 0}

    def on_chunk(stage: str, n: int) -> None:
        if stage == "events":
            deleted["events"] += n

    during: list[int] = []
    async with Journal(path, ManualClock(NOW)) as j:
        task = asyncio.create_task(j.compact(NOW - timedelta(days=14), chunk_rows=10**9,
                                             on_chunk=on_chunk))
        i = 0
        while not task.done():
            await j.record("note", payload={"i": i})
            during.append(deleted["events"])
            i += 1
        await task
    assert [d for d in during if 0 < d < 20_000] == []


async def test_chunk_size_must_be_positive(tmp_path):
    async with Journal(tmp_path / "j.sqlite", ManualClock(NOW)) as j:
        with pytest.raises(ValueError):
            await j.compact(NOW, chunk_rows=0)
        with pytest.raises(ValueError):
            await j.prune_ids(NOW, chunk_rows=0)
        assert await j.events() == []             # nothing happened


def test_chunk_queries_walk_the_time_indexes(tmp_path):
    """Each chunk reads two index ranges from its cursor (merged, no sort), not the table."""
    path = tmp_path / "j.sqlite"
    asyncio.run(_new_file(path))
    _old_notes(path, 50)
    conn = sqlite3.connect(path, isolation_level=None)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)   # the SQL as run, values bound
    try:
        cutoff = _ts(NOW)
        assert journal_compact.intents_chunk(conn, cutoff, TERMINAL, ("", 0), 10) == (0, None)
        deleted, cursor = journal_compact.events_chunk(conn, cutoff, ("", 0), 10)
        assert deleted == 10 and cursor is not None
        windows = [s for s in statements if "UNION ALL" in s]
        assert len(windows) == 2
        for sql in windows:
            plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert "MERGE (UNION ALL)" in plan and not any("TEMP B-TREE" in p for p in plan)
            assert sum("USING COVERING INDEX" in p for p in plan) == 2, plan
    finally:
        conn.close()


async def test_freed_pages_are_given_back_in_steps_up_to_the_bound(tmp_path):
    path = tmp_path / "j.sqlite"
    await _new_file(path)                        # a new file: auto_vacuum=INCREMENTAL
    _old_notes(path, 30_000)
    async with Journal(path, ManualClock(NOW)) as j:
        free_before = (await j.size())["free_pages"]
        counts = await j.compact(NOW - timedelta(days=14), vacuum_pages=700)
        assert counts["events"] == 30_000
        assert 500 < counts["pages_freed"] <= 700    # more than one step, never past the bound
        size = await j.size()
        assert size["free_pages"] > free_before       # the rest stays free for new rows
        again = await j.compact(NOW - timedelta(days=14), vacuum_pages=0)
        assert again["pages_freed"] == 0 and again["events"] == 0


async def test_a_new_journal_file_is_made_with_incremental_auto_vacuum(tmp_path):
    """auto_vacuum must be set before WAL mode writes the header: set after, it was ignored."""
    path = tmp_path / "j.sqlite"
    await _new_file(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2      # INCREMENTAL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
