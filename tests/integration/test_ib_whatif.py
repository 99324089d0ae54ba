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
