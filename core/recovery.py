"""Start-up recovery from the journal: what an earlier run decided, filled and left undecided.

Run after the IB connection is READY (the ExecutionAgent has already adopted the brackets IB
has, by orderRef) and before new proposals are read:
  - decisions of earlier runs go back into the governor, so a re-delivered proposal_id gets
    its first decision again and never a second order;
  - fills go back into the governor's per-agent attribution (deduplicated by exec_id);
  (proposals journaled without a decision are offered to the gate again by core/app.py; the
    ExecutionAgent answers a placement an earlier run made with its adopted ids, never a new one)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from bus.messages import DenialCode, Fill, RiskDecision, TradeProposal, Verdict
from core.clock import Clock
from core.logs import get_logger

log = get_logger("core.recovery")

LOOKBACK = timedelta(hours=36)   # a trading day and the night around it


def _transport_refusal(d: RiskDecision) -> bool:
    """The bridge's own OVERLOADED answer is not the gate's decision: a retry after a restart
    must be decided, not refused forever."""
    return bool(d.reasons) and all(r.code is DenialCode.OVERLOADED for r in d.reasons)


async def restore_from_journal(journal: Any, governor: Any, clock: Clock) -> list[TradeProposal]:
    """Decisions and fills back into the governor. Returns the proposals left undecided.
    Call before the MQTT intake opens."""
    since = clock.now() - LOOKBACK
    events = await journal.events(since=since, kinds=["proposal", "decision", "fill"])
    proposals: dict[str, TradeProposal] = {}
    decisions: dict[str, RiskDecision] = {}
    fills = 0
    for ev in events:
        kind, payload = ev["kind"], ev["payload"]
        try:
            if kind == "proposal":
                p = TradeProposal.model_validate(payload)
                proposals.setdefault(p.proposal_id, p)
            elif kind == "decision":
                d = RiskDecision.model_validate(payload)
                if d.proposal_id and d.verdict is not Verdict.INVALID and not _transport_refusal(d):
                    decisions.setdefault(d.proposal_id, d)   # the first decision is the decision
            elif kind == "fill":
                governor.on_fill(Fill.model_validate(payload))
                fills += 1
        except ValidationError as e:
            log.warning("recovery_event_unreadable", seq=ev["seq"], kind=kind, error=str(e)[:300])
    restored = 0
    for pid, d in decisions.items():
        p = proposals.get(pid)
        if p is not None:
            governor.restore_decision(p, d)
            restored += 1
    undecided = [p for pid, p in proposals.items() if pid not in decisions]
    log.info("journal_restored", decisions_restored=restored, fills_attributed=fills,
             undecided=len(undecided))
    return undecided


async def undelivered_decisions(journal: Any, clock: Clock) -> list[RiskDecision]:
    """Gate decisions journaled (before publishing) whose delivery the broker never confirmed
    (no `ack` event after them): the daemon died in between. Published again at start; an
    agent may so see a decision twice, always the identical one."""
    events = await journal.events(since=clock.now() - LOOKBACK, kinds=["decision", "ack"])
    pending: dict[str, RiskDecision] = {}
    for ev in events:
        pid = ev["proposal_id"] or ""
        if ev["kind"] == "decision":
            try:
                d = RiskDecision.model_validate(ev["payload"])
            except ValidationError:
                continue
            if d.proposal_id and pid not in pending and not _transport_refusal(d):
                pending[pid] = d
        elif (ev["payload"] or {}).get("delivered") == "decision":
            pending.pop(pid, None)
    if pending:
        log.warning("decisions_undelivered", count=len(pending), proposal_ids=list(pending)[:20])
    return list(pending.values())


async def undelivered_fills(journal: Any, clock: Clock) -> list[Fill]:
    """Fills journaled whose delivery to the agent the broker never confirmed: the daemon died
    in between. Published again at start (an agent may so see a fill twice; its exec_id is the
    key to deduplicate on)."""
    events = await journal.events(since=clock.now() - LOOKBACK, kinds=["fill", "ack"])
    pending: dict[str, Fill] = {}
    delivered: set[str] = set()
    for ev in events:
        payload = ev["payload"] or {}
        if ev["kind"] == "fill":
            try:
                f = Fill.model_validate(payload)
            except ValidationError:
                continue
            pending.setdefault(f.exec_id, f)
        elif payload.get("delivered") == "fill":
            delivered.add(payload.get("exec_id", ""))
    out = [f for exec_id, f in pending.items() if exec_id not in delivered]
    if out:
        log.warning("fills_undelivered", count=len(out), exec_ids=[f.exec_id for f in out][:20])
    return out
