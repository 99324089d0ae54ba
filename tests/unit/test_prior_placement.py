"""The gate meets a proposal_id it has no decision for, but IB has (or had) its orderRef: the
decision reports what IB has, never a fresh verdict (issue 8: crash windows, lost journals)."""

from __future__ import annotations

from bracketgate.bus.messages import BracketOrderIds, DenialCode as D, PriorPlacement, Verdict
from tests.unit.riskkit import governor, open_limits, proposal, snapshot


def _gov(prior: dict[str, PriorPlacement], **limits):
    gov, clock = governor(open_limits(**limits))
    asked: list[str] = []

    def lookup(p):
        asked.append(p.proposal_id)
        return prior.get(p.proposal_id)

    gov.use_prior_lookup(lookup)
    return gov, clock, asked


def test_a_bracket_at_ib_is_approved_with_its_ids_even_when_a_fresh_check_would_reject():
    ids = BracketOrderIds(entry=7, take_profit=8, stop_loss=9)
    # every proposal is rate limited: a fresh verdict would be RATE_LIMITED
    gov, clock, _ = _gov({"p1": PriorPlacement(proposal_id="p1", outcome="placed", order_ids=ids)},
                         max_proposals_per_s=0.001, proposal_burst=1)
    snap = snapshot(clock)
    gov.evaluate(proposal("p0"), snap)                      # spends the only token
    d = gov.evaluate(proposal("p1"), snap)
    assert d.verdict is Verdict.APPROVED and d.order_ids == ids and d.reasons == []
    assert "p1" not in gov.ledger                           # counted from IB's working orders
    assert gov.evaluate(proposal("p1"), snap) is d          # and remembered


def test_cancelled_finished_and_never_sent_are_typed_rejections_without_ids():
    prior = {
        "c": PriorPlacement(proposal_id="c", outcome="cancelled", detail="LMT Cancelled"),
        "f": PriorPlacement(proposal_id="f", outcome="finished", detail="STP Filled"),
        "n": PriorPlacement(proposal_id="n", outcome="not_at_ib", detail="intent pending"),
    }
    gov, clock, _ = _gov(prior)
    snap = snapshot(clock)
    want = {"c": D.BRACKET_CANCELLED_AT_IB, "f": D.BRACKET_FINISHED_AT_IB, "n": D.PLACEMENT_FAILED}
    for pid, code in want.items():
        d = gov.evaluate(proposal(pid), snap)
        assert d.verdict is Verdict.REJECTED and [r.code for r in d.reasons] == [code]
        assert d.order_ids is None
        assert prior[pid].detail in d.reasons[0].message
    assert len(gov.ledger) == 0


def test_placed_with_an_unknown_leg_id_is_never_approved_with_id_zero():
    ids = BracketOrderIds(entry=7, take_profit=0, stop_loss=9)
    gov, clock, _ = _gov({"p": PriorPlacement(proposal_id="p", outcome="placed", order_ids=ids)})
    d = gov.evaluate(proposal("p"), snapshot(clock))
    assert d.verdict is Verdict.REJECTED and d.order_ids is None


def test_unknown_at_ib_is_decided_normally_and_a_repeat_does_not_ask_again():
    gov, clock, asked = _gov({})
    snap = snapshot(clock)
    d = gov.evaluate(proposal("p"), snap)
    assert d.verdict is Verdict.APPROVED and "p" in gov.ledger
    gov.evaluate(proposal("p"), snap)
    assert asked == ["p"]
