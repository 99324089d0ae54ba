"""The operator's trading state, kept in the journal's file so a restart does not trade again.

One row (`trading_control`, created on first use like adapters/journal_commands.py's table; no
schema migration: an older daemon ignores it) holds the governor's state after every change:

    state        ACTIVE / REDUCING / HALTED, as the governor has it now
    by           "operator" (run.py halt|reduce|resume, {prefix}/control) or "auto" (the daily
                 loss limit, the drawdown)
    operator     the state the operator last set (what an auto state falls back to next day)
    who, reason  the control command's `by` and reason (or the automatic transition's reason)
    ts           when it changed
    scoped       the scoped halts of `flatten --agent/--symbol`: [[agent|null, symbol|null], …]

The row is written FULL (fsync) before the change is published on {prefix}/events (what
`run.py halt` waits for), and a `trading_state` event is journaled beside it for the record.
The row is outside the events table, so compaction (journal_retention_days) never forgets a
HALT. At start-up, before the daemon is ready and before any proposal is decided, `restore`
puts it back: an operator HALT / REDUCE and the scoped halts hold until `run.py resume`; an
automatic state holds for the rest of its trading day (the governor's timezone), then the
operator's own state applies again.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bracketgate.adapters.journal_side import SideTable
from bracketgate.bus.messages import TradingState, TradingStateChanged
from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.journal_state")

_CREATE = (
    "CREATE TABLE IF NOT EXISTS trading_control ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, by TEXT NOT NULL,"
    " operator TEXT NOT NULL, who TEXT NOT NULL, reason TEXT NOT NULL, ts TEXT NOT NULL,"
    " scoped TEXT NOT NULL)"
)
_UPSERT = (
    "INSERT INTO trading_control (id, state, by, operator, who, reason, ts, scoped)"
    " VALUES (1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state,"
    " by = excluded.by, operator = excluded.operator, who = excluded.who,"
    " reason = excluded.reason, ts = excluded.ts, scoped = excluded.scoped"
)

Scope = tuple[str | None, str | None]


@dataclass(frozen=True, slots=True)
class SavedState:
    state: TradingState
    by: str                      # "operator" | "auto"
    operator: TradingState       # the operator's last word (an auto state's fallback)
    who: str
    reason: str
    ts: datetime
    scoped: tuple[Scope, ...] = field(default=())


class TradingStateJournal(SideTable):
    """The trading_control row of one open Journal (adapters/journal.py)."""

    DDL = (_CREATE,)

    async def save(self, s: SavedState) -> None:
        """The row, committed FULL; then the audit event (FULL too: DURABLE_KINDS)."""
        scoped = json.dumps([list(x) for x in _sorted(s.scoped)])
        row = (s.state.value, s.by, s.operator.value, s.who, s.reason, s.ts.isoformat(), scoped)
        await self._run(lambda conn: bool(conn.execute(_UPSERT, row)))
        await self._journal.record("trading_state", payload={
            "state": s.state.value, "by": s.by, "operator": s.operator.value, "who": s.who,
            "reason": s.reason, "ts": s.ts.isoformat(), "scoped_halts": json.loads(scoped)})

    async def load(self) -> SavedState | None:
        def run(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            return conn.execute("SELECT state, by, operator, who, reason, ts, scoped"
                                " FROM trading_control WHERE id = 1").fetchone()

        r = await self._run(run)
        if r is None:
            return None
        return SavedState(TradingState(r[0]), r[1], TradingState(r[2]), r[3], r[4],
                          datetime.fromisoformat(r[5]),
                          tuple((a, b) for a, b in json.loads(r[6])))


def restored_state(saved: SavedState | None, now: datetime, tz: ZoneInfo
                   ) -> tuple[TradingState, tuple[Scope, ...], bool]:
    """(state, scoped halts, expired): what a start-up applies from the saved row. An auto
    state of an earlier trading day (`tz`) has expired: the operator's own state applies."""
    if saved is None:
        return TradingState.ACTIVE, (), False
    if saved.by == "auto" and saved.ts.astimezone(tz).date() != now.astimezone(tz).date():
        return saved.operator, saved.scoped, True
    return saved.state, saved.scoped, False


class StateKeeper:
    """Wires a RiskGovernor to the row: every change is saved before it is published (the
    governor's `use_state_journal` hook), and `restore` puts the last one back at start-up."""

    def __init__(self, governor: Any, store: TradingStateJournal, clock: Any) -> None:
        self._gov = governor
        self._store = store
        self._clock = clock
        self._operator = TradingState.ACTIVE   # the operator's last word (restored, then kept)
        # after a save that moved only the scoped halts (no TradingStateChanged to follow)
        self.on_scope_saved: Any = None
        self._scoped: tuple[Scope, ...] = ()

    def attach(self) -> None:
        self._gov.use_state_journal(self.save)

    async def save(self, by: str, who: str, reason: str) -> None:
        gov = self._gov
        if by == "operator":
            self._operator = gov.state
        scoped = tuple(gov.scoped_halts)
        moved = scoped != self._scoped
        self._scoped = scoped
        await self._store.save(SavedState(gov.state, by, self._operator, who, reason,
                                          self._clock.now(), scoped))
        if moved and self.on_scope_saved is not None:
            await self.on_scope_saved()

    async def restore(self) -> TradingStateChanged | None:
        """Apply the saved row to the governor (before anything is decided); log one line
        (`trading_state_restored`); the change event to publish, if the state moved."""
        saved = await self._store.load()
        now = self._clock.now()
        state, scoped, expired = restored_state(saved, now, self._gov.timezone)
        self._operator = saved.operator if saved is not None else TradingState.ACTIVE
        self._scoped = tuple(scoped)
        why = "restored at start-up" + (f": {saved.reason}" if saved else "")
        ev = self._gov.restore_state(state, set(scoped), why)
        # a warning when it holds trading back (a person must see it), else one info line
        emit = log.info if state is TradingState.ACTIVE and not scoped else log.warning
        emit("trading_state_restored", state=state.value,
             by=saved.by if saved else None, who=saved.who if saved else None,
             reason=saved.reason if saved else None,
             since=saved.ts.isoformat() if saved else None,
             scoped_halts=[{"agent_id": a, "symbol": s} for a, s in _sorted(scoped)],
             expired_auto=expired)
        return ev


def _sorted(scoped: Any) -> list[Scope]:
    return sorted(scoped, key=lambda x: (x[0] or "", x[1] or ""))


def scope_text(scoped: Any) -> list[str]:
    """["agent A", "symbol X", "agent A symbol X"] for the status."""
    return sorted(" ".join(f"{k} {v}" for k, v in (("agent", a), ("symbol", s)) if v)
                  for a, s in scoped)
