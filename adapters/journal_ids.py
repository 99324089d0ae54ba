"""The journal's long memory of proposal_ids: one compact row per id, kept for days.

The RiskGovernor's in-memory DecisionMemory is bounded and a restart only reloads 36 h of
events; this table answers "was this id seen, when first, and what was decided?" for as long
as the retention (`proposal_id_retention_days`) says, so a re-sent id gets its first decision
and never a second order. Written in the same transaction as the proposal / decision event it
describes (`remember`, called by Journal.record), read on a DecisionMemory miss only
(`lookup`), pruned by age (`prune`). Only SQL and plain values here; adapters/journal.py owns
the connection and the thread.

    proposal_ids(proposal_id PK, agent_id, first_seen, proposal_seq, decision_seq, verdict)
    WITHOUT ROWID: the row lives in the primary-key b-tree (~60 bytes per id)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SCHEMA = (
    "CREATE TABLE proposal_ids ("
    " proposal_id TEXT PRIMARY KEY, agent_id TEXT, first_seen TEXT NOT NULL,"
    " proposal_seq INTEGER, decision_seq INTEGER, verdict TEXT) WITHOUT ROWID",
    "CREATE INDEX proposal_ids_first_seen ON proposal_ids(first_seen)",
)


@dataclass(frozen=True, slots=True)
class SeenId:
    """What the journal remembers of one proposal_id."""

    proposal_id: str
    agent_id: str | None
    first_seen: datetime               # when the id was first journaled (proposal or decision)
    verdict: str | None                # of its first gate decision; None: not decided yet
    proposal: dict[str, Any] | None    # the first proposal journaled under this id
    decision: dict[str, Any] | None    # the first gate decision journaled for it


def is_gate_decision(body: Mapping[str, Any]) -> bool:
    """A decision that answers the id for good: not `invalid` (the payload was no proposal), not
    the bridge's own refusals (OVERLOADED, a missing or bad signature: a retry must be decided).
    Same rule as core/recovery.py."""
    if body.get("verdict") == "invalid" or not body.get("proposal_id"):
        return False
    codes = [r.get("code") for r in body.get("reasons") or () if isinstance(r, Mapping)]
    return not (codes and all(c in TRANSPORT_REFUSALS for c in codes))


# the bridge's own refusals, not the gate's: a retry (or the real agent, for a forged or
# replayed signature) must be decided, so they never answer an id for good
TRANSPORT_REFUSALS = frozenset({"OVERLOADED", "AUTH_REQUIRED", "BAD_SIGNATURE",
                                "SIGNATURE_REPLAYED"})


def remember(conn: sqlite3.Connection, kind: str, pid: str | None, aid: str | None, ts: str,
             seq: int, body: Mapping[str, Any]) -> None:
    """Keep the id row in step with a proposal or decision event just inserted (same txn)."""
    if not pid:
        return
    if kind == "proposal":
        conn.execute("INSERT INTO proposal_ids(proposal_id, agent_id, first_seen, proposal_seq)"
                     " VALUES (?, ?, ?, ?) ON CONFLICT(proposal_id) DO UPDATE SET"
                     " proposal_seq = excluded.proposal_seq WHERE proposal_seq IS NULL",
                     (pid, aid, ts, seq))
    elif kind == "decision" and is_gate_decision(body):
        # the first gate decision only; an id answered without a journaled proposal (a retained
        # one, refused by the bridge) is remembered from its decision
        conn.execute("INSERT INTO proposal_ids(proposal_id, agent_id, first_seen, decision_seq,"
                     " verdict) VALUES (?, ?, ?, ?, ?) ON CONFLICT(proposal_id) DO UPDATE SET"
                     " decision_seq = excluded.decision_seq, verdict = excluded.verdict"
                     " WHERE decision_seq IS NULL",
                     (pid, aid, ts, seq, str(body.get("verdict"))))


def lookup(conn: sqlite3.Connection, pid: str) -> SeenId | None:
    row = conn.execute(
        "SELECT i.agent_id, i.first_seen, i.verdict, p.payload, d.payload FROM proposal_ids i"
        " LEFT JOIN events p ON p.seq = i.proposal_seq"
        " LEFT JOIN events d ON d.seq = i.decision_seq WHERE i.proposal_id = ?", (pid,)).fetchone()
    if row is None:
        return None
    return SeenId(proposal_id=pid, agent_id=row[0], first_seen=datetime.fromisoformat(row[1]),
                  verdict=row[2], proposal=json.loads(row[3]) if row[3] else None,
                  decision=json.loads(row[4]) if row[4] else None)


def prune(conn: sqlite3.Connection, before: str) -> int:
    """Forget ids first seen before `before` (fixed-width UTC text); returns how many."""
    return conn.execute("DELETE FROM proposal_ids WHERE first_seen < ?", (before,)).rowcount


def backfill(conn: sqlite3.Connection) -> int:
    """Migration to schema 3: rows for every proposal and first gate decision already journaled."""
    rows = conn.execute("SELECT seq, ts, kind, proposal_id, agent_id, payload FROM events"
                        " WHERE kind IN ('proposal', 'decision') AND proposal_id IS NOT NULL"
                        " ORDER BY seq").fetchall()
    for seq, ts, kind, pid, aid, payload in rows:
        remember(conn, kind, pid, aid, ts, seq, json.loads(payload))
    return len(rows)
