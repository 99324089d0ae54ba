"""The combo (BAG) contract: legs validated with the leg and field named, signed combo prices,
the JSON Schema, and the answers the MQTT bridge forms from the errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from bracketgate.bus.combos import combo_con_id, structure
from bracketgate.bus.messages import TradeProposal, json_schemas
from bracketgate.bus.mqtt import validation_reasons

E = "20261218"
CALL = {"sec_type": "OPT", "expiry": E, "strike": 100.0, "right": "C", "ratio": 1, "action": "BUY"}
PUT = {**CALL, "right": "P"}


def payload(**over: Any) -> dict[str, Any]:
    base = {"proposal_id": "c-1", "agent_id": "a1", "symbol": "SPY", "sec_type": "BAG",
            "side": "BUY", "quantity": 1, "order_type": "LMT", "limit_price": 10.0,
            "take_profit": 14.0, "stop_loss": 8.0, "legs": [CALL, PUT]}
    return {**base, **over}


def reasons(data: dict[str, Any]) -> list[tuple[str | None, str]]:
    with pytest.raises(ValidationError) as e:
        TradeProposal.model_validate_json(json.dumps(data))
    return [(r.field, r.message) for r in validation_reasons(e.value)]


def test_a_straddle_and_a_credit_vertical_are_valid() -> None:
    p = TradeProposal.model_validate_json(json.dumps(payload()))
    assert p.legs is not None and [leg.right for leg in p.legs] == ["C", "P"]
    credit = payload(limit_price=-1.5, take_profit=-0.5, stop_loss=-2.5,
                     legs=[{**PUT, "action": "SELL"}, {**PUT, "strike": 95.0}])
    assert TradeProposal.model_validate_json(json.dumps(credit)).limit_price == -1.5
    # ratio defaults to 1, exchange SMART, currency USD
    leg = {k: v for k, v in CALL.items() if k != "ratio"}
    p = TradeProposal.model_validate(payload(legs=[leg, PUT]))
    assert p.legs[0].ratio == 1 and p.legs[0].exchange == "SMART"


@pytest.mark.parametrize("over,field,text", [
    (dict(legs=[CALL, {**PUT, "strike": None}]), "legs[1].strike", "needs expiry"),
    (dict(legs=[CALL, {k: v for k, v in PUT.items() if k != "right"}]), "legs[1].right", "needs"),
    (dict(legs=[CALL, {**PUT, "expiry": "202612"}]), "legs[1].expiry", "pattern"),
    (dict(legs=[CALL, {**PUT, "strike": -5.0}]), "legs[1].strike", "greater than 0"),
    (dict(legs=[CALL, {**PUT, "ratio": 0}]), "legs[1].ratio", "greater than or equal to 1"),
    (dict(legs=[CALL, {**PUT, "action": "HOLD"}]), "legs[1].action", "'BUY' or 'SELL'"),
    (dict(legs=[CALL, {**PUT, "sec_type": "FUT"}]), "legs[1].sec_type", "'OPT' or 'STK'"),
    (dict(legs=[CALL, {**PUT, "colour": "red"}]), "legs[1].colour", "Extra inputs"),
    (dict(legs=[CALL, {"sec_type": "STK", "strike": 5.0, "action": "BUY"}]), "legs[1].strike",
     "stock leg takes no"),
    (dict(legs=[CALL, {**CALL, "action": "SELL"}]), "legs[1]", "same contract as legs[0]"),
    (dict(legs=[CALL, {**PUT, "currency": "EUR"}]), "legs[1].currency", "differs"),
    (dict(legs=[CALL]), "legs", "at least 2"),
    (dict(legs=[CALL, PUT, {**CALL, "strike": 105.0}, {**PUT, "strike": 95.0},
                {**CALL, "strike": 110.0}]), "legs", "at most 4"),
    (dict(legs=None), "legs", "a combo is sec_type BAG with legs"),
    (dict(sec_type="OPT", expiry=E, strike=100.0, right="C"), "legs", "only a combo has legs"),
    (dict(strike=100.0), None, "legs only"),
    (dict(limit_price=0.0), "limit_price", "must not be 0"),
    (dict(stop_loss=-0.0), "stop_loss", "must not be 0"),
    (dict(take_profit=1e10), "take_profit", "less than or equal"),
])
def test_each_bad_leg_or_price_is_named(over: dict[str, Any], field: str | None, text: str) -> None:
    got = reasons(payload(**over))
    assert any(f == field and text in m for f, m in got), got


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_combo_prices_are_refused(raw: str) -> None:
    text = json.dumps(payload()).replace('"limit_price": 10.0', f'"limit_price": {raw}')
    with pytest.raises(ValidationError) as e:
        TradeProposal.model_validate_json(text)
    assert {r.field for r in validation_reasons(e.value)} == {"limit_price"}


def test_a_single_leg_price_stays_positive() -> None:
    stock = {"proposal_id": "s-1", "agent_id": "a1", "symbol": "AAPL", "side": "BUY",
             "quantity": 1, "limit_price": -100.0, "take_profit": 110.0, "stop_loss": 95.0}
    got = reasons(stock)
    assert got == [("limit_price", "Value error, must be > 0 (only a combo's, sec_type BAG, "
                                   "may be a negative credit)")]


def test_the_json_schema_has_the_legs_and_bag() -> None:
    schema = json_schemas()["TradeProposal"]
    assert "BAG" in json.dumps(schema["$defs"]["SecType"])
    legs = schema["properties"]["legs"]["anyOf"][0]
    assert legs["minItems"] == 2 and legs["maxItems"] == 4
    leg = schema["$defs"]["ComboLeg"]
    assert set(leg["required"]) == {"sec_type", "action"}
    assert {"expiry", "strike", "right", "ratio", "exchange", "currency"} <= set(leg["properties"])
    assert "bound" in json_schemas()["Reason"]["properties"]


def test_the_combo_key_ignores_leg_order_and_never_looks_like_an_ib_con_id() -> None:
    a = combo_con_id("SPY", "USD", [(1, 1, "BUY"), (2, 1, "BUY")])
    assert a == combo_con_id("SPY", "USD", [(2, 1, "BUY"), (1, 1, "BUY")])
    assert a != combo_con_id("SPY", "USD", [(1, 1, "BUY"), (2, 1, "SELL")])
    assert a < -(1 << 32)


def test_structures() -> None:
    p = TradeProposal.model_validate(payload())
    s = structure(p.legs, +1, 100.0)
    assert s.undefined == "" and s.max_loss(10.0, +1) == 10.0         # long straddle: the debit
    assert "naked" in structure(p.legs, -1, 100.0).undefined          # short straddle
    cal = payload(legs=[{**CALL, "action": "SELL"}, {**CALL, "expiry": "20270115"}])
    s = structure(TradeProposal.model_validate(cal).legs, +1, 100.0)
    assert s.undefined == "" and s.max_loss(2.0, +1) is None          # a calendar: not computable
