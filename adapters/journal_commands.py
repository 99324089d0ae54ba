"""The journal's record of bracket lifecycle commands: one row per (agent_id, command_id).

A command is written (FULL) when it arrives, before the MQTT bridge acknowledges it, and its
answer is written (FULL) before the answer is published; so `command_id` is idempotent across
restarts (the same id again: the first answer, never a second action) and a command in flight
when the daemon died is found at the next start (`unanswered`) and answered once from what IB
has. The table lives in the journal's file, created on first use (no schema migration: an
older daemon ignores it).

    commands(agent_id, command_id) -> proposal_id, action, request JSON, received_ts,
                                      answer JSON (NULL while in flight), answered_ts,
                                      delivered_ts (the broker acknowledged the answer)
An answer journaled and never acknowledged by the broker (the daemon died in between) is
published again at the next start (`undelivered`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from bracketgate.adapters.journal_side import SideTable
from bracketgate.bus.commands import CommandAnswer

_CREATE = (
    "CREATE TABLE IF NOT EXISTS commands ("
    " agent_id TEXT NOT NULL, command_id TEXT NOT NULL, proposal_id TEXT NOT NULL,"
    " action TEXT NOT NULL, request TEXT NOT NULL, received_ts TEXT NOT NULL,"
    " answer TEXT, answered_ts TEXT, delivered_ts TEXT,"
    " PRIMARY KEY (agent_id, command_id)) WITHOUT ROWID"
)
_UNANSWERED_INDEX = ("CREATE INDEX IF NOT EXISTS commands_unanswered ON commands(received_ts)"
                     " WHERE answer IS NULL OR delivered_ts IS NULL")


@dataclass(frozen=True, slots=True)
class CommandRow:
    agent_id: str
    command_id: str
    proposal_id: str
    action: str
    request: dict[str, Any]
    answer: dict[str, Any] | None
    delivered: bool = False     # the broker acknowledged the answer


def _row(r: tuple[Any, ...]) -> CommandRow:
    return CommandRow(r[0], r[1], r[2], r[3], json.loads(r[4]),
                      None if r[5] is None else json.loads(r[5]), r[6] is not None)


class CommandJournal(SideTable):
    """The commands table of one open Journal (adapters/journal.py)."""

    DDL = (_CREATE, _UNANSWERED_INDEX)

    async def take(self, command: Any) -> CommandRow | None:
        """Record a command as received; None when new, else the row already there (a
        redelivery, or the same id reused), untouched."""
        request = command.model_dump(mode="json")
        text = json.dumps(request, separators=(",", ":"), sort_keys=True)
        ts = self._journal.clock.now().isoformat()

        def run(conn: sqlite3.Connection) -> CommandRow | None:
            hit = conn.execute(
                "SELECT agent_id, command_id, proposal_id, action, request, answer, delivered_ts"
                " FROM commands"
                " WHERE agent_id = ? AND command_id = ?",
                (command.agent_id, command.command_id)).fetchone()
            if hit is not None:
                return _row(hit)
            conn.execute("INSERT INTO commands (agent_id, command_id, proposal_id, action, request,"
                         " received_ts) VALUES (?, ?, ?, ?, ?, ?)",
                         (command.agent_id, command.command_id, command.proposal_id,
                          command.action, text, ts))
            return None

        return await self._run(run)

    async def answer(self, answer: CommandAnswer) -> None:
        """Record the answer (first one wins: an answer is never replaced)."""
        text = answer.model_dump_json()
        ts = self._journal.clock.now().isoformat()

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE commands SET answer = ?, answered_ts = ? WHERE agent_id = ?"
                         " AND command_id = ? AND answer IS NULL",
                         (text, ts, answer.agent_id, answer.command_id))

        await self._run(run)

    async def get(self, agent_id: str, command_id: str) -> CommandRow | None:
        def run(conn: sqlite3.Connection) -> CommandRow | None:
            hit = conn.execute(
                "SELECT agent_id, command_id, proposal_id, action, request, answer, delivered_ts"
                " FROM commands"
                " WHERE agent_id = ? AND command_id = ?", (agent_id, command_id)).fetchone()
            return None if hit is None else _row(hit)

        return await self._run(run)

    async def delivered(self, keys: list[tuple[str, str]]) -> None:
        """The broker has these answers (PUBACK): (agent_id, command_id) each."""
        ts = self._journal.clock.now().isoformat()

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE commands SET delivered_ts = ? WHERE agent_id = ? AND"
                             " command_id = ? AND delivered_ts IS NULL AND answer IS NOT NULL",
                             [(ts, a, c) for a, c in keys])

        await self._run(run)

    async def undelivered(self) -> list[CommandAnswer]:
        """Answers journaled that the broker never acknowledged, oldest first."""
        def run(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT answer FROM commands WHERE answer IS NOT NULL AND delivered_ts IS NULL"
                " ORDER BY answered_ts")]

        return [CommandAnswer.model_validate_json(a) for a in await self._run(run)]

    async def unanswered(self) -> list[CommandRow]:
        """Commands received and never answered (the daemon stopped in between), oldest first."""
        def run(conn: sqlite3.Connection) -> list[CommandRow]:
            return [_row(r) for r in conn.execute(
                "SELECT agent_id, command_id, proposal_id, action, request, answer, delivered_ts"
                " FROM commands"
                " WHERE answer IS NULL ORDER BY received_ts")]

        return await self._run(run)
