"""An adopted bracket's entry expiry: what is left of `cancel_entry_after_s` after a restart.

The run that places a bracket times its entry's expiry from the placement (ExecutionAgent
`_schedule_expiry`). A bracket adopted from the journal after a restart resumes it from its
order intent's time (the approval's, a few ms before the placement): a restart must not leave
an entry working past its expiry. Nothing here holds state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def entry_expiry_left(rec: Any, now: datetime) -> float | None:
    """Seconds left of the intent's proposal's cancel_entry_after_s (0.0 once passed: cancel at
    once), or None when the proposal set none. `rec`: a journal IntentRecord."""
    after = ((rec.payload or {}).get("proposal") or {}).get("cancel_entry_after_s")
    if not after:
        return None
    return max(0.0, float(after) - (now - rec.created_ts).total_seconds())
