"""The RiskGovernor's execution ids: which fills it has counted, bounded.

exec_id -> whether the fill's realized P&L was counted (False: its commission report, which
carries the realized P&L, may still come as a repeat of the same exec_id). It dedupes a fill
delivered twice within a run (a re-sent Fill, a late commission). The broker adapter already
publishes an exec_id once (its recent `_seen_execs`; each reqExecutions sync skips the journal's
exec_ids too, adapters/ib_execs.py) and the journal keeps fills unique by exec_id, so this
memory needs only the recent ones: the newest `cap` ids (insertion order, a repeat refreshes
nothing), and it is emptied at the day's roll as before. An id evicted and delivered again
would count again: that needs a repeat more than `cap` fills after the first delivery, which
the adapter's dedupe (its recent ids, the journal's at each sync) stops before a Fill reaches
the governor.
"""

from __future__ import annotations

EXEC_IDS_MAX = 10_000   # ~100 B each: about 1 MB at the cap


class ExecIds(dict[str, bool]):
    """A dict that forgets its oldest exec_ids past `cap`."""

    def __init__(self, cap: int = EXEC_IDS_MAX) -> None:
        super().__init__()
        self.cap = cap

    def __setitem__(self, key: str, value: bool) -> None:
        fresh = key not in self
        super().__setitem__(key, value)
        if fresh and len(self) > self.cap:
            del self[next(iter(self))]
