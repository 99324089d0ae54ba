"""adapters/ib_startup.py against the paper TWS over a real socket (both client libraries run this
file): a start-up reads IB's completed orders only as recovery needs them. A journal's first start
reviews every one (a new or lost journal); a reviewed journal with nothing followed sends no
reqCompletedOrders at all; an intent whose legs ended at IB while the daemon was down is read
(its orderRef alone: the other completed orders are neither decoded into the book nor kept) and
applied by the reconcile; a reconnect reads every one, compact but the followed ones."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from bracketgate.adapters.ib import IBBroker
from bracketgate.adapters import ib_completed
from bracketgate.adapters.ib_completed import leg_from_fields, leg_of_order, unpack
from bracketgate.adapters.ib_startup import COMPLETED_ORDER_MSG, REVIEW_KEY
from bracketgate.adapters.journal import Journal
from bracketgate.agents.execution import ExecutionAgent
from bracketgate.bus.bus import Bus
from bracketgate.bus.messages import ApprovedBracket, ConnectionState
from bracketgate.sim.model import OrderRejected, SimOrder
from tests.integration.test_ib_retention import until
from tests.integration.test_pacing_and_placement import proposal

pytestmark = pytest.mark.ib

CLIENT = 31


def seed_foreign(paper_tws: Any, n: int, start: int = 0) -> None:
    """n orders of another client, placed and cancelled: IB lists them as completed orders."""
    contract = paper_tws.universe.find("AAPL", "STK")[0]
    contract = contract if contract.exchange else dataclasses.replace(contract, exchange="SMART")
    eng = paper_tws.engine
    for i in range(start, start + n):
        eng.place(SimOrder(client_id=99, order_id=500_000 + i, perm_id=eng.next_perm_id(),
                           contract=contract, action="BUY", total_quantity=1, order_type="LMT",
                           lmt_price=100.0, order_ref=f"foreign-{i}"))
        eng.cancel(99, 500_000 + i)


def seed_filled(paper_tws: Any) -> None:
    """Another client's orders that traded: `fx-filled` a MKT buy of 2 filled and its STP sell
    at 50 cancelled, `fx-flat` the MKT sell of 2 that flattened it."""
    contract = paper_tws.universe.find("AAPL", "STK")[0]
    contract = contract if contract.exchange else dataclasses.replace(contract, exchange="SMART")
    eng = paper_tws.engine

    def order(oid: int, ref: str, action: str, kind: str, **kw: Any) -> None:
        eng.place(SimOrder(client_id=99, order_id=oid, perm_id=eng.next_perm_id(),
                           contract=contract, action=action, total_quantity=2, order_type=kind,
                           order_ref=ref, **kw))

    order(600_000, "fx-filled", "BUY", "MKT")
    order(600_001, "fx-filled", "SELL", "STP", aux_price=50.0)
    eng.cancel(99, 600_001)
    order(600_002, "fx-flat", "SELL", "MKT")


def cancel_at_ib(paper_tws: Any, ids: Any) -> None:
    """IB cancels the bracket while the daemon is away (children first)."""
    for oid in (ids.stop_loss, ids.take_profit, ids.entry):
        try:
            paper_tws.engine.cancel(CLIENT, oid)
        except OrderRejected:
            pass   # cancelled with its parent already


class Run:
    """One daemon run's IB side: bus, broker, execution agent on the journal (as core/app.py)."""

    def __init__(self, paper_tws: Any, journal: Journal | None, **startup: Any) -> None:
        self.bus = Bus()
        self.sent_completed = 0
        self.broker = IBBroker(host=paper_tws.host, port=paper_tws.port, client_id=CLIENT,
                               publish=self.bus.publish, heartbeat_s=0.5, ack_timeout=2.0)
        for k, v in startup.items():
            setattr(self.broker.startup, k, v)
        client = self.broker.ib.client
        send = client.reqCompletedOrders

        def counted(api_only: bool) -> None:   # every reqCompletedOrders that leaves
            self.sent_completed += 1
            send(api_only)

        client.reqCompletedOrders = counted
        self.execution = ExecutionAgent(self.bus, self.broker, journal=journal, guard_grace_s=0.2)
        self.journal = journal

    async def __aenter__(self) -> Run:
        await self.bus.start()
        self.execution.attach()
        if self.journal is not None:
            await self.execution.load_journal()
            self.broker.startup.use(expected=self.execution.expected_at_ib, journal=self.journal)
        self.broker.add_reconcile_hook(self.execution.reconcile)
        await self.broker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.close()
        await self.bus.close()

    async def place(self, pid: str) -> Any:
        p = proposal(pid)
        contract = await self.broker.resolve_contract(p)
        res = await self.execution.place(ApprovedBracket(
            proposal=p, contract=contract, approved_at=datetime.now(timezone.utc)))
        assert res.ok and res.order_ids is not None, res
        return res.order_ids


async def until_async(pred: Any, timeout: float = 20.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not await pred():
            await asyncio.sleep(0.05)   # the intent's state is written by a task of its own


async def review_mark(journal: Journal) -> dict[str, Any]:
    return json.loads((await journal.meta())[REVIEW_KEY])


async def test_an_intent_whose_bracket_ended_at_ib_while_down_is_read_alone_and_applied(
        paper_tws, tmp_path) -> None:
    async with Journal(tmp_path / "journal.sqlite") as journal:
        async with Run(paper_tws, journal) as first:        # a new journal: reviewed, clean
            assert first.broker.startup.last["why"] == "review"
            assert first.sent_completed == 1
            assert (await review_mark(journal))["foreign"] == 0
            ids = await first.place("st-ended")
        cancel_at_ib(paper_tws, ids)                       # while the daemon is down
        seed_foreign(paper_tws, 40)
        async with Run(paper_tws, journal) as second:
            b = second.broker
            assert b.startup.last == {"why": "legs_not_open", "wanted": 1, "kept": 3,
                                      "ms": b.startup.last["ms"]}
            assert second.sent_completed == 1
            # only the wanted orderRef entered the library's book
            assert not any(b.has_order_ref(f"foreign-{i}") for i in range(40))
            assert {t.order.orderRef for t in b.ib.trades()} == {"st-ended"}
            assert sorted(u.status for u in b.orders_for_ref("st-ended")) == ["Cancelled"] * 3
            # the reconcile applied it: the book follows the bracket, every leg Cancelled
            book = second.execution.book("st-ended")
            assert book is not None and book.ids == ids
            assert {str(s) for s in book.status.values()} == {"Cancelled"}
            assert book.closed
            states: dict[str, str] = {}

            async def intent_done() -> bool:
                states.update({r.proposal_id: str(r.state) for r in await journal.intents()})
                return states.get("st-ended") == "done"

            await until_async(intent_done, what="the intent closed as done in the journal")


async def test_a_reviewed_journal_following_nothing_reads_no_completed_orders(
        paper_tws, tmp_path) -> None:
    async with Journal(tmp_path / "journal.sqlite") as journal:
        async with Run(paper_tws, journal) as first:
            assert first.broker.startup.last["why"] == "review"
            working = await first.place("st-working")       # rests at IB: open orders list it
        seed_foreign(paper_tws, 40)
        async with Run(paper_tws, journal) as second:
            b = second.broker
            assert b.startup.last["why"] == "none" and b.startup.last["wanted"] == 0
            assert second.sent_completed == 0                # nothing asked of IB
            assert {t.order.orderRef for t in b.ib.trades()} == {"st-working"}
            assert b.existing_bracket("st-working") == working   # adopted from open orders
            assert second.execution.book("st-working") is not None
            # a reconnect reads every completed order again, compact but what the reconcile
            # follows: has_order_ref knows them, the library's book holds no Trade of them,
            # and a second reconnect replaces their legs (not added twice)
            legs_seen = []
            for n in (1, 2):
                reconnects = b.reconnects
                await paper_tws.restart(0.2)
                await until(lambda: b.reconnects > reconnects and b.state is ConnectionState.READY,
                            what="reconnected")
                last = b.startup.last
                assert last["why"] == "reconnect" and last["compact"] >= 40, last
                assert last["kept"] == 0, last
                assert second.sent_completed == n
                assert b.has_order_ref("foreign-0")
                assert {t.order.orderRef for t in b.ib.trades()} == {"st-working"}
                legs_seen.append(len(b.orders_for_ref("foreign-0")))
            assert legs_seen[0] == legs_seen[1] > 0, legs_seen
            assert b.existing_bracket("st-working") == working


async def test_a_new_journal_reviews_every_completed_order_until_the_horizon(
        paper_tws, tmp_path) -> None:
    seed_foreign(paper_tws, 25)       # an earlier run's brackets this journal never saw (lost)
    async with Journal(tmp_path / "journal.sqlite") as journal:
        async with Run(paper_tws, journal) as first:
            b = first.broker
            assert b.startup.last["why"] == "review" and b.startup.last["compact"] >= 25
            assert b.startup.last["kept"] == 0              # none decoded into a Trade
            assert b.has_order_ref("foreign-3")             # prior_placement finds it
            mark = await review_mark(journal)
            assert mark["foreign"] >= 25
        async with Run(paper_tws, journal) as second:      # within the horizon: again
            assert second.broker.startup.last["why"] == "review"
            assert second.broker.has_order_ref("foreign-3")
            again = await review_mark(journal)
            assert again["since"] == mark["since"]          # the horizon runs from the first
        async with Run(paper_tws, journal, horizon_s=0.0) as third:   # past it: IB's day is over
            assert third.broker.startup.last["why"] == "none"
            assert third.sent_completed == 0


async def test_without_a_journal_every_completed_order_is_read(paper_tws) -> None:
    seed_foreign(paper_tws, 10)
    async with Run(paper_tws, None) as run:
        assert run.broker.startup.last["why"] == "no_journal"
        assert run.sent_completed == 1 and run.broker.has_order_ref("foreign-9")


async def test_a_journal_the_reconcile_refuses_gets_no_review_row(paper_tws, tmp_path) -> None:
    """The account check (core/app.py, the first reconcile hook) refuses the journal: the
    review's outcome is not written into it (a refused journal is left as it was)."""
    from bracketgate.bus.errors import BrokerConnectError

    async with Journal(tmp_path / "journal.sqlite") as journal:
        run = Run(paper_tws, journal)

        async def refuse() -> None:
            raise BrokerConnectError("journal of another account", code="TEST_REFUSED")

        run.broker.add_reconcile_hook(refuse)
        with pytest.raises(BrokerConnectError):
            async with run:
                pass
        await run.broker.close()
        await run.bus.close()
        assert run.broker.startup.last["why"] == "review"
        assert REVIEW_KEY not in await journal.meta()


@pytest.mark.parametrize("layout", ["read", "decoded"])
async def test_a_new_journal_reviews_completed_orders_without_building_trades(
        paper_tws, tmp_path, monkeypatch, layout) -> None:
    """A first start on a new journal reads every completed order's orderRef and outcome, but
    none becomes a library Trade: the replay of such an id still meets IB's outcome (finished,
    cancelled) and is never placed. `decoded`: a layout the compact reader does not follow
    (failure injected) is decoded by the library and converted, with the same outcome."""
    if layout == "decoded":
        monkeypatch.setattr(ib_completed, "leg_from_fields", lambda fields, version: None)
    seed_foreign(paper_tws, 5)
    seed_filled(paper_tws)
    async with Journal(tmp_path / "journal.sqlite") as journal:
        async with Run(paper_tws, journal) as run:
            b = run.broker
            assert b.startup.last["why"] == "review"
            assert b.startup.last["kept"] == 0 and b.startup.last["compact"] >= 8
            assert not [t for t in b.ib.trades() if t.order.orderRef.startswith(("foreign-", "fx-"))]
            assert (await review_mark(journal))["foreign"] >= 7
            legs = b.orders_for_ref("fx-filled")
            assert sorted((u.order_type, u.status, u.filled) for u in legs) == [
                ("MKT", "Filled", 2.0), ("STP", "Cancelled", 0.0)]
            stop = next(u for u in legs if u.order_type == "STP")
            assert (stop.stop_price, stop.side.value, stop.symbol, stop.quantity) == (
                50.0, "SELL", "AAPL", 2.0)
            assert stop.perm_id and stop.order_ref == "fx-filled"
            assert [u.status for u in b.orders_for_ref("foreign-2")] == ["Cancelled"]
            assert b.has_order_ref("foreign-4") and not b.has_order_ref("foreign-5")
            assert b.existing_bracket("fx-filled") is None   # no leg ids in a completed order
            # the gate asks prior_placement first: IB's outcome, never a fresh decision
            finished = run.execution.prior_placement(proposal("fx-filled"))
            assert finished is not None and finished.outcome == "finished"
            cancelled = run.execution.prior_placement(proposal("foreign-2"))
            assert cancelled is not None and cancelled.outcome == "cancelled"
            assert run.execution.prior_placement(proposal("never-seen")) is None


async def test_a_review_decodes_what_the_journal_follows_and_the_reconcile_applies_it(
        paper_tws, tmp_path) -> None:
    """A journal reviewed again (foreign orders within the horizon) that follows an intent
    whose bracket IB cancelled while the daemon was down: that orderRef's orders are decoded
    into the book and reconciled; the foreign ones are read compact."""
    seed_foreign(paper_tws, 10)
    async with Journal(tmp_path / "journal.sqlite") as journal:
        async with Run(paper_tws, journal) as first:
            assert first.broker.startup.last["why"] == "review"
            ids = await first.place("st-rev")
        cancel_at_ib(paper_tws, ids)
        async with Run(paper_tws, journal) as second:
            b = second.broker
            assert b.startup.last["why"] == "review" and b.startup.last["kept"] == 3
            assert b.startup.last["compact"] >= 10
            assert {t.order.orderRef for t in b.ib.trades()} == {"st-rev"}
            assert b.has_order_ref("foreign-7")
            book = second.execution.book("st-rev")
            assert book is not None and book.ids == ids and book.closed
            assert {str(v) for v in book.status.values()} == {"Cancelled"}
            mark = await review_mark(journal)
            assert mark["refs"] == 11   # the 10 foreign orderRefs and st-rev


async def test_the_compact_leg_is_what_the_library_decodes(paper_tws) -> None:
    """Every completedOrder message the paper TWS sends, read by ib_completed, gives the very
    leg the client library's decoder gives (both libraries run this file)."""
    seed_foreign(paper_tws, 3)
    seed_filled(paper_tws)
    async with Run(paper_tws, None) as run:
        ids = await run.place("st-mirror")
        paper_tws.engine.cancel(CLIENT, ids.entry)
        b = run.broker
        decoder = b.ib.client.decoder
        handler = decoder.handlers[COMPLETED_ORDER_MSG]
        messages: list[list[str]] = []

        def captured(fields: list[str]) -> None:
            messages.append(list(fields))
            handler(fields)

        decoder.handlers[COMPLETED_ORDER_MSG] = captured
        try:
            trades = await asyncio.wait_for(b.ib.reqCompletedOrdersAsync(False), 20)
        finally:
            decoder.handlers[COMPLETED_ORDER_MSG] = handler
        assert len(messages) == len(trades) >= 9
        kinds = set()
        for fields, t in zip(messages, trades):
            leg = leg_from_fields(fields, decoder.serverVersion)
            assert leg is not None, fields
            ref, packed = leg_of_order(t.contract, t.order, t.orderStatus)
            assert leg[0] == ref
            assert unpack(leg[1]) == unpack(packed)
            kinds.add((t.order.orderType, t.orderStatus.status))
        assert {("MKT", "Filled"), ("STP", "Cancelled"), ("LMT", "Cancelled")} <= kinds
