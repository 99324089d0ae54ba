"""A table of its own in an open Journal's SQLite file (adapters/journal.py), created on first
use so an older journal needs no migration; every operation runs on the journal's writer thread
and commits FULL (the commands table, journal_commands.py; the trading-state row,
journal_state.py)."""

from __future__ import annotations

import sqlite3
from typing import Any


class SideTable:
    DDL: tuple[str, ...] = ()     # CREATE TABLE / INDEX IF NOT EXISTS statements

    def __init__(self, journal: Any) -> None:
        self._journal = journal
        self._created = False

    async def _run(self, fn: Any) -> Any:
        if not self._created:
            def create(conn: sqlite3.Connection) -> None:
                for statement in self.DDL:
                    conn.execute(statement)

            await self._journal._submit(create, True)
            self._created = True
        return await self._journal._submit(fn, True)
