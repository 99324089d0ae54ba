"""The journal's retention run in bounded chunks, so the writer is never held for long.

A one-shot `DELETE ... WHERE ts < cutoff` over a journal that built up 500k old rows keeps the
single writer thread (adapters/journal.py `_Writer`) in one transaction for seconds, and every
proposal / decision queued behind it waits that long to be committed (a proposal is
acknowledged only once journaled, a decision published only once journaled). Here the same
retention is cut into chunks of at most `chunk_rows` rows, each its own operation on the writer
queue (its own commit): whatever was queued while a chunk ran is committed with or right after
it, before the next chunk is handed over. A record therefore waits for at most about two chunks,
however large the compaction.

What is deleted is exactly what the one-shot statements deleted (tests/unit/
test_journal_compaction.py checks it against them):

- intents finished (terminal state) and last updated before the cutoff;
- events journaled before the cutoff, except the events of an intent still in `intents` and the
  proposal / decision rows a remembered id (`proposal_ids`) points at;
- ids first seen before their own cutoff (`prune_ids`).

Events and intents are walked in (timestamp, rowid) order with a cursor on their time index, so
rows kept (an open intent's, a remembered id's) are read once, not once per chunk. A crash
between chunks leaves a journal partly compacted, never inconsistent: each chunk only deletes
rows nothing needs, and the next run carries on. Only SQL and plain values here; the journal owns
the connection and the thread (it passes its `_submit`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# rows examined per chunk: ~4 ms of writer time each on a 2-core box (bench/bench_compaction.py;
# a 500k-row backlog takes ~1000 chunks, ~4 s in all); a record queued behind a chunk is
# committed within ~2 chunks
CHUNK_ROWS = 500
# pages given back per incremental_vacuum step (~5 ms each; the total stays the caller's
# `vacuum_pages`)
VACUUM_STEP = 200

Submit = Callable[[Callable[[sqlite3.Connection], Any], bool | None], Awaitable[Any]]
Cursor = tuple[str, int]
_START: Cursor = ("", 0)     # before every (ts, rowid): timestamps are non-empty ISO text


def _window(conn: sqlite3.Connection, table: str, ts_col: str, cutoff: str, after: Cursor,
            n: int) -> list[tuple[str, int]]:
    """The next `n` (ts, rowid) past `after` older than `cutoff`, in that order. Two index
    ranges merged (the rest of `after`'s timestamp, then the later ones), so rows with the
    cursor's own timestamp already walked are not read again."""
    return conn.execute(
        f"SELECT {ts_col}, rowid FROM {table} WHERE {ts_col} = ?1 AND rowid > ?2 UNION ALL"
        f" SELECT {ts_col}, rowid FROM {table} WHERE {ts_col} > ?1 AND {ts_col} < ?3"
        f" ORDER BY 1, 2 LIMIT ?4", (*after, cutoff, n)).fetchall()


def _step(rows: list[tuple[str, int]], n: int) -> tuple[str, Cursor | None]:
    """The rowids of a window as JSON (for json_each) and the cursor after it (None: the last)."""
    return "[" + ",".join(str(r[1]) for r in rows) + "]", (rows[-1] if len(rows) == n else None)


def intents_chunk(conn: sqlite3.Connection, cutoff: str, terminal: Sequence[str], after: Cursor,
                  n: int) -> tuple[int, Cursor | None]:
    """Delete the finished intents among the next `n` older than `cutoff`; returns (deleted, the
    cursor to go on from, or None when this was the last chunk)."""
    rows = _window(conn, "intents", "updated_ts", cutoff, after, n)
    if not rows:
        return 0, None
    ids, end = _step(rows, n)
    marks = ", ".join("?" * len(terminal))
    deleted = conn.execute(
        f"DELETE FROM intents WHERE rowid IN (SELECT value FROM json_each(?))"
        f" AND state IN ({marks})", (ids, *terminal)).rowcount
    return deleted, end


def events_chunk(conn: sqlite3.Connection, cutoff: str, after: Cursor,
                 n: int) -> tuple[int, Cursor | None]:
    """Delete the events nothing needs among the next `n` older than `cutoff` (see the module
    docstring); returns (deleted, cursor or None). A `proposal_ids` row only ever points at
    events of its own id (journal_ids.remember), so the look-up is by primary key."""
    rows = _window(conn, "events", "ts", cutoff, after, n)
    if not rows:
        return 0, None
    ids, end = _step(rows, n)
    deleted = conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))"
        " AND (proposal_id IS NULL OR NOT EXISTS"
        " (SELECT 1 FROM intents i WHERE i.proposal_id = events.proposal_id))"
        " AND NOT EXISTS (SELECT 1 FROM proposal_ids p WHERE p.proposal_id = events.proposal_id"
        " AND (p.proposal_seq = events.seq OR p.decision_seq = events.seq))", (ids,)).rowcount
    return deleted, end


def ids_chunk(conn: sqlite3.Connection, before: str, n: int) -> int:
    """Forget up to `n` of the ids first seen before `before`; returns how many."""
    return conn.execute(
        "DELETE FROM proposal_ids WHERE proposal_id IN (SELECT proposal_id FROM proposal_ids"
        " WHERE first_seen < ? ORDER BY first_seen LIMIT ?)", (before, n)).rowcount


def _vacuum_step(conn: sqlite3.Connection, pages: int) -> int:
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:   # 2: INCREMENTAL
        return 0
    before = conn.execute("PRAGMA freelist_count").fetchone()[0]
    # one page per statement: Python's sqlite3 resets a statement that returns no rows after its
    # first step, and incremental_vacuum frees one page per step (incremental_vacuum(N) once
    # freed a single page)
    for _ in range(min(before, int(pages))):
        conn.execute("PRAGMA incremental_vacuum(1)")
    return before - conn.execute("PRAGMA freelist_count").fetchone()[0]


async def compact(submit: Submit, cutoff: str, terminal: Sequence[str], *, vacuum_pages: int,
                  chunk_rows: int = CHUNK_ROWS,
                  on_chunk: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """The retention of Journal.compact, one chunk per writer operation (NORMAL commits, as
    before). `on_chunk(stage, deleted)` after each committed chunk (tests, benches)."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    counts = {"events": 0, "intents": 0, "pages_freed": 0, "chunks": 0}
    steps: dict[str, Callable[[sqlite3.Connection, Cursor], tuple[int, Cursor | None]]] = {
        # finished intents first: the events of an intent deleted here go in the next stage
        "intents": lambda conn, a: intents_chunk(conn, cutoff, terminal, a, chunk_rows),
        "events": lambda conn, a: events_chunk(conn, cutoff, a, chunk_rows),
    }
    for stage, step in steps.items():
        cursor: Cursor | None = _START
        while cursor is not None:
            deleted, cursor = await submit(lambda conn, a=cursor, f=step: f(conn, a), False)
            counts[stage] += deleted
            counts["chunks"] += 1
            if on_chunk is not None:
                on_chunk(stage, deleted)
    left = vacuum_pages
    while left > 0:
        # a write (pages move), NORMAL like the chunks: the old single step ran as a read
        freed = await submit(lambda conn, p=min(left, VACUUM_STEP): _vacuum_step(conn, p), False)
        counts["pages_freed"] += freed
        left -= VACUUM_STEP
        if freed < VACUUM_STEP:   # nothing (or nothing more) to give back
            break
    return counts


async def prune_ids(submit: Submit, before: str, *, chunk_rows: int = CHUNK_ROWS,
                    on_chunk: Callable[[str, int], None] | None = None) -> int:
    """journal_ids.prune in chunks of `chunk_rows` ids, one writer operation each."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    total = 0
    while True:
        deleted = await submit(lambda conn: ids_chunk(conn, before, chunk_rows), False)
        total += deleted
        if on_chunk is not None:
            on_chunk("ids", deleted)
        if deleted < chunk_rows:
            return total
