"""IBBroker.what_if against the paper TWS over a real socket (both client libraries run this
file): IB's margin answer (nothing created at IB), and one not answered in time (BrokerTimeout;
the late answer is dropped and the next what-if is answered)."""

from __future__ import annotations

import pytest

from bracketgate.bus.errors import BrokerTimeout
from tests.integration.test_pacing_and_placement import proposal, rig  # noqa: F401

pytestmark = pytest.mark.ib


async def test_what_if_answers_and_times_out(rig) -> None:  # noqa: F811
    b = rig.broker
    bracket = await rig.bracket(proposal("wi-1"))
    answer = await b.what_if(bracket)
    assert answer["init_margin_change"] is not None and answer["init_margin_change"] > 0
    assert b.working_orders() == [] and not b.has_order_ref("wi-1")   # a what-if creates nothing
    b.request_timeout = 1e-6   # answered after more than one loop step: never in time
    with pytest.raises(BrokerTimeout):
        await b.what_if(bracket)
    b.request_timeout = 5.0
    again = await b.what_if(bracket)
    assert again["init_margin_change"] == answer["init_margin_change"]


async def test_a_slow_what_if_logs_its_pacer_turn_and_ibs_answer_apart(rig) -> None:  # noqa: F811
    """A what-if that waited for the pacer says so: the turn and IB's round trip, apart."""
    from structlog.testing import capture_logs

    b = rig.broker
    bracket = await rig.bracket(proposal("wi-slow"))
    pacer = b.pacer
    owed = int(pacer.tokens()) + int(pacer.rate * 1.2)
    pacer.note_sent(owed)            # the bucket owes ~1.2 s of messages: the turn waits for it
    with capture_logs() as logs:
        answer = await b.what_if(bracket)
    assert answer["init_margin_change"] is not None
    slow = [e for e in logs if e["event"] == "ib_whatif_slow"]
    assert len(slow) == 1 and slow[0]["proposal_id"] == "wi-slow"
    assert slow[0]["turn_s"] >= 1.0 and slow[0]["answer_s"] < slow[0]["turn_s"]
    assert pacer.stats.max_wait_by["ORDER"] >= 1.0
