"""Paper TWS margin and commission models: simple, documented, deterministic.

MARGIN (per position; account requirement = the sum; `MarginModel`):
  STK  long:  initial = maintenance = 25% of market value      (BuyingPower = AvailableFunds x 4)
       short: initial = maintenance = 30% of |market value|
  OPT  long:  initial = maintenance = premium (market value): a long option lends nothing
       short: premium + max(20% of underlying value - out-of-the-money amount,
                            10% of underlying value (calls) / of strike value (puts))   (CBOE-style)
  FUT  fixed per contract: ES 22,000 initial / 20,000 maintenance, NQ 32,000 / 29,000
       (unknown futures: 10% / 9% of notional).
  Account: EquityWithLoanValue = NetLiquidation; AvailableFunds = ELV - InitMarginReq;
  ExcessLiquidity = ELV - MaintMarginReq. An order is refused (201) when, after it fully fills
  at its expected price, InitMarginReq would exceed ELV and the order raises the requirement.

COMMISSION (per order, IB fixed-like; `CommissionModel`):
  STK  $0.005/share, min $1.00 per order, max 1% of the order's trade value
  OPT  $0.65/contract, min $1.00 per order          FUT  $0.85/contract
  Partial fills: each execution is charged order_commission(cum after) - order_commission(cum
  before), so the order minimum is paid by the first execution and the total is per order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bracketgate.sim.model import SimContract

DEFAULT_FUTURES_MARGINS: Mapping[str, tuple[float, float]] = {
    "ES": (22_000.0, 20_000.0),
    "NQ": (32_000.0, 29_000.0),
}


@dataclass(frozen=True)
class MarginRequirement:
    initial: float
    maintenance: float

    def __add__(self, other: MarginRequirement) -> MarginRequirement:
        return MarginRequirement(self.initial + other.initial, self.maintenance + other.maintenance)


ZERO_MARGIN = MarginRequirement(0.0, 0.0)


class MarginModel:
    """Requirement of one position. See the module docstring for the rules."""

    def __init__(
        self,
        stock_long_rate: float = 0.25,
        stock_short_rate: float = 0.30,
        short_option_rate: float = 0.20,
        short_option_min_rate: float = 0.10,
        futures: Mapping[str, tuple[float, float]] = DEFAULT_FUTURES_MARGINS,
        unknown_future_rates: tuple[float, float] = (0.10, 0.09),
    ) -> None:
        self.stock_long_rate = stock_long_rate
        self.stock_short_rate = stock_short_rate
        self.short_option_rate = short_option_rate
        self.short_option_min_rate = short_option_min_rate
        self.futures = dict(futures)
        self.unknown_future_rates = unknown_future_rates

    @property
    def buying_power_multiplier(self) -> float:
        return 1.0 / self.stock_long_rate

    def position(self, contract: SimContract, quantity: float, price: float,
                 underlying_price: float | None = None) -> MarginRequirement:
        if quantity == 0:
            return ZERO_MARGIN
        qty = abs(quantity)
        value = qty * price * contract.multiplier
        if contract.sec_type == "STK":
            rate = self.stock_long_rate if quantity > 0 else self.stock_short_rate
            return MarginRequirement(rate * value, rate * value)
        if contract.sec_type == "OPT":
            if quantity > 0:
                return MarginRequirement(value, value)
            spot = underlying_price if underlying_price is not None else contract.strike
            under_value = qty * spot * contract.multiplier
            if contract.right == "C":
                otm = max(contract.strike - spot, 0.0) * qty * contract.multiplier
                floor = self.short_option_min_rate * under_value
            else:
                otm = max(spot - contract.strike, 0.0) * qty * contract.multiplier
                floor = self.short_option_min_rate * qty * contract.strike * contract.multiplier
            req = value + max(self.short_option_rate * under_value - otm, floor)
            return MarginRequirement(req, req)
        if contract.sec_type == "FUT":
            if contract.symbol in self.futures:
                init, maint = self.futures[contract.symbol]
                return MarginRequirement(init * qty, maint * qty)
            i_rate, m_rate = self.unknown_future_rates
            return MarginRequirement(i_rate * value, m_rate * value)
        raise ValueError(f"no margin rule for secType {contract.sec_type}")


class CommissionModel:
    """Commission of an order's cumulative fills. See the module docstring for the schedule."""

    def __init__(
        self,
        stock_per_share: float = 0.005,
        stock_min: float = 1.00,
        stock_max_rate: float = 0.01,
        option_per_contract: float = 0.65,
        option_min: float = 1.00,
        future_per_contract: float = 0.85,
    ) -> None:
        self.stock_per_share = stock_per_share
        self.stock_min = stock_min
        self.stock_max_rate = stock_max_rate
        self.option_per_contract = option_per_contract
        self.option_min = option_min
        self.future_per_contract = future_per_contract

    def order_commission(self, contract: SimContract, cum_qty: float, cum_value: float) -> float:
        """Commission for an order that has filled `cum_qty` for a trade value `cum_value`."""
        if cum_qty <= 0:
            return 0.0
        if contract.sec_type == "STK":
            fee = max(self.stock_per_share * cum_qty, self.stock_min)
            return round(min(fee, self.stock_max_rate * cum_value), 4)
        if contract.sec_type == "OPT":
            return round(max(self.option_per_contract * cum_qty, self.option_min), 4)
        if contract.sec_type == "FUT":
            return round(self.future_per_contract * cum_qty, 4)
        raise ValueError(f"no commission rule for secType {contract.sec_type}")

    def execution_commission(self, contract: SimContract, prev_qty: float, prev_value: float,
                             qty: float, price: float) -> float:
        """Commission charged on one execution of `qty` at `price` after earlier fills."""
        value = qty * price * contract.multiplier
        after = self.order_commission(contract, prev_qty + qty, prev_value + value)
        before = self.order_commission(contract, prev_qty, prev_value)
        return round(after - before, 4)
