"""The journal: a durable, append-only record of everything the daemon decided and IB said.

Restart and reconnect code reads it to reconcile: which intents never reached IB, which
executions are already counted, what was decided for a proposal. SQLite (WAL) from the
standard library; one connection owned by one writer thread, so the event loop never waits
on an fsync.

Errors (all carry the proposal_id they concern, when there is one)::

    JournalError
     ├── JournalStateError      used before open / after close, or opened twice
     ├── SchemaVersionError     file written by a newer schema than this code knows
     ├── DuplicateIntent        a second intent for one proposal_id (= a second order)
     ├── UnknownIntent          mark_intent for a proposal_id without an intent
     ├── IntentStateError       an illegal intent state move (e.g. done -> sent)
     ├── JournalOpenError       the file cannot be a journal: corrupt, truncated, unreadable,
     │                          unwritable, an I/O error at open (carries path and cause)
     └── JournalOwnerError      the file was made for another mode or IB account (`claim`)

Integrity. Before SQLite opens the file, adapters/journal_files.py creates it 0600 in a 0700
directory (or brings an existing one to 0600; SQLite gives -wal/-shm the db file's mode) and
refuses what cannot be a journal; then the schema is read and one row is written (`meta`
`last_opened`): a read-only file fails here, not at the first proposal. The `meta` table
records the mode (default/paper/live) and the IB account the journal was made for; `claim()`
refuses another. A write that fails later (disk full, I/O error, a file made read-only) is
reported to `on_write_failure` (the daemon fails closed on it, see core/app.py).

Proposal ids. Recording a `proposal` or `decision` event also keeps one row per proposal_id
in `proposal_ids` (adapters/journal_ids.py), in the same transaction; `first_seen(pid)` reads
it back (first-journaled time, first proposal, first gate decision), `prune_ids(before)`
forgets old ids. Whoever rewrites record() must keep that row in step.

Durability. WAL + synchronous=NORMAL survives a SIGKILL at any point (the OS keeps the WAL
pages already written) but may lose the last commits on power loss or a kernel crash; WAL +
FULL fsyncs the WAL on every commit and survives both. Records whose loss after a power cut
could cause a wrong action are committed FULL (`DURABLE_KINDS`): intents and their state
moves (an order may be at IB), decisions (the idempotency answer to a re-delivered proposal),
trading-state changes (a HALT must stay a HALT) — but an intent's `acked` move on the
placement path, which the approved decision's FULL commit follows before anything is
published (ExecutionAgent._place). Everything IB tells us again on reconnect
(acks, statuses, fills, commissions) and the rest is NORMAL: those come in bursts (partial
fills, a reconcile after reconnect) and reconciliation re-reads them from IB anyway. A later
FULL commit fsyncs them too, the WAL being one sequential file.

Threads. One writer thread owns the connection and drains a queue: whatever arrived together
is committed in one transaction (group commit), so one fsync answers every waiter. Measured
with bench/bench_journal.py (ext4 VM disk, fsync ~0.25 ms; 50 concurrent writers, FULL):
writer thread 25k records/s, asyncio.to_thread + lock (a commit per record) 3k/s; one at a
time both ~2.5k/s (p50 0.38 ms). Writing on the loop itself stalls it for every fsync and
checkpoint (35 ms with 50 writers); the writer thread keeps loop lag near 1 ms. The price is a
thread hop, ~0.2 ms per awaited call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum, StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel

from bracketgate.adapters import (
    journal_attrib, journal_compact, journal_early, journal_files, journal_ids)
from bracketgate.adapters.journal_ids import SeenId
from bracketgate.core import stamps
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.fastjson import encoder
from bracketgate.core.logs import get_logger

log = get_logger(__name__)

DEFAULT_PATH = Path("data/journal.sqlite")
SCHEMA_VERSION = 4
CACHE_KIB = -4096  # PRAGMA cache_size (negative: KiB): SQLite's page cache, bounded at 4 MB
BATCH_MAX = 512  # most operations committed in one transaction (one fsync)
MAX_ORDER_ID_INTENTS = 1024   # newest intents read for the highest order id at start-up


# --------------------------------------------------------------------------- errors


class JournalError(Exception):
    def __init__(self, message: str, *, proposal_id: str | None = None) -> None:
        super().__init__(message)
        self.proposal_id = proposal_id


class JournalStateError(JournalError):
    pass


class SchemaVersionError(JournalError):
    pass


class DuplicateIntent(JournalError):
    pass


class UnknownIntent(JournalError):
    pass


class IntentStateError(JournalError):
    pass


class JournalOpenError(JournalError):
    """The file cannot be used as a journal. str(): one line naming the file and the cause."""

    def __init__(self, path: Path | str, cause: str) -> None:
        super().__init__(f"journal {path}: {cause}")
        self.path = str(path)
        self.cause = cause


class JournalOwnerError(JournalError):
    """The journal was made for another mode or IB account than the one starting now."""

    def __init__(self, path: Path | str, recorded: Mapping[str, str], current: Mapping[str, str]
                 ) -> None:
        def show(d: Mapping[str, str]) -> str:
            return f"mode={d.get('mode') or '?'} account={d.get('account') or '?'}"
        super().__init__(f"journal {path} was made for {show(recorded)}, this run is "
                         f"{show(current)}: refusing to start (use its own JOURNAL_PATH "
                         "for each account and mode)")
        self.path = str(path)
        self.recorded = dict(recorded)
        self.current = dict(current)


# --------------------------------------------------------------------------- kinds and states


class EventKind(StrEnum):
    PROPOSAL = "proposal"
    DECISION = "decision"
    INTENT = "intent"
    ACK = "ack"
    ORDER_STATUS = "order_status"
    FILL = "fill"
    COMMISSION = "commission"
    TRADING_STATE = "trading_state"
    ALERT = "alert"
    RECONCILE = "reconcile"
    NOTE = "note"


# "proposal" -> EventKind.PROPOSAL, ... (EventKind(text) is a Python-level enum call per event)
_KIND_OF: dict[str, EventKind] = {k.value: k for k in EventKind}

# committed with synchronous=FULL: losing these after a power cut could cause a wrong action
DURABLE_KINDS: frozenset[EventKind] = frozenset(
    {EventKind.INTENT, EventKind.DECISION, EventKind.TRADING_STATE}
)


class IntentState(StrEnum):
    """pending -> sent -> acked -> done | failed; `unknown` when restart cannot tell yet."""

    PENDING = "pending"   # journaled, not yet handed to IB
    SENT = "sent"         # placeOrder called for every leg
    ACKED = "acked"       # IB acknowledged (an order status came back)
    DONE = "done"         # the bracket is finished at IB (filled out or cancelled)
    FAILED = "failed"     # never placed, or rejected by IB
    UNKNOWN = "unknown"   # restart found it unresolved; reconciliation will settle it

    @property
    def terminal(self) -> bool:
        return self in (IntentState.DONE, IntentState.FAILED)


_RANK = {IntentState.PENDING: 0, IntentState.SENT: 1, IntentState.ACKED: 2,
         IntentState.DONE: 3, IntentState.FAILED: 3}


def intent_move_allowed(old: IntentState, new: IntentState) -> bool:
    """Forward only; `unknown` is reachable from any live state and leaves to any later one."""
    if old.terminal:
        return False
    if new is IntentState.UNKNOWN:
        return old is not IntentState.UNKNOWN
    if old is IntentState.UNKNOWN:
        return new is not IntentState.PENDING
    return _RANK[new] > _RANK[old]


@dataclass(frozen=True, slots=True)
class IntentRecord:
    proposal_id: str
    agent_id: str | None
    created_ts: datetime
    updated_ts: datetime
    state: IntentState
    order_ids: dict[str, int] | None
    payload: dict[str, Any]


class _Lifecycle(StrEnum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


Synchronous = Literal["auto", "normal", "full"]


# --------------------------------------------------------------------------- encoding


def _ts(when: datetime) -> str:
    """Fixed-width UTC ISO text, so text order is time order: 2026-11-20T15:00:00.000000+00:00."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _plain(value: Any) -> Any:
    """JSON-safe copy: models dumped in json mode, non-finite floats as text ("nan", "inf")."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"journal payload holds a {type(value).__name__}, which has no JSON form")


def _no_json_form(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# the payloads' encoder, built once (core/fastjson.py): json.dumps' compact, finite output
_json = encoder(_no_json_form, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A payload encoded once (`encode`): its JSON-safe body and its text. record() and
    record_many() take it as a payload as it is, so its caller can publish the same bytes."""

    body: Mapping[str, Any]
    text: str


def _encode(value: Any) -> tuple[Any, str]:
    """(JSON-safe value, its text). Fast path: most payloads are model dumps that json takes
    as they are; only those holding datetimes, enums, NaN, ... are walked by _plain."""
    if isinstance(value, Encoded):
        return value.body, value.text
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return value, _json(value)
    except (TypeError, ValueError):
        plain = _plain(value)
        return plain, _json(plain)


def encode(payload: Mapping[str, Any] | BaseModel) -> Encoded:
    """A journal payload encoded as record() would encode it (raises as record() would)."""
    body, text = _encode(payload)
    if not isinstance(body, Mapping):
        raise TypeError("a journal payload is a mapping or a pydantic model")
    return Encoded(body, text)


def _order_ids(value: Any) -> dict[str, int] | None:
    """BracketOrderIds, a {leg: id} mapping or a sequence (entry, take_profit, stop_loss)."""
    if value is None:
        return None
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        legs = ("entry", "take_profit", "stop_loss")
        if len(value) > len(legs):
            raise ValueError(f"at most {len(legs)} order ids, got {len(value)}")
        return {leg: int(v) for leg, v in zip(legs, value)}
    raise TypeError(f"order_ids must be BracketOrderIds, a mapping or a sequence, not {value!r}")


def _ids_from(payload: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    """proposal_id, agent_id, order_id found at the top of a payload (or in its `proposal`)."""
    sources = [payload]
    if isinstance(payload.get("proposal"), Mapping):
        sources.append(payload["proposal"])
    pid = aid = None
    oid: int | None = None
    for src in sources:
        if pid is None and isinstance(src.get("proposal_id"), str):
            pid = src["proposal_id"]
        if aid is None and isinstance(src.get("agent_id"), str):
            aid = src["agent_id"]
        raw = src.get("order_id")
        if oid is None and isinstance(raw, int) and not isinstance(raw, bool):
            oid = raw
    return pid, aid, oid


# --------------------------------------------------------------------------- schema


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE events ("
        " seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL,"
        " proposal_id TEXT, agent_id TEXT, order_id INTEGER, payload TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX events_proposal ON events(proposal_id)")
    conn.execute("CREATE INDEX events_ts ON events(ts)")
    conn.execute(
        "CREATE TABLE intents ("
        " proposal_id TEXT PRIMARY KEY, agent_id TEXT, created_ts TEXT NOT NULL,"
        " state TEXT NOT NULL, order_ids TEXT, payload TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX intents_state ON intents(state)")


def _v2(conn: sqlite3.Connection) -> None:
    """Fills looked up by exec_id (a re-sent execDetails is not a second fill); intent
    updated_ts. The index is not UNIQUE: a v1 file may already hold a repeated fill, and the
    journal never deletes history. record() keeps new fills unique (one writer, no race)."""
    conn.execute(
        "CREATE INDEX events_fill_exec ON events(json_extract(payload, '$.exec_id'))"
        " WHERE kind = 'fill'"
    )
    conn.execute("ALTER TABLE intents ADD COLUMN updated_ts TEXT")
    conn.execute("UPDATE intents SET updated_ts = created_ts")


def _v3(conn: sqlite3.Connection) -> None:
    """`meta` (the mode and IB account the journal is for) and `proposal_ids` (the long memory
    of ids, see adapters/journal_ids.py), back-filled from the events already journaled."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    for sql in journal_ids.SCHEMA:
        conn.execute(sql)
    journal_ids.backfill(conn)


def _v4(conn: sqlite3.Connection) -> None:
    """Indexes that keep start-up and retention cheap however long the journal grows (see
    `recovery_set`, `compact`): every query of the read path is an index range, not a scan."""
    for sql in V4_INDEXES:
        conn.execute(sql)


V4_INDEXES = (
    # fills / proposals of a time window (attribution at start-up, exec_ids, compaction)
    "CREATE INDEX IF NOT EXISTS events_kind_ts ON events(kind, ts)",
    # a fill's delivery record, looked up by exec_id
    "CREATE INDEX IF NOT EXISTS events_ack_exec ON events(json_extract(payload, '$.exec_id'))"
    " WHERE kind = 'ack'",
    # ids journaled but never decided: what start-up must offer to the gate again
    "CREATE INDEX IF NOT EXISTS proposal_ids_undecided ON proposal_ids(first_seen)"
    " WHERE decision_seq IS NULL",
    # decisions by their seq: the ones past the recovery checkpoint, the newest few
    "CREATE INDEX IF NOT EXISTS proposal_ids_decision ON proposal_ids(decision_seq)"
    " WHERE decision_seq IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS intents_updated ON intents(updated_ts)",
)


# MIGRATIONS[n] moves a file from user_version n to n + 1
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4)
assert len(MIGRATIONS) == SCHEMA_VERSION


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the file to SCHEMA_VERSION in one transaction; returns (old, new) user_version.

    The connection must be in autocommit mode (isolation_level=None).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = conn.execute("PRAGMA user_version").fetchone()[0]
        if old > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"journal schema {old} is newer than this code's {SCHEMA_VERSION}"
            )
        for version in range(old, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old, SCHEMA_VERSION


# --------------------------------------------------------------------------- queries


_EVENT_COLUMNS = "seq, ts, kind, proposal_id, agent_id, order_id, payload"


def _event_query(
    since: datetime | None = None,
    proposal_id: str | None = None,
    kinds: Iterable[str] | None = None,
    after_seq: int | None = None,
    limit: int | None = None,
) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("ts >= ?")
        args.append(_ts(since))
    if proposal_id is not None:
        where.append("proposal_id = ?")
        args.append(proposal_id)
    if kinds is not None:
        kinds = [EventKind(k).value for k in kinds]
        where.append(f"kind IN ({', '.join('?' * len(kinds))})")
        args.extend(kinds)
    if after_seq is not None:
        where.append("seq > ?")
        args.append(after_seq)
    sql = f"SELECT {_EVENT_COLUMNS} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


def _event_row(row: tuple[Any, ...]) -> dict[str, Any]:
    seq, ts, kind, pid, aid, oid, payload = row
    return {"seq": seq, "ts": ts, "kind": kind, "proposal_id": pid, "agent_id": aid,
            "order_id": oid, "payload": json.loads(payload)}


def _intent_row(r: tuple[Any, ...]) -> IntentRecord:
    return IntentRecord(
        proposal_id=r[0], agent_id=r[1],
        created_ts=datetime.fromisoformat(r[2]),
        updated_ts=datetime.fromisoformat(r[3] or r[2]),
        state=IntentState(r[4]),
        order_ids=json.loads(r[5]) if r[5] else None,
        payload=json.loads(r[6]),
    )


# --------------------------------------------------------------------------- recovery reads


@dataclass(slots=True)
class RecoverySet:
    """What start-up reads (Journal.recovery_set); payloads decoded, each list in seq order."""

    checkpoint: int
    undecided: list[dict[str, Any]]
    undelivered_decisions: list[dict[str, Any]]
    undelivered_fills: list[dict[str, Any]]
    attribution: journal_attrib.Attribution   # the window's fills, summed per agent (stored)
    decisions: list[tuple[dict[str, Any], dict[str, Any]]]   # (first proposal, first decision)


CHECKPOINT_KEY = "recovery_checkpoint"

_UNDELIVERED_DECISIONS = (
    "SELECT i.decision_seq, d.payload FROM proposal_ids i JOIN events d ON d.seq = i.decision_seq"
    " WHERE i.decision_seq > ? AND d.ts >= ? AND NOT EXISTS (SELECT 1 FROM events a"
    "  INDEXED BY events_proposal WHERE a.proposal_id = i.proposal_id AND a.kind = 'ack'"
    "  AND json_extract(a.payload, '$.delivered') = 'decision')"
    " ORDER BY i.decision_seq")
_UNDELIVERED_FILLS = (
    "SELECT f.seq, f.payload FROM events f WHERE f.seq > ? AND f.kind = 'fill' AND f.ts >= ?"
    " AND NOT EXISTS (SELECT 1 FROM events a INDEXED BY events_ack_exec WHERE a.kind = 'ack'"
    "  AND json_extract(a.payload, '$.exec_id') = json_extract(f.payload, '$.exec_id')"
    "  AND json_extract(a.payload, '$.delivered') = 'fill')"
    " ORDER BY f.seq")
# the two queries above and these, each an index range (checked with EXPLAIN QUERY PLAN in
# tests/unit/test_journal_bounded.py)
_UNDECIDED = (
    "SELECT p.payload FROM proposal_ids i JOIN events p ON p.seq = i.proposal_seq"
    " WHERE i.decision_seq IS NULL AND i.first_seen >= ? AND i.proposal_seq IS NOT NULL"
    " ORDER BY i.proposal_seq")
_RECENT_DECISIONS = (
    "SELECT p.payload, d.payload FROM proposal_ids i JOIN events d ON d.seq = i.decision_seq"
    " JOIN events p ON p.seq = i.proposal_seq WHERE i.decision_seq IS NOT NULL AND d.ts >= ?"
    " ORDER BY i.decision_seq DESC LIMIT ?")

RECOVERY_QUERIES = {"undelivered_decisions": _UNDELIVERED_DECISIONS,
                    "undelivered_fills": _UNDELIVERED_FILLS, "undecided": _UNDECIDED,
                    "recent_decisions": _RECENT_DECISIONS, **journal_attrib.QUERIES}


# the exec_ids of every journaled fill, from the expression index alone (its rows are the ids)
_EXEC_IDS_FROM_INDEX = (
    "SELECT json_extract(payload, '$.exec_id') FROM events INDEXED BY events_fill_exec"
    " WHERE kind = 'fill' AND json_extract(payload, '$.exec_id') IS NOT NULL")


_INTENT_COLUMNS = ("i.proposal_id, i.agent_id, i.created_ts, i.updated_ts, i.state, i.order_ids,"
                   " i.payload, i.rowid")
# the intents start-up loads (Journal.intents_to_load), each an index search
INTENTS_LIVE = f"SELECT {_INTENT_COLUMNS} FROM intents i WHERE i.state IN ({{marks}})"
INTENTS_UNDECIDED = (
    f"SELECT {_INTENT_COLUMNS} FROM proposal_ids p INDEXED BY proposal_ids_undecided"
    " JOIN intents i ON i.proposal_id = p.proposal_id WHERE p.decision_seq IS NULL"
    " AND i.state IN (?, ?)")


def _read_checkpoint(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CHECKPOINT_KEY,)).fetchone()
    return int(row[0]) if row else 0


def _write_checkpoint(conn: sqlite3.Connection, seq: int) -> int:
    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                 " value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS"
                 " INTEGER)", (CHECKPOINT_KEY, str(seq)))
    return _read_checkpoint(conn)


def _checkpoint_candidate(conn: sqlite3.Connection, current: int, cutoff: str) -> int:
    """The highest seq S >= current such that nothing at or below S is still undelivered."""
    top = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    pending = [conn.execute(f"SELECT min(seq) FROM ({sql})", (current, cutoff)).fetchone()[0]
               for sql in (_UNDELIVERED_DECISIONS.replace("i.decision_seq, d.payload",
                                                          "i.decision_seq AS seq"),
                           _UNDELIVERED_FILLS.replace("f.seq, f.payload", "f.seq AS seq"))]
    first = min((p for p in pending if p is not None), default=None)
    return max(current, top if first is None else first - 1)


def _checkpoint_candidate_file(path: Path, current: int, cutoff: str
                               ) -> tuple[int, journal_attrib.Attribution]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")   # one snapshot: the attribution's `through` and its rows agree
        att = journal_attrib.advance(conn, journal_attrib.read(conn), cutoff)
        found = _checkpoint_candidate(conn, current, cutoff)
        conn.execute("COMMIT")
        return found, att
    finally:
        conn.close()


def _advance_checkpoint(read: sqlite3.Connection, write: sqlite3.Connection, cutoff: str) -> int:
    current = _read_checkpoint(read)
    journal_attrib.write(write, journal_attrib.advance(read, journal_attrib.read(read), cutoff))
    return _write_checkpoint(write, _checkpoint_candidate(read, current, cutoff))


def _recovery_set(conn: sqlite3.Connection, cutoff: str, recent: int) -> RecoverySet:
    checkpoint = _read_checkpoint(conn)
    rows = conn.execute(_RECENT_DECISIONS, (cutoff, recent)).fetchall()
    attribution = journal_attrib.advance(conn, journal_attrib.read(conn), cutoff)
    journal_attrib.write(conn, attribution)   # the next start reads from here
    return RecoverySet(
        checkpoint=checkpoint,
        undecided=[json.loads(r[0]) for r in conn.execute(_UNDECIDED, (cutoff,))],
        undelivered_decisions=[json.loads(r[1]) for r in
                               conn.execute(_UNDELIVERED_DECISIONS, (checkpoint, cutoff))],
        undelivered_fills=[json.loads(r[1]) for r in
                           conn.execute(_UNDELIVERED_FILLS, (checkpoint, cutoff))],
        attribution=attribution,
        decisions=[(json.loads(p), json.loads(d)) for p, d in reversed(rows)],
    )


# a proposal journaled once per id: (the id has a row, its proposal_seq, a proposal event of the
# id exists: by the id's own index, see _event_write)
_PROPOSAL_ONCE = (
    "SELECT EXISTS(SELECT 1 FROM proposal_ids WHERE proposal_id = ?1),"
    " (SELECT proposal_seq FROM proposal_ids WHERE proposal_id = ?1),"
    " EXISTS(SELECT 1 FROM events INDEXED BY events_proposal WHERE proposal_id = ?1"
    " AND kind = 'proposal')")


_INSERT_EVENT = ("INSERT INTO events(ts, kind, proposal_id, agent_id, order_id, payload)"
                 " VALUES (?, ?, ?, ?, ?, ?)")


def _insert_event(conn: sqlite3.Connection, ts: str, kind: str, pid: str | None,
                  aid: str | None, oid: int | None, payload: str) -> int:
    cur = conn.execute(_INSERT_EVENT, (ts, kind, pid, aid, oid, payload))
    assert cur.lastrowid is not None
    return cur.lastrowid


def _cause(exc: BaseException) -> str:
    """SQLite's reason in words an operator acts on."""
    text = str(exc)
    hints = {"file is not a database": "not an SQLite database (corrupt or another kind of file)",
             "database disk image is malformed": "corrupt (database disk image is malformed)",
             "readonly database": "not writable (read-only file or directory)",
             "unable to open database file": "cannot be opened (missing directory, permissions"
                                             " or a read-only directory for -wal/-shm)",
             "disk I/O error": "disk I/O error",
             "database or disk is full": "the disk is full"}
    for needle, words in hints.items():
        if needle in text:
            return words
    return text or type(exc).__name__


# --------------------------------------------------------------------------- writer thread


@dataclass(slots=True)
class _Op:
    run: Callable[[sqlite3.Connection], Any]
    durable: bool | None  # None: a read; True: commit with synchronous=FULL
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    stop: bool = False  # close(): finish what came before, close the connection, answer
    queued_at: float = field(default_factory=time.perf_counter)   # for the write latency


def _resolve(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return  # cancelled: the caller went away; the write itself is not withdrawn
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _resolve_all(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, error in answers:
        _resolve(fut, result, error)


def _answer(ops: Iterable[_Op], error: BaseException | None) -> None:
    """Answer `ops` from the writer thread: None, or `error` when there is one."""
    for op in ops:
        try:
            op.loop.call_soon_threadsafe(_resolve, op.future, None, error)
        except RuntimeError:  # that loop is closed: nobody is waiting there any more
            continue


class _Writer(threading.Thread):
    """Owns the connection. Drains the queue, runs a batch in one transaction (a savepoint
    per operation, so one failure does not undo its neighbours), commits once, then answers
    every waiter. Nobody hears "written" before the commit returned."""

    def __init__(self, path: str, synchronous: Synchronous, batch_max: int) -> None:
        super().__init__(name="journal-writer", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.batch_max = batch_max
        self.ops: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self.ready: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._sync_full: bool | None = None
        self.stats = {"batches": 0, "ops": 0, "full_commits": 0}
        # called on the loop with the error when a write fails in SQLite (not a logical refusal
        # such as DuplicateIntent): the file is full, gone read-only, or failing
        self.on_write_failure: Callable[[BaseException], None] | None = None
        # called IN THIS THREAD after each committed batch of writes with the seconds its oldest
        # write waited from being handed over until committed (core/metrics.py; must be cheap)
        self.on_commit: Callable[[float], None] | None = None

    # -- setup, in the thread
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise JournalOpenError(self.path, _cause(exc)) from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            # a new file frees pages incrementally (`compact`): set before WAL mode, which
            # writes the header and fixes auto_vacuum for good (set after it, it was ignored)
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal" and self.path != ":memory:":
                raise JournalOpenError(self.path, f"cannot be put in WAL mode (got {mode!r}):"
                                       " read-only or on a file system without shared memory")
            # bounded page cache (4 MB; SQLite's default is 2 MB), outside any transaction
            conn.execute(f"PRAGMA cache_size = {CACHE_KIB}")
            old, new = migrate(conn)  # a failed migration raises as it is (the file is left as it was)
            if old != new:
                log.info("journal.migrated", path=self.path, old_version=old, new_version=new)
            # one real write at open: a journal that cannot take one is refused now
            conn.execute("INSERT INTO meta(key, value) VALUES ('last_opened', ?) ON CONFLICT(key)"
                         " DO UPDATE SET value = excluded.value", (_ts(datetime.now(timezone.utc)),))
        except sqlite3.Error as exc:
            conn.close()
            raise JournalOpenError(self.path, _cause(exc)) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _failed(self, exc: BaseException) -> None:
        if self.on_write_failure is not None and self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.on_write_failure, exc)
            except RuntimeError:  # the loop is closed
                pass

    def _set_sync(self, conn: sqlite3.Connection, full: bool) -> None:
        if self.synchronous != "auto":
            full = self.synchronous == "full"
        if full != self._sync_full:
            conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    def run(self) -> None:
        assert self.loop is not None and self.ready is not None
        try:
            conn = self._connect()
        except BaseException as exc:  # delivered to open(), which raises it
            self.loop.call_soon_threadsafe(_resolve, self.ready, None, exc)
            return
        self.loop.call_soon_threadsafe(_resolve, self.ready, None, None)
        closing: _Op | None = None
        batch: list[_Op] = []
        try:
            while closing is None:
                batch = [self.ops.get()]
                while len(batch) < self.batch_max:
                    try:
                        batch.append(self.ops.get_nowait())
                    except queue.Empty:
                        break
                stop_at = next((i for i, op in enumerate(batch) if op.stop), None)
                if stop_at is not None:
                    closing = batch[stop_at]
                    _answer(batch[stop_at + 1:], JournalStateError("journal is closed"))
                    batch = batch[:stop_at]
                if batch:
                    self._run_batch(conn, batch)
                batch = []
        except BaseException as exc:
            log.exception("journal.writer_failed", error=repr(exc))
            leftovers = list(batch)
            while True:
                try:
                    leftovers.append(self.ops.get_nowait())
                except queue.Empty:
                    break
            # logged above and delivered to every waiter; the thread ends, later calls fail fast
            _answer(leftovers, JournalError(f"the journal writer failed: {exc!r}"))
        finally:
            error: BaseException | None = None
            try:
                conn.close()
            except sqlite3.Error as exc:
                error = exc
            if closing is not None:
                _answer([closing], error)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        writes = [op.durable for op in batch if op.durable is not None]
        try:
            if writes:
                self._set_sync(conn, any(writes))
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = op.run(conn)
                except Exception as exc:  # the caller receives it through its future
                    conn.execute("ROLLBACK TO op")
                    results.append((None, exc))
                    if isinstance(exc, sqlite3.Error):
                        self._failed(exc)
                else:
                    results.append((result, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
            if stamps.ON and writes:   # when each FULL commit returned, in the writer thread
                stamps.stamp("", "full_commit" if self._sync_full else "normal_commit")
        except sqlite3.Error as exc:
            log.error("journal.commit_failed", error=str(exc), batch=len(batch))
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_exc:  # SQLite rolled back by itself
                    log.warning("journal.rollback_failed", error=str(rollback_exc))
            results = [(None, exc)] * len(batch)
            if writes:
                self._failed(exc)
        else:
            self.stats["batches"] += 1
            self.stats["ops"] += len(batch)
            self.stats["full_commits"] += bool(writes) and bool(self._sync_full)
            if writes and self.on_commit is not None:
                self.on_commit(time.perf_counter() - min(op.queued_at for op in batch))
        # one wake-up per loop per batch, not one per operation
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
        for op, (result, error) in zip(batch, results):
            by_loop.setdefault(op.loop, []).append((op.future, result, error))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, answers)
            except RuntimeError as exc:  # that loop is closed: nobody is waiting there any more
                log.warning("journal.answer_undeliverable", error=str(exc), ops=len(answers))


# --------------------------------------------------------------------------- the journal


class Journal:
    """Async journal over one SQLite file.

    `journal = await Journal.open(path, clock)` or `async with Journal(path, clock) as j:`.
    Every method is a coroutine answered by the writer thread after its commit. A cancelled
    caller does not withdraw a write already queued.
    """

    def __init__(
        self,
        path: Path | str,
        clock: Clock = SYSTEM_CLOCK,
        *,
        synchronous: Synchronous = "auto",
        batch_max: int = BATCH_MAX,
        on_write_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        if synchronous not in ("auto", "normal", "full"):
            raise ValueError(f"synchronous must be auto, normal or full, not {synchronous!r}")
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.path = Path(path)
        self.clock = clock
        self.synchronous = synchronous
        self.batch_max = batch_max
        self._state = _Lifecycle.UNOPENED
        self._writer: _Writer | None = None
        self.on_write_failure = on_write_failure
        self._fresh: dict[str, tuple[str | None, str]] = {}   # proposal_id -> (agent, first ts)
        # proposal writes in flight: proposal_id -> its look-up's answer, given by the writer
        # thread before the commit (journal_early.py); ids answered early, until committed
        self._looking: dict[str, asyncio.Future[Any]] = {}
        self._early: set[str] = set()
        self._unjournaled: dict[str, None] = {}   # proposal writes that failed, oldest first

    # -- lifecycle
    @classmethod
    async def open(cls, path: Path | str, clock: Clock = SYSTEM_CLOCK, **kwargs: Any) -> Journal:
        journal = cls(path, clock, **kwargs)
        await journal.start()
        return journal

    async def start(self) -> None:
        if self._state is not _Lifecycle.UNOPENED:
            raise JournalStateError(f"journal is {self._state}, cannot open")
        target = str(self.path)
        if target != ":memory:":
            self._check_file()
        loop = asyncio.get_running_loop()
        writer = _Writer(target, self.synchronous, self.batch_max)
        writer.loop = loop
        writer.ready = loop.create_future()
        writer.on_write_failure = self.on_write_failure
        writer.start()
        await writer.ready
        if target != ":memory:":
            journal_files.prepare(self.path)   # -wal / -shm exist now: owner-only as well
        self._writer = writer
        self._state = _Lifecycle.OPEN
        log.info("journal.opened", path=target, synchronous=self.synchronous)

    def _check_file(self) -> None:
        """Create the file owner-only (0600 in a 0700 directory); refuse one that cannot be a
        journal with a JournalOpenError naming the file and the cause."""
        try:
            for warning in journal_files.prepare(self.path):
                log.warning("journal.file_mode", path=str(self.path), problem=warning)
        except OSError as exc:
            raise JournalOpenError(self.path, f"cannot be created: {exc.strerror or exc}") from exc
        problem = journal_files.usable(self.path)
        if problem is not None:
            raise JournalOpenError(self.path, problem)

    async def close(self) -> None:
        """Finish every queued operation, close the file. Closing twice is a no-op."""
        if self._state is not _Lifecycle.OPEN:
            self._state = _Lifecycle.CLOSED
            return
        self._state = _Lifecycle.CLOSED
        writer = self._writer
        assert writer is not None
        loop = asyncio.get_running_loop()
        done = _Op(lambda conn: None, None, loop.create_future(), loop, stop=True)
        writer.ops.put(done)
        # joining (not awaiting `done`) also returns when the writer died before seeing the
        # stop; its answer was queued on this loop before the thread ended, so it is in by now
        await asyncio.to_thread(writer.join)
        log.info("journal.closed", path=str(self.path), **writer.stats)
        if done.future.done():
            await done.future  # raises if closing the connection failed
        else:
            done.future.cancel()

    async def __aenter__(self) -> Journal:
        if self._state is _Lifecycle.UNOPENED:
            await self.start()
        elif self._state is _Lifecycle.CLOSED:
            raise JournalStateError("journal is closed")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._state is _Lifecycle.OPEN

    @property
    def stats(self) -> dict[str, int]:
        """Batches and operations committed so far (group commit at work: ops / batches)."""
        return dict(self._writer.stats) if self._writer else {}

    def observe_commits(self, callback: Callable[[float], None] | None) -> None:
        """`callback(seconds)` after each committed batch of writes, in the writer thread: how
        long its oldest write waited from record() until committed (metrics, status lag)."""
        if self._writer is not None:
            self._writer.on_commit = callback

    @property
    def pending(self) -> int:
        """Operations handed to the writer and not yet taken up (approximate)."""
        return self._writer.ops.qsize() if self._writer else 0

    def _submit(self, run: Callable[[sqlite3.Connection], Any], durable: bool | None) -> Any:
        if self._state is not _Lifecycle.OPEN:
            raise JournalStateError(f"journal is {self._state}")
        assert self._writer is not None
        if not self._writer.is_alive():
            raise JournalError("the journal writer thread is gone; reopen the journal")
        loop = asyncio.get_running_loop()
        op = _Op(run, durable, loop.create_future(), loop)
        self._writer.ops.put(op)
        return op.future

    # -- writes
    async def record(
        self,
        kind: EventKind | str,
        *,
        proposal_id: str | None = None,
        agent_id: str | None = None,
        order_id: int | None = None,
        payload: Mapping[str, Any] | BaseModel | None = None,
        durable: bool | None = None,
        once: bool = False,
    ) -> int | None:
        """Append one event; returns its seq once committed.

        proposal_id / agent_id / order_id default to the payload's own fields. A fill whose
        exec_id is already journaled is not written again: the first one's seq is returned.
        `durable` overrides the per-kind choice (`DURABLE_KINDS`). `once`: not written (None
        returned) when an event of this kind is already journaled for the proposal_id; the
        look-up runs in the write's own transaction, so nothing can come in between.
        """
        run, full = self._event_write(kind, proposal_id, agent_id, order_id, payload, durable, once)
        seq = await self._submit(run, full)
        self._note_fresh(run)
        return seq

    async def record_many(self, events: Sequence[Mapping[str, Any]]) -> list[int | None]:
        """Append several events in ONE operation (one transaction, one commit): each item holds
        record()'s keyword arguments plus `kind`. All or none: when one fails, none is written
        and the error is raised. Committed FULL when any of them is durable."""
        if not events:
            return []
        ts = _ts(self.clock.now())   # one time for the events committed together
        writes = [self._event_write(e["kind"], e.get("proposal_id"), e.get("agent_id"),
                                    e.get("order_id"), e.get("payload"), e.get("durable"),
                                    e.get("once", False), ts) for e in events]
        runs = [run for run, _ in writes]
        rows = [run.row for run in runs]  # type: ignore[attr-defined]
        looking = journal_early.register(self._looking, events, runs)
        traced = [(str(e["proposal_id"]), str(e["kind"])) for e in events
                  if e.get("proposal_id")] if stamps.ON else None

        def run_all(conn: sqlite3.Connection) -> list[int | None]:
            # a run of plain inserts (acks, statuses: no look-up, no id row) is one executemany
            seqs: list[int | None] = []
            i, n = 0, len(runs)
            while i < n:
                j = i
                while j < n and rows[j] is not None:
                    j += 1
                if j - i > 1:
                    conn.executemany(_INSERT_EVENT, rows[i:j])
                    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                    seqs.extend(range(last - (j - i) + 1, last + 1))  # one writer: consecutive
                    i = j
                else:
                    seqs.append(runs[i](conn))
                    i += 1
            if looking:
                journal_early.answer(looking)   # before the commit: the gate need not wait
            if traced:
                ran = time.perf_counter()
                for pid, what in traced:
                    stamps.stamp(pid, what + "_ran", ran)
            return seqs

        try:
            seqs = await self._submit(run_all, any(full for _, full in writes))
        except Exception:
            journal_early.settle(self, looking, committed=False)
            raise
        except BaseException:   # the caller went away: the write itself is not withdrawn
            journal_early.settle(self, looking, committed=None)
            raise
        journal_early.settle(self, looking, committed=True)
        for run in runs:
            self._note_fresh(run)
        return seqs

    # -- ids journaled for the first time: the gate's look-up of them needs no round trip
    FRESH_MAX = 65_536

    def _note_fresh(self, run: Any) -> None:
        """After a committed write: a proposal_id that no row knew before it is remembered here
        (first-journaled time, agent) so `first_seen` answers it without the writer thread."""
        decided = getattr(run, "decided", None)
        if decided is not None:   # a decision for an id makes the "nothing decided" answer stale
            self._fresh.pop(decided, None)
        hit = getattr(run, "fresh", None)
        if hit and hit[0][0] in self._early:   # its look-up was answered before the commit
            self._early.discard(hit[0][0])
        elif hit:
            if len(self._fresh) >= self.FRESH_MAX:
                self._fresh.clear()   # the look-ups fall back to SQLite: correct, only slower
            pid, aid, ts = hit[0]
            self._fresh[pid] = (aid, ts)

    def _event_write(self, kind: EventKind | str, proposal_id: str | None, agent_id: str | None,
                     order_id: int | None, payload: Mapping[str, Any] | BaseModel | None,
                     durable: bool | None, once: bool, ts: str | None = None,
                     ) -> tuple[Callable[[sqlite3.Connection], int | None], bool]:
        """(the insert, run in the writer thread; committed FULL?) of one event. Encoding
        happens here, on the caller's side, so a bad payload raises before anything is queued
        (an `Encoded` payload was encoded by the caller: taken as it is)."""
        kind = _KIND_OF.get(kind) or EventKind(kind)  # type: ignore[arg-type]
        if kind is EventKind.INTENT:
            raise ValueError("intents are written with record_intent(), which keeps both tables")
        body, text = _encode(payload if payload is not None else {})
        if not isinstance(body, Mapping):
            raise TypeError("a journal payload is a mapping or a pydantic model")
        pid, aid, oid = _ids_from(body)
        pid = proposal_id if proposal_id is not None else pid
        aid = agent_id if agent_id is not None else aid
        oid = order_id if order_id is not None else oid
        if ts is None:
            ts = _ts(self.clock.now())
        exec_id = body.get("exec_id") if kind is EventKind.FILL else None
        remembered = kind is EventKind.PROPOSAL or kind is EventKind.DECISION
        only_once = once and pid is not None

        fresh: list[tuple[str, str | None, str]] = []

        def run(conn: sqlite3.Connection) -> int | None:
            fresh.clear()
            known = None
            if kind is EventKind.PROPOSAL and pid is not None:
                if only_once:   # both look-ups below in one statement (a writer-thread hop less)
                    found, proposal_seq, journaled = conn.execute(_PROPOSAL_ONCE, (pid,)).fetchone()
                    if found:
                        if proposal_seq is not None:
                            return None   # this id's proposal is journaled already
                        known = (proposal_seq,)
                    elif journaled:
                        return None       # journaled, its id row pruned since
                else:
                    known = conn.execute("SELECT proposal_seq FROM proposal_ids WHERE"
                                         " proposal_id = ?", (pid,)).fetchone()
            elif only_once:   # another kind, once per id
                # by the id's own index (the planner would pick (kind, ts) and scan every
                # proposal ever journaled: a third of the daemon's time at 1,000/s)
                if conn.execute(
                        "SELECT 1 FROM events INDEXED BY events_proposal WHERE proposal_id = ?"
                        " AND kind = ? LIMIT 1", (pid, kind.value)).fetchone() is not None:
                    return None
            new_id = kind is EventKind.PROPOSAL and pid is not None and known is None
            if exec_id is not None:
                row = conn.execute(
                    "SELECT seq FROM events WHERE kind = 'fill'"
                    " AND json_extract(payload, '$.exec_id') = ?", (exec_id,)).fetchone()
                if row is not None:
                    log.info("journal.fill_duplicate", exec_id=exec_id, seq=row[0],
                             proposal_id=pid)
                    return int(row[0])
            seq = _insert_event(conn, ts, kind.value, pid, aid, oid, text)
            if remembered:
                journal_ids.remember(conn, kind.value, pid, aid, ts, seq, body)
            if new_id:
                fresh.append((pid, aid, ts))
            return seq

        # the row alone, when the insert is all there is to it (record_many: executemany)
        run.row = (None if remembered or only_once or exec_id is not None  # type: ignore[attr-defined]
                   else (ts, kind.value, pid, aid, oid, text))
        run.fresh = fresh  # type: ignore[attr-defined]  # read by _note_fresh after the commit
        run.decided = pid if kind is EventKind.DECISION else None  # type: ignore[attr-defined]
        return run, kind in DURABLE_KINDS if durable is None else durable

    async def record_intent(
        self,
        bracket: BaseModel | Mapping[str, Any],
        order_ids: Any = None,
    ) -> int:
        """Journal the intent to place `bracket` (state pending), durable (FULL) before
        returning; returns the event seq. Call it BEFORE the order is sent. A second intent
        for the same proposal_id raises DuplicateIntent and writes nothing."""
        return await self.submit_intent(bracket, order_ids)

    def submit_intent(self, bracket: BaseModel | Mapping[str, Any],
                      order_ids: Any = None) -> asyncio.Future[int]:
        """record_intent's write, queued now: its future (the seq once committed FULL, or its
        error); `journal.intent` is logged as it commits (agents/staging.py awaits the future
        itself: no task in between)."""
        body, body_text = _encode(bracket)
        if not isinstance(body, Mapping):
            raise TypeError("an intent is an ApprovedBracket or a mapping")
        pid, aid, _ = _ids_from(body)
        if pid is None:
            raise ValueError("an intent needs a proposal_id (top level or in `proposal`)")
        ids = _order_ids(order_ids)
        ts = _ts(self.clock.now())
        event = _json({"state": IntentState.PENDING.value, "order_ids": ids, "bracket": body})
        ids_text = None if ids is None else _json(ids)

        def run(conn: sqlite3.Connection) -> int:
            try:
                conn.execute(
                    "INSERT INTO intents(proposal_id, agent_id, created_ts, updated_ts, state,"
                    " order_ids, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pid, aid, ts, ts, IntentState.PENDING.value, ids_text, body_text))
            except sqlite3.IntegrityError as exc:
                raise DuplicateIntent(f"an intent for {pid} is already journaled",
                                      proposal_id=pid) from exc
            seq = _insert_event(conn, ts, EventKind.INTENT.value, pid, aid,
                                ids.get("entry") if ids else None, event)
            if stamps.ON:
                stamps.stamp(pid, "intent_ran")
            return seq

        fut: asyncio.Future[int] = self._submit(run, True)

        def logged(f: asyncio.Future[int]) -> None:
            if not f.cancelled() and f.exception() is None:
                log.info("journal.intent", proposal_id=pid, agent_id=aid, seq=f.result(),
                         order_ids=ids)

        fut.add_done_callback(logged)
        return fut

    async def mark_intent(
        self, proposal_id: str, state: IntentState | str, order_ids: Any = None,
        *, durable: bool = True,
    ) -> IntentState:
        """Move an intent to `state` (durable: FULL, unless the caller knows a FULL commit
        follows before anything depends on it, see ExecutionAgent._place); returns the
        previous state.

        Moving to the state it is already in is a no-op (returns it). Illegal moves raise
        IntentStateError; an unknown proposal_id raises UnknownIntent. Each move is also an
        `intent` event: {"state": new, "from": old, "order_ids": ...}.
        """
        new = IntentState(state)
        ids = _order_ids(order_ids)
        ts = _ts(self.clock.now())

        def run(conn: sqlite3.Connection) -> IntentState:
            row = conn.execute(
                "SELECT state, agent_id, order_ids FROM intents WHERE proposal_id = ?",
                (proposal_id,)).fetchone()
            if row is None:
                raise UnknownIntent(f"no intent for {proposal_id}", proposal_id=proposal_id)
            old = IntentState(row[0])
            if old is new and ids is None:
                return old
            if old is not new and not intent_move_allowed(old, new):
                raise IntentStateError(f"intent {proposal_id}: {old} -> {new} is not allowed",
                                       proposal_id=proposal_id)
            merged = ids if ids is not None else (json.loads(row[2]) if row[2] else None)
            conn.execute(
                "UPDATE intents SET state = ?, updated_ts = ?, order_ids = ? WHERE proposal_id = ?",
                (new.value, ts, None if merged is None else _json(merged), proposal_id))
            _insert_event(conn, ts, EventKind.INTENT.value, proposal_id, row[1],
                          merged.get("entry") if merged else None,
                          _json({"state": new.value, "from": old.value, "order_ids": merged}))
            return old

        old = await self._submit(run, durable)
        if old is not new:
            log.info("journal.intent_state", proposal_id=proposal_id, old=old, new=new)
        return old

    # -- reads
    async def intents(
        self, states: Iterable[IntentState | str] | IntentState | str | None = None
    ) -> list[IntentRecord]:
        """Intents in the given states (all when None), oldest first.

        After a restart, `intents(states=("pending", "sent", "unknown"))` are the ones whose
        fate at IB must be looked up by orderRef before anything else is sent.
        """
        if isinstance(states, str):
            states = [states]
        wanted = None if states is None else [IntentState(s).value for s in states]
        sql = ("SELECT proposal_id, agent_id, created_ts, updated_ts, state, order_ids, payload"
               " FROM intents")
        args: list[Any] = []
        if wanted is not None:
            sql += f" WHERE state IN ({', '.join('?' * len(wanted))})"
            args = wanted
        sql += " ORDER BY created_ts, rowid"

        def run(conn: sqlite3.Connection) -> list[IntentRecord]:
            return [_intent_row(r) for r in conn.execute(sql, args)]

        return await self._submit(run, None)

    async def decision_for(self, proposal_id: str) -> dict[str, Any] | None:
        """The payload of the FIRST decision journaled for proposal_id, or None."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT payload FROM events WHERE proposal_id = ? AND kind = 'decision'"
                " ORDER BY seq LIMIT 1", (proposal_id,)).fetchone()
            return None if row is None else json.loads(row[0])

        return await self._submit(run, None)

    def not_journaled(self, proposal_id: str) -> bool:
        """This process's last write of this proposal failed (journal_early.py): the gate may
        have decided it while it was being written; nothing is to be placed for it."""
        return proposal_id in self._unjournaled

    async def first_seen(self, proposal_id: str) -> SeenId | None:
        """What the journal remembers of proposal_id (first-journaled time, first proposal,
        first gate decision), or None: never seen, or pruned (`prune_ids`)."""
        hit = self._fresh.pop(proposal_id, None)
        if hit is None and proposal_id in self._looking:   # its write is in flight
            hit = await journal_early.wait(self, proposal_id)
        if hit is not None:   # journaled by this process a moment ago, new then: nothing decided
            return journal_ids.SeenId(proposal_id=proposal_id, agent_id=hit[0],
                                      first_seen=datetime.fromisoformat(hit[1]), verdict=None,
                                      proposal=None, decision=None)
        return await self._submit(lambda conn: journal_ids.lookup(conn, proposal_id), None)

    async def prune_ids(self, before: datetime, *,
                        chunk_rows: int = journal_compact.CHUNK_ROWS) -> int:
        """Forget proposal_ids first seen before `before` (the events stay), `chunk_rows` ids
        per commit (adapters/journal_compact.py); returns how many."""
        cutoff = _ts(before)
        count = await journal_compact.prune_ids(self._submit, cutoff, chunk_rows=chunk_rows)
        if count:
            log.info("journal.ids_pruned", before=cutoff, count=count)
        return count

    async def meta(self) -> dict[str, str]:
        """The journal's own facts: mode, account (once known), last_opened."""
        return await self._submit(
            lambda conn: dict(conn.execute("SELECT key, value FROM meta").fetchall()), None)

    async def claim(self, *, mode: str, account: str | None) -> dict[str, str]:
        """Record the mode and IB account this journal is for, or refuse another.

        The first run records them (`account=None`: not known yet, recorded by a later claim
        once IB said it); a journal made for another mode or account raises JournalOwnerError
        and changes nothing. Returns the meta rows after the claim."""
        path = self.path

        def run(conn: sqlite3.Connection) -> dict[str, str]:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            wanted = {"mode": mode, **({"account": account} if account else {})}
            if any(meta.get(k) not in (None, v) for k, v in wanted.items()):
                raise JournalOwnerError(path, meta, {"mode": mode, "account": account or ""})
            for key, value in wanted.items():
                if key not in meta:
                    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, value))
                    meta[key] = value
            return meta

        meta = await self._submit(run, True)
        log.info("journal.claimed", path=str(path), mode=meta.get("mode"),
                 account=meta.get("account"))
        return meta

    async def exec_ids(self, since: datetime | None = None) -> set[str]:
        """Every exec_id journaled as a fill (since `since`, when given: IB reports executions
        of the last days only), for reconciliation: any other one IB reports is a missed fill."""
        sql = ("SELECT json_extract(payload, '$.exec_id') FROM events WHERE kind = 'fill'"
               + (" AND ts >= ?" if since is not None else ""))
        args = [_ts(since)] if since is not None else []

        def run(conn: sqlite3.Connection) -> set[str]:
            return {str(r[0]) for r in conn.execute(sql, args) if r[0] is not None}

        return await self._submit(run, None)

    async def journaled_exec_ids(self) -> set[str]:
        """Every exec_id journaled as a fill (the journal keeps the retention's: a superset of
        what IB reports again), read from the index events_fill_exec alone: no fill row is
        read, so start-up stays cheap however many fills the window holds."""
        def run(conn: sqlite3.Connection) -> set[str]:
            return {str(r[0]) for r in conn.execute(_EXEC_IDS_FROM_INDEX)}

        return await self._submit(run, None)

    # -- start-up: only what recovery needs (each an index range, see V4_INDEXES)
    async def recovery_set(self, since: datetime, recent: int = 4096) -> RecoverySet:
        """What start-up needs, read through indexes, never a scan of the journal:

        - `undecided`: proposals journaled since `since` without a gate decision (proposal_ids
          rows whose decision_seq is NULL);
        - `undelivered_decisions` / `undelivered_fills`: gate decisions and fills journaled past
          the recovery checkpoint (meta `recovery_checkpoint`, see `checkpoint_recovery`) and
          since `since`, without a delivery record (`ack`);
        - `attribution`: the fills since `since` summed per agent (adapters/journal_attrib.py),
          brought forward from its checkpoint: only the fills journaled since and those that
          left the window are read (stored again here);
        - `decisions`: the `recent` newest (first proposal, first gate decision) pairs since
          `since`, to warm the governor's memory (older ids are answered by `first_seen`).
        Payloads are decoded dicts; `checkpoint` is the checkpoint read."""
        cutoff = _ts(since)
        return await self._submit(lambda conn: _recovery_set(conn, cutoff, recent), False)

    async def checkpoint_recovery(self, since: datetime) -> int:
        """Move the recovery checkpoint forward: the highest seq S such that every gate decision
        and fill with seq <= S (journaled since `since`) has its delivery record. The scan runs
        on a read-only connection of its own (WAL: the writer is not held up); only the new
        value goes through the writer. The per-agent sum of the window's fills
        (adapters/journal_attrib.py) is brought forward in the same read and stored with it.
        Returns the checkpoint (never moved back)."""
        cutoff = _ts(since)
        if str(self.path) == ":memory:":
            return await self._submit(lambda conn: _advance_checkpoint(conn, conn, cutoff), False)
        current = await self._submit(_read_checkpoint, None)
        found, att = await asyncio.to_thread(_checkpoint_candidate_file, self.path, current,
                                             cutoff)

        def store(conn: sqlite3.Connection) -> int:
            journal_attrib.write(conn, att)   # the per-agent sum of the window's fills, too
            return _write_checkpoint(conn, found) if found > current else current

        return await self._submit(store, False)

    async def intents_to_load(self, since: datetime) -> list[IntentRecord]:
        """The intents start-up keeps in memory: every one not finished (pending, sent, acked,
        unknown: the index intents_state) and every finished one whose proposal is journaled
        without a gate decision (a crash between the intent and the decision: `prior_placement`
        answers it; found from the undecided ids, the partial index proposal_ids_undecided).
        The rest are finished brackets, which the journal answers (`first_seen`) before the
        gate would ever ask for a prior placement, or whose id is past its retention (IB's
        orders by orderRef answer then): none of them is read. `since` is kept for the
        signature."""
        terminal = [s.value for s in IntentState if s.terminal]
        live = [s.value for s in IntentState if not s.terminal]

        def run(conn: sqlite3.Connection) -> list[IntentRecord]:
            rows = conn.execute(INTENTS_LIVE.format(marks=", ".join("?" * len(live))),
                                live).fetchall()
            rows += conn.execute(INTENTS_UNDECIDED, terminal).fetchall()
            rows.sort(key=lambda r: (r[2], r[-1]))
            return [_intent_row(r) for r in rows]

        return await self._submit(run, None)

    async def max_order_id(self) -> int:
        """The highest order id of the newest MAX_ORDER_ID_INTENTS intents (order ids are never
        reused; they grow with the intents' rowid, so the newest hold the highest: a bounded
        read, not every intent; IB's nextValidId is the other floor)."""

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT max(max(coalesce(json_extract(order_ids, '$.entry'), 0),"
                " coalesce(json_extract(order_ids, '$.take_profit'), 0),"
                " coalesce(json_extract(order_ids, '$.stop_loss'), 0)))"
                " FROM (SELECT order_ids FROM intents WHERE order_ids IS NOT NULL"
                " ORDER BY rowid DESC LIMIT ?)", (MAX_ORDER_ID_INTENTS,)).fetchone()
            return int(row[0] or 0)

        return await self._submit(run, None)

    # -- retention
    async def compact(self, before: datetime, *, vacuum_pages: int = 2000,
                      chunk_rows: int = journal_compact.CHUNK_ROWS,
                      on_chunk: Callable[[str, int], None] | None = None) -> dict[str, int]:
        """Delete events journaled before `before`, except those still needed: events of an
        intent not finished, and the proposal / decision rows `proposal_ids` still points at
        (the caller keeps `before` at or past the id retention, see config/limits.py
        `journal_retention_days`). Finished intents older than `before` go too. Then frees up to
        `vacuum_pages` pages (incremental_vacuum) when the file was made with
        auto_vacuum=INCREMENTAL; otherwise the freed pages are reused by new rows (the file
        does not shrink without a VACUUM). Runs in chunks of `chunk_rows` rows, each its own
        commit (adapters/journal_compact.py), so the writer is never held for the whole run.
        Returns counts."""
        cutoff = _ts(before)
        terminal = [s.value for s in IntentState if s.terminal]
        # in chunks of `chunk_rows`, one writer operation each: records keep being committed
        counts = await journal_compact.compact(self._submit, cutoff, terminal,
                                               vacuum_pages=vacuum_pages, chunk_rows=chunk_rows,
                                               on_chunk=on_chunk)
        if counts["events"] or counts["intents"]:
            log.info("journal.compacted", before=cutoff, **counts)
        return counts

    async def size(self) -> dict[str, int]:
        """Pages, free pages and bytes of the file (the -wal not counted)."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            count = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            return {"page_size": page, "pages": count, "free_pages": free, "bytes": page * count}

        return await self._submit(run, None)

    async def last_exec_id(self) -> str | None:
        """exec_id of the most recently journaled fill, or None."""

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT json_extract(payload, '$.exec_id') FROM events WHERE kind = 'fill'"
                " AND json_extract(payload, '$.exec_id') IS NOT NULL ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._submit(run, None)

    async def events(
        self,
        since: datetime | None = None,
        proposal_id: str | None = None,
        *,
        kinds: Iterable[EventKind | str] | EventKind | str | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events in seq order, filtered (all filters AND-ed). Each is a dict with seq, ts,
        kind, proposal_id, agent_id, order_id and payload (decoded)."""
        if isinstance(kinds, str):
            kinds = [kinds]
        sql, args = _event_query(since, proposal_id, kinds, after_seq, limit)

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [_event_row(r) for r in conn.execute(sql, args)]

        return await self._submit(run, None)

    async def iter_events(
        self,
        since: datetime | None = None,
        proposal_id: str | None = None,
        *,
        kinds: Iterable[EventKind | str] | EventKind | str | None = None,
        page: int = 500,
    ) -> AsyncIterator[dict[str, Any]]:
        """Like events(), fetched `page` rows at a time (for long journals)."""
        if isinstance(kinds, str):
            kinds = [kinds]
        kinds = None if kinds is None else list(kinds)
        after: int | None = None
        while True:
            rows = await self.events(since, proposal_id, kinds=kinds, after_seq=after, limit=page)
            for row in rows:
                yield row
            if len(rows) < page:
                return
            after = rows[-1]["seq"]


# --------------------------------------------------------------------------- CLI


def read_events(
    path: Path,
    since: datetime | None = None,
    proposal_id: str | None = None,
    kinds: Iterable[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Events from a journal file, read-only and without the daemon (it may be running)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise JournalError(f"{path} is not a bracketgate journal (user_version 0)")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(f"{path} has schema {version}, newer than {SCHEMA_VERSION}")
        sql, args = _event_query(since, proposal_id, kinds)
        for row in conn.execute(sql, args):
            yield _event_row(row)
    finally:
        conn.close()


def _since(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _configured_path() -> Path:
    """The journal the daemon would open with this environment / .env (its mode's own)."""
    try:
        from bracketgate.config.settings import load_settings

        return Path(load_settings().journal_path)
    except Exception:  # a configuration the daemon would refuse: fall back on the env only
        return Path(os.environ.get("JOURNAL_PATH") or DEFAULT_PATH)


def main(argv: Sequence[str] | None = None) -> int:
    """`python run.py journal [--path FILE] [--since ISO] [--proposal ID] [--kind K]...`

    Prints matching events as JSON lines. Exit 0 on success, 2 on a usage error or a missing
    or unreadable journal.
    """
    parser = argparse.ArgumentParser(
        prog="run.py journal", description="Print journal events as JSON lines.")
    parser.add_argument("--path", type=Path, default=None,
                        help="journal file (default: the daemon's for this configuration: "
                             "$JOURNAL_PATH, else DATA_DIR/<mode>/journal.sqlite)")
    parser.add_argument("--since", type=_since,
                        help="only events at or after this time (ISO 8601; naive = UTC)")
    parser.add_argument("--proposal", help="only events of this proposal_id")
    parser.add_argument("--kind", action="append", choices=[k.value for k in EventKind],
                        help="only events of this kind (repeatable)")
    args = parser.parse_args(argv)
    if args.path is None:
        args.path = _configured_path()
    if not args.path.is_file():
        print(f"journal: no journal file at {args.path}", file=sys.stderr)
        return 2
    try:
        for event in read_events(args.path, args.since, args.proposal, args.kind):
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: not an error; keep Python's exit flush quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (JournalError, sqlite3.Error) as exc:
        print(f"journal: cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    return 0
