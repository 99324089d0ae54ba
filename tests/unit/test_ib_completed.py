"""adapters/ib_completed.py: a completedOrder message read without the client library gives the
leg the library's decoder gives (the installed one: both libraries run this file), on real TWS
captures and on every layout the paper TWS writes; a layout it does not follow is left to the
library (None), never guessed; CompletedRefs holds orderRef -> legs within its bound."""

from __future__ import annotations

import pytest

from bracketgate.adapters.ib_completed import (
    LEGS_MAX,
    CompletedRefs,
    leg_from_fields,
    leg_of_order,
    pack,
    ref_of_fields,
    unpack,
)
from bracketgate.sim import codec
from bracketgate.sim.model import SimOrder
from bracketgate.sim.universe import Universe
from tests.unit.test_sim_wire_captures import AAPL, ESU5, GO, MAX, RUST, _decode, capture_lines
from tests.unit.test_sim_wire_captures import pytestmark as captures_present

pytestmark = captures_present


def library_leg(fields: list[str], version: int) -> tuple[str, str]:
    name, (contract, order, state) = _decode(fields, version)
    assert name == "completedOrder"
    return leg_of_order(contract, order, state)


def same_leg(fields: list[str], version: int) -> tuple[str, tuple]:
    got = leg_from_fields(list(fields), version)
    assert got is not None, "a layout the reader should follow"
    ref, packed = library_leg(fields, version)
    assert got[0] == ref == ref_of_fields(fields)
    assert unpack(got[1]) == unpack(packed)
    return ref, unpack(got[1])


def test_a_real_tws_completed_order_reads_as_the_library_decodes_it() -> None:
    [real_173] = capture_lines(RUST, "101|637533641|")   # ES future, LMT cancelled
    ref, leg = same_leg(real_173, 173)
    assert leg[1] == 2126726143 and leg[4:6] == ("LMT", "Cancelled") and leg[8] == 5800.0
    [older] = capture_lines(RUST, "101|265598|")   # AAPL MKT filled, a server before 170
    ref, leg = same_leg(older, 169)
    assert leg[4:7] == ("MKT", "Filled", 100.0)
    assert leg_from_fields(list(older), 173) is None   # not a 173 layout: declined, not misread


def test_a_longer_layout_than_the_version_is_left_to_the_library() -> None:
    """A server of a later version (sv200 adds three fields): the reader's walk does not end
    where the message does, so it declines (the library decodes it, ignoring the rest)."""
    for fields in capture_lines(GO, "101|"):
        assert leg_from_fields(list(fields), 178) is None
    order = SimOrder(client_id=1, order_id=1, perm_id=5, contract=AAPL, action="BUY",
                     total_quantity=100, order_type="LMT", lmt_price=10.0, order_ref="r",
                     status="Cancelled", completed_at=1.7e9)
    longer = codec.completed_order(order, MAX, 0) + ["", "", "0"]
    assert leg_from_fields(list(longer), MAX) is None
    assert library_leg(longer, MAX)[0] == "r"   # what the fallback converts


@pytest.mark.parametrize("version", sorted({157, 163, 164, 166, 170, 173, 176, MAX}))
def test_every_layout_the_paper_tws_writes_reads_as_the_library_decodes_it(version: int) -> None:
    universe = Universe()
    opt = universe.option_chain("AAPL")[0]
    orders = [
        SimOrder(client_id=3, order_id=9, perm_id=77, contract=opt, action="SELL",
                 total_quantity=2, order_type="STP LMT", lmt_price=1.5, aux_price=1.6,
                 tif="GTC", order_ref="ref-9", parent_id=8, oca_group="g", account="DU1",
                 status="Cancelled", filled=1, avg_fill_price=1.55, completed_at=1.7e9,
                 completed_status="Cancelled by Trader"),
        SimOrder(client_id=1, order_id=1, perm_id=5, contract=AAPL, action="BUY",
                 total_quantity=100, order_type="MKT", order_ref="ref-mkt", status="Filled",
                 filled=100, completed_at=1.7e9, completed_status="Filled Size: 100"),
        SimOrder(client_id=1, order_id=2, perm_id=6, contract=ESU5, action="SELL",
                 total_quantity=1, order_type="TRAIL LIMIT", aux_price=2.0,
                 trail_stop_price=5790.0, lmt_price_offset=0.25, lmt_price=5789.75,
                 order_ref="", status="Cancelled", completed_at=1.7e9),
    ]
    for order in orders:
        fields = codec.completed_order(order, version, 76)
        ref, leg = same_leg(fields, version)
        assert ref == order.order_ref and leg[1] == order.perm_id and leg[5] == order.status
        assert leg[6] == order.filled and leg[11] == order.total_quantity


def test_layouts_the_reader_does_not_follow_are_declined() -> None:
    order = SimOrder(client_id=1, order_id=1, perm_id=5, contract=AAPL, action="BUY",
                     total_quantity=100, order_type="LMT", lmt_price=10.0, order_ref="r",
                     status="Cancelled", completed_at=1.7e9)
    fields = codec.completed_order(order, MAX, 0)
    assert leg_from_fields(list(fields), MAX) is not None
    assert leg_from_fields(fields[:-1], MAX) is None                # cut short
    assert leg_from_fields(fields + ["x"], MAX) is None             # a field too many
    assert leg_from_fields(fields[:20], MAX) is None
    peg = list(fields)
    peg[14] = "PEG BENCH"
    assert leg_from_fields(peg, MAX) is None
    # order conditions: their count sits before the last 15 (+5 from version 170) fields
    at = len(fields) - 15 - 5 - 1
    assert fields[at] == "0"
    assert leg_from_fields(fields[:at] + ["1"] + fields[at + 1:], MAX) is None


def test_completed_refs_hold_legs_by_order_ref_within_the_bound() -> None:
    refs = CompletedRefs(max_refs=3)
    leg = pack(11, "LMT", "Cancelled", "0", "1.7976931348623157E308", "100.0", "AAPL", "BUY", "1")
    refs.add("", leg)                         # no orderRef: nothing a replay can name
    assert len(refs) == 0
    refs.add("a", leg)
    refs.add("a", pack(12, "STP", "Filled", "1", "99.0", "", "AAPL", "SELL", "1"))
    assert [(x[1], x[4], x[5], x[6], x[7], x[8]) for x in refs.legs("a")] == [
        (11, "LMT", "Cancelled", 0.0, None, 100.0), (12, "STP", "Filled", 1.0, 99.0, None)]
    for r in "bcd":
        refs.add(r, leg)
    assert len(refs) == 3 and "a" not in refs and refs.legs("a") == ()   # oldest forgotten
    assert set(refs.refs()) == {"b", "c", "d"} and refs.added == 5
    assert refs.nbytes() > 0
    many = CompletedRefs()
    for i in range(3 * LEGS_MAX):   # one orderRef on many orders (not a bracket of ours)
        many.add("m", pack(100 + i, "LMT", "Cancelled", "0", "", "1.0", "AAPL", "BUY", "1"))
    assert [x[1] for x in many.legs("m")] == list(range(100 + 2 * LEGS_MAX, 100 + 3 * LEGS_MAX))


def test_a_listing_read_again_replaces_an_order_refs_legs() -> None:
    """A reconnect reads the day's completed orders again: within one listing an orderRef's
    legs are this listing's (added up), not appended to the last listing's; an orderRef the
    new listing does not name keeps its legs."""
    refs = CompletedRefs()
    entry = pack(11, "LMT", "Filled", "1", "100.0", "", "AAPL", "BUY", "1")
    stop = pack(12, "STP", "Cancelled", "0", "", "99.0", "AAPL", "SELL", "1")
    for _ in range(2):
        with refs.listing():
            refs.add("a", entry)
            refs.add("a", stop)
            if not len(refs.legs("b")):
                refs.add("b", entry)
    assert [x[1] for x in refs.legs("a")] == [11, 12]
    assert [x[1] for x in refs.legs("b")] == [11]
    refs.add("a", stop)                       # outside a listing: added to, as before
    assert [x[1] for x in refs.legs("a")] == [11, 12, 12]
