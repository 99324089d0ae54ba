"""Paper TWS margin and commission models, numbers by hand."""

from __future__ import annotations

import pytest

from bracketgate.sim.margin import CommissionModel, MarginModel, MarginRequirement
from bracketgate.sim.model import SimContract

STK = SimContract(265598, "AAPL", "STK", "SMART", "NASDAQ")
ES = SimContract(515416632, "ES", "FUT", "CME", "CME", multiplier=50.0, min_tick=0.25)
YM = SimContract(1, "YM", "FUT", "CBOT", "CBOT", multiplier=5.0, min_tick=1.0)
CALL = SimContract(2, "AAPL", "OPT", "SMART", "", multiplier=100.0, strike=240.0, right="C",
                   under_con_id=265598)
PUT = SimContract(3, "AAPL", "OPT", "SMART", "", multiplier=100.0, strike=220.0, right="P",
                  under_con_id=265598)

approx = pytest.approx


@pytest.mark.parametrize("contract,qty,price,under,initial,maint", [
    (STK, 100, 200.0, None, 5_000.0, 5_000.0),             # long 25%
    (STK, -100, 200.0, None, 6_000.0, 6_000.0),            # short 30%
    (ES, 2, 5900.0, None, 44_000.0, 40_000.0),             # fixed per contract
    (ES, -1, 5900.0, None, 22_000.0, 20_000.0),
    (YM, 1, 40_000.0, None, 20_000.0, 18_000.0),           # unknown future: 10% / 9% notional
    (CALL, 2, 3.0, 230.0, 600.0, 600.0),                   # long option: premium
    # short call 10 OTM: 300 premium + max(0.2*23000 - 1000, 0.1*23000) = 300 + 3600
    (CALL, -1, 3.0, 230.0, 3_900.0, 3_900.0),
    # short put 10 OTM: 200 premium + max(0.2*23000 - 1000, 0.1*22000) = 200 + 3600
    (PUT, -1, 2.0, 230.0, 3_800.0, 3_800.0),
    # short put far OTM: floor 10% of strike value: 5 + max(0.2*30000 - 8000, 2200)
    (PUT, -1, 0.05, 300.0, 2_205.0, 2_205.0),
    (STK, 0, 200.0, None, 0.0, 0.0),
])
def test_margin_rules(contract, qty, price, under, initial, maint):
    req = MarginModel().position(contract, qty, price, under)
    assert req == MarginRequirement(approx(initial), approx(maint))


def test_buying_power_multiplier():
    assert MarginModel().buying_power_multiplier == 4.0


@pytest.mark.parametrize("contract,qty,price,commission", [
    (STK, 100, 230.0, 1.00),          # 0.50 -> min 1.00
    (STK, 1000, 230.0, 5.00),         # 0.005/share
    (STK, 1, 50.0, 0.50),             # capped at 1% of 50
    (CALL, 1, 3.0, 1.00),             # 0.65 -> min 1.00
    (CALL, 10, 3.0, 6.50),
    (ES, 3, 5900.0, 2.55),
])
def test_commission_schedule(contract, qty, price, commission):
    model = CommissionModel()
    value = qty * price * contract.multiplier
    assert model.order_commission(contract, qty, value) == approx(commission)
    assert model.execution_commission(contract, 0, 0.0, qty, price) == approx(commission)


def test_partial_fills_pay_the_order_minimum_once():
    model = CommissionModel()
    first = model.execution_commission(STK, 0, 0.0, 100, 230.0)
    second = model.execution_commission(STK, 100, 23_000.0, 100, 230.0)
    third = model.execution_commission(STK, 200, 46_000.0, 200, 230.0)
    assert (first, second, third) == (1.00, 0.00, approx(1.00))   # total 2.00 = 400 * 0.005
