"""Order intents written while IB's what-if is in flight.

An approval's bracket waits for IB's what-if (the margin check) and then for its order intent's
FULL commit before the first leg is sent. Both are independent: the governor stages the intent
as it asks the what-if (`IntentStager.stage`: three order ids allocated, `record_intent` queued
in the journal's one writer, behind the proposal's own write), and the placement takes it
(`ready`): it waits for that commit (usually long done), so the intent is durable before
anything is sent, exactly as before. A what-if that refuses (or fails, or is cancelled) voids
the staged intent (`void`): marked failed in the journal (not FULL on its own: the rejection's
decision is journaled FULL behind it) and in the ExecutionAgent's memory, so nothing is ever
placed under it. A crash in between leaves a pending intent IB has no order for: start-up
reports it (INTENT_NOT_AT_IB) and closes it, as for a crash at `intent_journaled`; the
re-decided proposal is answered "never reached IB, not re-sent".

Order ids must rise at IB (error 103 for an id at or below the highest the client used): the
staged ids are sent only if no id was handed out after them; otherwise three new ids are
allocated and written into the intent (a FULL commit) before the legs go.

State:
  staged: proposal_id -> Staged   (intents being written or written, not yet placed nor voided)
  voided: proposal_ids voided     (the last VOIDED_MAX: a late placement of one is refused)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bracketgate.bus.errors import BrokerError
from bracketgate.bus.messages import ApprovedBracket, BracketOrderIds
from bracketgate.core.crashpoints import crash_point
from bracketgate.core.logs import get_logger

log = get_logger("agents.staging")


@dataclass(slots=True)
class Staged:
    ids: BracketOrderIds
    write: asyncio.Future[Any]   # the intent's write (Journal.submit_intent, FULL)


def _committed(write: asyncio.Future[Any]) -> None:
    if not write.cancelled() and write.exception() is None:
        crash_point("intent_staged")


class IntentStager:
    VOIDED_MAX = 4096   # voided ids remembered (a late placement is refused; the journal's
                        # intent row refuses it too, DuplicateIntent, once they are forgotten)

    def __init__(self, broker: Any, journal: Any,
                 spawn: Callable[[Coroutine[Any, Any, Any], str], None]) -> None:
        self._broker = broker
        self._journal = journal
        self._spawn = spawn
        self.staged: dict[str, Staged] = {}
        self.voided: OrderedDict[str, None] = OrderedDict()   # bounded, oldest first

    def _forget(self, proposal_id: str, _ids: BracketOrderIds) -> None:
        self.voided[proposal_id] = None
        while len(self.voided) > self.VOIDED_MAX:
            self.voided.popitem(last=False)

    def stage(self, bracket: ApprovedBracket) -> bool:
        """Allocate the bracket's ids and queue its intent's write now; False (nothing staged,
        the placement writes it as before) without a journal, for an id staged already, or
        when no ids can be allocated (IB not ready: the what-if fails the same way)."""
        pid = bracket.proposal.proposal_id
        if self._journal is None or pid in self.staged:
            return False
        try:
            ids = self._broker.allocate_bracket_ids()
        except Exception as e:   # IB not ready (the what-if fails the same way), or no broker
            log.info("intent_not_staged", proposal_id=pid, error=repr(e))
            return False
        try:   # the journal's own future: its commit wakes the placement with no task between
            write = self._journal.submit_intent(bracket, ids)
        except Exception as e:   # the journal refused it now: the placement writes it as before
            log.warning("intent_not_staged", proposal_id=pid, error=repr(e))
            return False
        # the crash point as it commits; its failure is the placement's (ready re-raises it) or
        # nobody's (void): never "exception was never retrieved"
        write.add_done_callback(_committed)
        self.staged[pid] = Staged(ids, write)
        return True

    def take(self, proposal_id: str) -> Staged | None:
        """The staged intent of this proposal, for its placement (once)."""
        return self.staged.pop(proposal_id, None)

    async def ready(self, proposal_id: str, st: Staged) -> BracketOrderIds:
        """The ids to send once the intent is durable: the staged ones, or fresh ones written
        into the intent (FULL) when an id was handed out after them. Raises what the write
        raised (the placement fails as a failed record_intent did)."""
        await st.write   # cancelled with the placement: the write itself goes on
        if getattr(self._broker, "max_order_id", None) == st.ids.stop_loss:
            return st.ids
        try:
            ids = self._broker.allocate_bracket_ids()
        except BrokerError:   # IB not ready: the placement fails, the intent with it
            self._forget(proposal_id, st.ids)
            self._spawn(self._void(proposal_id, st), f"intent:void:{proposal_id}")
            raise
        await self._journal.mark_intent(proposal_id, "pending", ids)
        log.info("intent_ids_renewed", proposal_id=proposal_id, order_id=ids.entry,
                 staged_order_id=st.ids.entry)
        return ids

    def void(self, proposal_id: str) -> None:
        """The approval did not get to its placement (the what-if refused, failed, or the
        task was cancelled): its staged intent is failed, nothing is placed under it."""
        st = self.staged.pop(proposal_id, None)
        if st is None:
            return
        self._forget(proposal_id, st.ids)
        self._spawn(self._void(proposal_id, st), f"intent:void:{proposal_id}")

    async def _void(self, proposal_id: str, st: Staged) -> None:
        try:
            await asyncio.shield(st.write)
        except Exception as e:   # nothing was journaled: nothing to close
            log.warning("intent_stage_failed", proposal_id=proposal_id, error=repr(e))
            return
        try:   # queued ahead of the rejection's FULL commit, which makes it durable too
            await self._journal.mark_intent(proposal_id, "failed", durable=False)
        except Exception as e:  # logged with its reason; start-up closes a pending one
            log.error("intent_mark_failed", proposal_id=proposal_id, state="failed",
                      error=repr(e), code="NOT_DURABLE")
            return
        log.info("intent_voided", proposal_id=proposal_id, order_id=st.ids.entry)
