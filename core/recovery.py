"""Start-up recovery from the journal: what an earlier run decided, filled, left undecided and
left undelivered — read in one pass over the journal's recent events.

Run before the IB connection starts and the MQTT intake opens:
  - decisions of earlier runs go back into the governor, so a re-delivered proposal_id gets
    its first decision again and never a second order;
  - fills go back into the governor's per-agent attribution (deduplicated by exec_id);
  - proposals journaled without a decision are returned (core/app.py offers them to the gate
    again; the ExecutionAgent answers a placement an earlier run made with its adopted ids);
  - decisions and fills journaled without a delivery record (`ack` after the broker's PUBACK)
    are returned to be published again: an agent may so see one twice, always identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from bus.messages import DenialCode, Fill, RiskDecision, TradeProposal, Verdict
from core.clock import Clock
from core.logs import get_logger

log = get_logger("core.recovery")

LOOKBACK = timedelta(hours=36)   # a trading day and the night around it


@dataclass
class Recovered:
    undecided: list[TradeProposal] = field(default_factory=list)
    undelivered_decisions: list[RiskDecision] = field(default_factory=list)
    undelivered_fills: list[Fill] = field(default_factory=list)


def _transport_refusal(d: RiskDecision) -> bool:
    """The bridge's own OVERLOADED answer is not the gate's decision: a retry after a restart
    must be decided, not refused forever."""
    return bool(d.reasons) and all(r.code is DenialCode.OVERLOADED for r in d.reasons)


async def recover_from_journal(journal: Any, governor: Any, clock: Clock) -> Recovered:
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
