"""Start-up recovery from the journal: what an earlier run decided, filled, left undecided and
left undelivered — read through the journal's indexes (Journal.recovery_set), never a pass over
every event, so start-up stays near constant however long the journal is:

  - the newest decisions of earlier runs go back into the governor's memory (a warm cache;
    every older id is answered by the journal's `first_seen` on a memory miss, see
    RiskGovernor.use_id_memory), so a re-delivered proposal_id gets its first decision again
    and never a second order;
  - fills of the window go back into the governor's per-agent attribution as the journal's
    checkpointed sum of them (adapters/journal_attrib.py): only the fills journaled since the
    checkpoint and those that left the window are read, not every fill of the window;
  - proposals journaled without a gate decision are returned (proposal_ids rows without a
    decision: core/app.py offers them to the gate again; the ExecutionAgent answers a
    placement an earlier run made with its adopted ids);
  - decisions and fills journaled past the recovery checkpoint without a delivery record
    (`ack` after the broker's PUBACK) are returned to be published again: an agent may so
    see one twice, always identical. The checkpoint (meta `recovery_checkpoint`) is the seq
    up to which everything was delivered; it is moved forward here and while running
    (core/app.py, Journal.checkpoint_recovery), so only the tail since is read.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from bracketgate.adapters.journal_ids import TRANSPORT_REFUSALS
from bracketgate.bus.messages import Fill, RiskDecision, TradeProposal, Verdict
from bracketgate.core.clock import Clock
from bracketgate.core.logs import get_logger

log = get_logger("core.recovery")

LOOKBACK = timedelta(hours=36)   # a trading day and the night around it


@dataclass
class Recovered:
    undecided: list[TradeProposal] = field(default_factory=list)
    undelivered_decisions: list[RiskDecision] = field(default_factory=list)
    undelivered_fills: list[Fill] = field(default_factory=list)


def _transport_refusal(d: RiskDecision) -> bool:
    """The bridge's own answers (OVERLOADED, a missing or bad signature) are not the gate's
    decision: a retry after a restart must be decided, not refused forever."""
    return bool(d.reasons) and all(r.code.value in TRANSPORT_REFUSALS for r in d.reasons)


RECENT_DECISIONS = 1024   # decisions put back into the governor's memory (a warm cache; 4096 cost
                          # ~0.4 s of start-up in validation; older ids: Journal.first_seen)


def _read(model: Any, payload: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        log.warning("recovery_event_unreadable", kind=what,
                    proposal_id=payload.get("proposal_id"), error=str(e)[:300])
        return None


async def recover_from_journal(journal: Any, governor: Any, clock: Clock) -> Recovered:
    since = clock.now() - LOOKBACK
    if not hasattr(journal, "recovery_set"):   # a journal without the indexed read path
        return await _recover_from_events(journal, governor, clock)
    t0 = time.perf_counter()
    rs = await journal.recovery_set(since, recent=RECENT_DECISIONS)
    read_ms = (time.perf_counter() - t0) * 1000
    att = rs.attribution
    governor.restore_attribution(att.realized, att.positions,
                                 {cid: px for cid, (_ts, px) in att.last_price.items()})
    restored = 0
    for p_payload, d_payload in rs.decisions:
        p, d = _read(TradeProposal, p_payload, "proposal"), _read(RiskDecision, d_payload, "decision")
        if p is not None and d is not None and d.verdict is not Verdict.INVALID \
                and not _transport_refusal(d):
            governor.restore_decision(p, d)
            restored += 1
    undecided: dict[str, TradeProposal] = {}
    for payload in rs.undecided:
        p = _read(TradeProposal, payload, "proposal")
        if p is not None:
            undecided.setdefault(p.proposal_id, p)
    decisions: dict[str, RiskDecision] = {}
    for payload in rs.undelivered_decisions:
        d = _read(RiskDecision, payload, "decision")
        if d is not None and d.proposal_id:
            decisions.setdefault(d.proposal_id, d)
    unsent_fills: dict[str, Fill] = {}
    for payload in rs.undelivered_fills:
        f = _read(Fill, payload, "fill")
        if f is not None:
            unsent_fills.setdefault(f.exec_id, f)
            # in the restored sum already: published again, it is not counted a second time
            governor.note_exec_counted(f.exec_id, f.realized_pnl is not None
                                       and math.isfinite(f.realized_pnl))
    out = Recovered(undecided=list(undecided.values()),
                    undelivered_decisions=list(decisions.values()),
                    undelivered_fills=list(unsent_fills.values()))
    checkpoint = await journal.checkpoint_recovery(since)
    log.info("journal_restored", decisions_restored=restored, fills_attributed=att.fills,
             fills_read=att.read, attribution_summed_anew=att.full,
             undecided=len(out.undecided), decisions_undelivered=len(out.undelivered_decisions),
             fills_undelivered=len(out.undelivered_fills), checkpoint_was=rs.checkpoint,
             checkpoint=checkpoint, read_ms=round(read_ms, 1),
             ms=round((time.perf_counter() - t0) * 1000, 1))
    return out


async def _recover_from_events(journal: Any, governor: Any, clock: Clock) -> Recovered:
    """One pass over the window's events (a journal object without `recovery_set`)."""
    events = await journal.events(since=clock.now() - LOOKBACK,
                                  kinds=["proposal", "decision", "fill", "ack"])
    proposals: dict[str, TradeProposal] = {}
    decisions: dict[str, RiskDecision] = {}        # proposal_id -> the first gate decision
    unsent_decisions: dict[str, RiskDecision] = {}  # ... not yet confirmed delivered
    fills: dict[str, Fill] = {}                    # exec_id -> fill
    fills_delivered: set[str] = set()
    for ev in events:
        kind, payload = ev["kind"], ev["payload"] or {}
        try:
            if kind == "proposal":
                p = TradeProposal.model_validate(payload)
                proposals.setdefault(p.proposal_id, p)
            elif kind == "decision":
                d = RiskDecision.model_validate(payload)
                if d.proposal_id and d.verdict is not Verdict.INVALID and not _transport_refusal(d):
                    if d.proposal_id not in decisions:
                        decisions[d.proposal_id] = d
                        unsent_decisions[d.proposal_id] = d
            elif kind == "fill":
                f = Fill.model_validate(payload)
                fills.setdefault(f.exec_id, f)
            elif payload.get("delivered") == "decision":
                unsent_decisions.pop(ev["proposal_id"] or "", None)
            elif payload.get("delivered") == "fill":
                fills_delivered.add(payload.get("exec_id", ""))
        except ValidationError as e:
            log.warning("recovery_event_unreadable", seq=ev["seq"], kind=kind, error=str(e)[:300])
    for f in fills.values():
        governor.on_fill(f)
    restored = 0
    for pid, d in decisions.items():
        p = proposals.get(pid)
        if p is not None:
            governor.restore_decision(p, d)
            restored += 1
    out = Recovered(
        undecided=[p for pid, p in proposals.items() if pid not in decisions],
        undelivered_decisions=list(unsent_decisions.values()),
        undelivered_fills=[f for exec_id, f in fills.items() if exec_id not in fills_delivered],
    )
    log.info("journal_restored", decisions_restored=restored, fills_attributed=len(fills),
             undecided=len(out.undecided), decisions_undelivered=len(out.undelivered_decisions),
             fills_undelivered=len(out.undelivered_fills))
    return out
