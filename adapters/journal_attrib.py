"""Per-agent attribution of the fills of the recovery window, kept as a checkpointed sum (meta
`attribution_checkpoint`) so a start-up reads only the fills journaled since the checkpoint and
those that left the window meanwhile, never every fill of the window again.

What is summed mirrors RiskGovernor.on_fill on an empty ledger (recovery runs before any
reservation): per agent_id, the realized P&L (finite values only) and the units per conId
(BUY +, SELL -); per conId the last fill price (with its ts: a price whose fill left the window
is dropped). A combo's BAG execution counts neither (its legs do). The journal keeps one fill
per exec_id (Journal.record), so each fill is summed once.

The sum covers the fills with `cutoff <= ts` and `seq <= through`. `advance(conn, att, cutoff)`
brings it to a later cutoff and the newest seq: it subtracts the fills with ts in
[old cutoff, new cutoff) and seq <= through (an index range on events(kind, ts)) and adds the
fills with seq > through (a range of the primary key). Without a checkpoint (a journal of an
older version, a clock moved back, or a checkpoint whose window ended before the new one
starts: a long downtime, retention may have deleted fills it would take out) it sums the window
once, as start-up did before; the window taken out is so always within the last 72 h, never
compacted.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from typing import Any

ATTRIBUTION_KEY = "attribution_checkpoint"

# fills that left the window since the checkpoint: index range on events_kind_ts
DROPPED = ("SELECT seq, ts, payload FROM events WHERE kind = 'fill' AND ts >= ? AND ts < ?"
           " AND seq <= ?")
# fills journaled past the checkpoint: a range of the primary key (`+kind`: not the kind index)
ADDED = "SELECT seq, ts, payload FROM events WHERE seq > ? AND +kind = 'fill' AND ts >= ? ORDER BY seq"
# the whole window: only without a checkpoint
WINDOW = "SELECT seq, ts, payload FROM events WHERE kind = 'fill' AND ts >= ? ORDER BY seq"
QUERIES = {"attribution_dropped": DROPPED, "attribution_added": ADDED}


@dataclass(slots=True)
class Attribution:
    """agent_id -> realized P&L; agent_id -> conId -> units; conId -> (ts, last price)."""

    cutoff: str = ""
    through: int = 0
    newest: str = ""        # ts of the event at `through`
    realized: dict[str, float] = field(default_factory=dict)
    positions: dict[str, dict[int, float]] = field(default_factory=dict)
    last_price: dict[int, tuple[str, float]] = field(default_factory=dict)
    fills: int = 0          # fills summed
    read: int = 0           # fills read to bring it here (not stored)
    full: bool = False      # summed from the whole window (no usable checkpoint)

    def to_json(self) -> str:
        return json.dumps({"cutoff": self.cutoff, "through": self.through, "newest": self.newest,
                           "realized": self.realized, "fills": self.fills,
                           "positions": {a: {str(c): u for c, u in p.items()}
                                         for a, p in self.positions.items()},
                           "last_price": {str(c): [t, px] for c, (t, px) in
                                          self.last_price.items()}})

    @classmethod
    def from_json(cls, text: str) -> Attribution:
        d = json.loads(text)
        return cls(cutoff=str(d["cutoff"]), through=int(d["through"]),
                   newest=str(d.get("newest", "")),
                   realized={str(a): float(v) for a, v in d["realized"].items()},
                   positions={str(a): {int(c): float(u) for c, u in p.items()}
                              for a, p in d["positions"].items()},
                   last_price={int(c): (str(t), float(px)) for c, (t, px) in
                               d["last_price"].items()},
                   fills=int(d.get("fills", 0)))


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def fold(att: Attribution, ts: str, payload: str, sign: int) -> None:
    """Add (sign 1) or take out (sign -1) one journaled fill."""
    att.read += 1
    try:
        p = json.loads(payload)
    except ValueError:
        return
    aid, side, qty = p.get("agent_id"), p.get("side"), _number(p.get("quantity"))
    if not isinstance(aid, str) or side not in ("BUY", "SELL") or qty is None:
        return      # RiskGovernor never counted it either (not a readable Fill)
    att.fills += sign
    if p.get("sec_type") == "BAG":
        return
    realized = _number(p.get("realized_pnl"))
    if realized is not None:
        att.realized[aid] = att.realized.get(aid, 0.0) + sign * realized
    cid = p.get("con_id") if isinstance(p.get("con_id"), int) else 0
    held = att.positions.setdefault(aid, {})
    units = held.get(cid, 0.0) + sign * (1 if side == "BUY" else -1) * qty
    if abs(units) < 1e-9:
        held.pop(cid, None)
        if not held:
            att.positions.pop(aid, None)
    else:
        held[cid] = units
    price = _number(p.get("price"))
    if sign > 0 and price is not None:
        att.last_price[cid] = (ts, price)


def read(conn: sqlite3.Connection) -> Attribution | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (ATTRIBUTION_KEY,)).fetchone()
    if row is None:
        return None
    try:
        return Attribution.from_json(row[0])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None     # unreadable: summed again from the window


def write(conn: sqlite3.Connection, att: Attribution) -> None:
    """Stored only when it moves forward (a concurrent older sum never overwrites a newer)."""
    old = read(conn)
    if old is not None and (old.through, old.cutoff) > (att.through, att.cutoff):
        return
    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                 " value = excluded.value", (ATTRIBUTION_KEY, att.to_json()))


def advance(conn: sqlite3.Connection, att: Attribution | None, cutoff: str) -> Attribution:
    """`att` (or a new sum) brought to `cutoff` and the newest seq journaled. Run inside one
    read transaction, so `through` and the rows read agree."""
    top = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    row = conn.execute("SELECT ts FROM events WHERE seq = ?", (top,)).fetchone()
    newest = row[0] if row else ""
    # summed anew: no sum, a clock moved back, or a sum whose whole window lies before this one
    # (a long downtime: retention may have deleted some of the fills it would take out)
    if att is None or att.cutoff > cutoff or att.through > top or att.newest < cutoff:
        fresh = Attribution(cutoff=cutoff, through=top, newest=newest, full=True)
        for _seq, ts, payload in conn.execute(WINDOW, (cutoff,)):
            if _seq <= top:
                fold(fresh, ts, payload, 1)
        return fresh
    att.read = 0
    if cutoff > att.cutoff:
        for _seq, ts, payload in conn.execute(DROPPED, (att.cutoff, cutoff, att.through)):
            fold(att, ts, payload, -1)
        att.last_price = {c: v for c, v in att.last_price.items() if v[0] >= cutoff}
        att.cutoff = cutoff
    for seq, ts, payload in conn.execute(ADDED, (att.through, cutoff)):
        if seq <= top:
            fold(att, ts, payload, 1)
    att.through, att.newest = top, newest
    return att
