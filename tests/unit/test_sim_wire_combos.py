"""BAG requests decoded from frames the installed IB library writes, at every version: the
combo legs, orderComboLegs, smartComboRoutingParams and the order attributes after them."""

from __future__ import annotations

import pytest
from bracketgate.sim import codec
from bracketgate.sim.model import ComboLeg

from tests.iblib import ComboLeg as IbComboLeg
from tests.iblib import Contract, LimitOrder, TagValue, ib
from tests.unit.test_sim_wire import VERSIONS, _Recorder


def _bag():
    bag = Contract(secType="BAG", symbol="AAPL", exchange="SMART", currency="USD")
    bag.comboLegs = [IbComboLeg(conId=101, ratio=1, action="BUY", exchange="SMART"),
                     IbComboLeg(conId=102, ratio=2, action="SELL", exchange="CBOE")]
    return bag


@pytest.mark.parametrize("version", VERSIONS)
async def test_bag_place_order_is_decoded_at_every_version(version):
    rec = _Recorder(version)
    order = LimitOrder("BUY", 3, -1.25, orderRef="combo", whatIf=True, eTradeOnly=True,
                       firmQuoteOnly=True)
    order.orderComboLegs = [ib.OrderComboLeg(price=1.5), ib.OrderComboLeg()]
    order.smartComboRoutingParams = [TagValue("NonGuaranteed", "1")]
    rec.client.placeOrder(9, _bag(), order)
    m = rec.last(version)
    assert isinstance(m, codec.PlaceOrder) and m.contract.sec_type == "BAG"
    assert m.combo_legs == (ComboLeg(101, 1, "BUY", "SMART"), ComboLeg(102, 2, "SELL", "CBOE"))
    assert m.combo_leg_prices == (1.5, None)
    assert m.smart_combo_params == (("NonGuaranteed", "1"),)
    # the fields after the combo block are still in step
    assert (m.lmt_price, m.order_ref, m.what_if) == (-1.25, "combo", True)
    assert m.e_trade_only and m.firm_quote_only and m.n_conditions == 0


@pytest.mark.parametrize("version", VERSIONS)
async def test_plain_order_has_no_combo_and_no_refused_attributes(version):
    rec = _Recorder(version)
    rec.client.placeOrder(10, Contract(conId=265598, exchange="SMART"),
                          LimitOrder("BUY", 1, 230.0))
    m = rec.last(version)
    assert not m.combo_legs and not m.e_trade_only and not m.firm_quote_only


@pytest.mark.parametrize("version", VERSIONS)
async def test_bag_market_data_request_is_decoded(version):
    rec = _Recorder(version)
    rec.client.reqMktData(5, _bag(), "", True, False, [])
    m = rec.last(version)
    assert isinstance(m, codec.ReqMktData) and m.snapshot
    assert m.combo_legs == (ComboLeg(101, 1, "BUY", "SMART"), ComboLeg(102, 2, "SELL", "CBOE"))
