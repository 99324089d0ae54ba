"""Multi-leg combos (IB BAG): the leg model, the combo's validation and its payoff structure.

A proposal with `sec_type: "BAG"` carries 2..4 `legs` on one underlying (`symbol`); its prices
are combo prices (net debit > 0, net credit < 0: IB's sign for a BUY of the combo) and its
quantity counts combos. Pure: no IB objects, no bus; bus/messages.py and agents/combo_risk.py use it.

Structure: the payoff at expiry of one combo (bought) is piecewise linear in the underlying's
price S, so its minimum over S >= 0 sits at S = 0 or at a strike, unless a slope runs away:
  calls_and_stock  net call (+ stock/multiplier) quantity: < 0 loses without bound as S rises
  puts             net put quantity: < 0 is a net short naked put (loses as S falls)
A combo whose option legs share one expiry has a computable maximum loss; a net short naked
option either way is undefined risk.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MIN_LEGS, MAX_LEGS = 2, 4
MAX_RATIO = 1000


class ComboLeg(BaseModel):
    """One leg of a combo: an option (expiry YYYYMMDD, strike, right) or the stock itself.
    `action` is the leg's side for a BUY of the combo; `ratio` its units per combo."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="null")

    sec_type: Literal["OPT", "STK"]
    expiry: Annotated[str, Field(pattern=r"^\d{8}$")] | None = None
    strike: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False, strict=True)] | None = None
    right: Literal["C", "P"] | None = None
    ratio: Annotated[int, Field(ge=1, le=MAX_RATIO, strict=True)] = 1
    action: Literal["BUY", "SELL"]
    exchange: Annotated[str, Field(min_length=1, max_length=16)] = "SMART"
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"

    @property
    def sign(self) -> int:
        """+1 when a BUY of the combo buys this leg."""
        return 1 if self.action == "BUY" else -1

    def identity(self) -> tuple[Any, ...]:
        """What makes two legs the same contract."""
        return (self.sec_type, self.expiry, self.strike, self.right, self.exchange, self.currency)

    def describe(self) -> str:
        if self.sec_type == "STK":
            return f"{self.action} {self.ratio} STK"
        return f"{self.action} {self.ratio} {self.expiry} {self.strike:g}{self.right}"


def combo_problems(legs: list[ComboLeg], currency: str) -> list[str]:
    """Every problem of a combo's legs as "legs[i].field: what is wrong" (empty: valid)."""
    out: list[str] = []
    if not MIN_LEGS <= len(legs) <= MAX_LEGS:
        out.append(f"legs: a combo has {MIN_LEGS} to {MAX_LEGS} legs, not {len(legs)}")
    seen: dict[tuple[Any, ...], int] = {}
    for i, leg in enumerate(legs):
        if leg.sec_type == "OPT":
            for name in ("expiry", "strike", "right"):
                if getattr(leg, name) is None:
                    out.append(f"legs[{i}].{name}: an option leg needs expiry (YYYYMMDD), "
                               "strike and right")
        else:
            for name in ("expiry", "strike", "right"):
                if getattr(leg, name) is not None:
                    out.append(f"legs[{i}].{name}: a stock leg takes no expiry, strike or right")
        if leg.currency != currency:
            out.append(f"legs[{i}].currency: {leg.currency} differs from the combo's {currency}")
        first = seen.setdefault(leg.identity(), i)
        if first != i:
            out.append(f"legs[{i}]: the same contract as legs[{first}] (one leg per contract)")
    return out


# a pydantic error's location as one path: ("legs", 1, "strike") -> "legs[1].strike"
_LEG_MESSAGE = re.compile(r"^(?:Value error, )?(legs(?:\[\d+\])?(?:\.\w+)?): ")


def error_field(loc: tuple[Any, ...], message: str) -> str:
    """The field a validation error names: its location, list indexes in brackets; an error
    of the whole proposal that names a leg ("legs[1].strike: ...") names that leg's field."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if not path:
        m = _LEG_MESSAGE.match(message)
        if m is not None:
            return m.group(1)
    return path


def combo_con_id(symbol: str, currency: str, legs: list[tuple[int, int, str]]) -> int:
    """The daemon's key for one combo (IB gives a BAG no conId of its own): negative, so never
    an IB conId, and the same for the same legs (conId, ratio, action) in any order."""
    key = "|".join([symbol, currency, *sorted(f"{c}:{r}:{a}" for c, r, a in legs)])
    return -(zlib.crc32(("BAG|" + key).encode()) + 1) - (1 << 33)


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True, slots=True)
class Structure:
    """One combo's risk shape, bought (`side` +1) or sold (-1), per combo in price units.

    undefined: why the loss is unbounded ("" = bounded); worst_payoff: the lowest value at
    expiry of what this side holds (None = not computable: several expiries)."""

    undefined: str
    worst_payoff: float | None      # the lowest payoff at expiry (of this side), price units

    def max_loss(self, entry: float, side: int) -> float | None:
        """Per combo: entry paid (BUY, signed) less the lowest payoff; SELL mirrored."""
        if self.undefined or self.worst_payoff is None:
            return None
        return max(0.0, side * entry - self.worst_payoff)


def structure(legs: list[ComboLeg], side: int, multiplier: float,
              covered: list[float] | None = None) -> Structure:
    """The shape of `side` (+1 BUY, -1 SELL) of the combo: see the module doc. `covered[i]`:
    units per combo of leg i that only close what the account holds (a SELL of a held long):
    not naked, but then the combo alone is not the position, so no structure bound."""
    q = [(side * leg.sign * leg.ratio, leg) for leg in legs]
    if covered is not None and any(covered):
        q = [(n - math.copysign(min(abs(n), cov), n), leg) for (n, leg), cov in zip(q, covered)]
    stock = sum(n for n, leg in q if leg.sec_type == "STK") / (multiplier or 1.0)
    calls = sum(n for n, leg in q if leg.right == "C")
    puts = sum(n for n, leg in q if leg.right == "P")
    why = []
    if calls + stock < -1e-12:
        why.append("net short calls (or stock), a naked short call: the loss grows without bound "
                   "as the underlying rises")
    if puts < -1e-12:
        why.append("net short puts not covered by long puts: a naked short put")
    if why:
        return Structure("; ".join(why), None)
    expiries = {leg.expiry for _, leg in q if leg.sec_type == "OPT"}
    if len(expiries) > 1 or (covered is not None and any(covered)):
        return Structure("", None)      # calendars: the payoff depends on the back leg's value

    def payoff(s: float) -> float:
        total = 0.0
        for n, leg in q:
            if leg.sec_type == "STK":
                total += n * s / (multiplier or 1.0)
            elif leg.right == "C":
                total += n * max(0.0, s - (leg.strike or 0.0))
            else:
                total += n * max(0.0, (leg.strike or 0.0) - s)
        return total

    points = [0.0] + [leg.strike for _, leg in q if leg.strike is not None]
    worst = min(payoff(s) for s in points)
    return Structure("", worst if math.isfinite(worst) else None)


# --------------------------------------------------------------------------- one leg as a contract


@dataclass(frozen=True, slots=True)
class LegQuery:
    """One leg asked of IB as a single contract: the attributes a single-leg proposal's
    contract lookup reads (adapters/ib.py contract_key / resolve_contract), so a leg shares
    the contract cache with a single-leg proposal of the same option."""

    symbol: str
    sec_type: Any                # bus.messages.SecType
    exchange: str
    currency: str
    expiry: str | None
    strike: float | None
    right: Any                   # bus.messages.Right | None
    legs: None = None
    proposal_id: str = ""


def leg_query(p: Any, leg: ComboLeg) -> LegQuery:
    """The contract lookup for `leg` of combo proposal `p` (on p's underlying)."""
    from bracketgate.bus.messages import Right, SecType

    return LegQuery(symbol=p.symbol, sec_type=SecType(leg.sec_type), exchange=leg.exchange,
                    currency=leg.currency, expiry=leg.expiry, strike=leg.strike,
                    right=Right(leg.right) if leg.right else None, proposal_id=p.proposal_id)
