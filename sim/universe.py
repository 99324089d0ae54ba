"""Paper TWS instrument universe: stocks, option chains and quarterly futures; deterministic.

Everything derives from a `UniverseConfig` and one date (`as_of`, normally the engine clock's date):
the same inputs give the same contracts, conIds, local symbols and start prices on every run.
Stock conIds are IB's real ones; option/future conIds are stable hashes of the contract's key
(a few known real futures conIds are used as they are). Expiries are computed relative to
`as_of` so they are always strictly in the future.

Shapes (one line each):
  Universe._by_con_id:   conId -> SimContract
  Universe._start:       conId -> float          (start price; options get a Black-Scholes value)
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from bracketgate.sim.model import SimContract

_MONTH_CODES = {3: "H", 6: "M", 9: "U", 12: "Z"}
_FUTURE_EXCHANGE_ALIASES = {"GLOBEX": "CME"}


# ---- configuration


@dataclass(frozen=True)
class StockSpec:
    symbol: str
    con_id: int
    primary_exchange: str
    price: float
    long_name: str
    volatility: float = 0.30          # annualised, used for option values and the price path


@dataclass(frozen=True)
class OptionChainSpec:
    underlying: str                   # a StockSpec symbol
    strike_step: float = 5.0
    strikes_each_side: int = 10       # strikes below and above the at-the-money strike
    weeklies: int = 4                 # next N Fridays
    monthlies: int = 3                # third Fridays of the next N months


@dataclass(frozen=True)
class FutureSpec:
    symbol: str
    multiplier: float
    price: float
    long_name: str
    under_con_id: int                 # the index conId IB reports as underConId
    exchange: str = "CME"
    min_tick: float = 0.25
    expiries: int = 4                 # next N quarterly (H/M/U/Z) contracts
    volatility: float = 0.18


DEFAULT_STOCKS: tuple[StockSpec, ...] = (
    StockSpec("AAPL", 265598, "NASDAQ", 230.00, "APPLE INC", 0.28),
    StockSpec("MSFT", 272093, "NASDAQ", 420.00, "MICROSOFT CORP", 0.25),
    StockSpec("TSLA", 76792991, "NASDAQ", 250.00, "TESLA INC", 0.55),
    StockSpec("SPY", 756733, "ARCA", 580.00, "SPDR S&P 500 ETF TRUST", 0.16),
    StockSpec("NVDA", 4815747, "NASDAQ", 135.00, "NVIDIA CORP", 0.50),
    StockSpec("AMZN", 3691937, "NASDAQ", 200.00, "AMAZON.COM INC", 0.32),
)
DEFAULT_OPTION_CHAINS: tuple[OptionChainSpec, ...] = (
    OptionChainSpec("AAPL", strike_step=5.0),
    OptionChainSpec("SPY", strike_step=5.0),
)
DEFAULT_FUTURES: tuple[FutureSpec, ...] = (
    FutureSpec("ES", 50.0, 5900.00, "E-mini S&P 500", 11004968),
    FutureSpec("NQ", 20.0, 20800.00, "E-mini Nasdaq-100", 11004958),
)
# Real IB conIds for futures we know; anything else gets a stable derived id.
KNOWN_FUTURE_CON_IDS = {"ESM5": 620731015, "ESU5": 637533641, "ESZ6": 515416632}


@dataclass(frozen=True)
class UniverseConfig:
    stocks: tuple[StockSpec, ...] = DEFAULT_STOCKS
    option_chains: tuple[OptionChainSpec, ...] = DEFAULT_OPTION_CHAINS
    futures: tuple[FutureSpec, ...] = DEFAULT_FUTURES
    risk_free_rate: float = 0.04


@dataclass(frozen=True)
class OptionParams:
    """One reqSecDefOptParams row (securityDefinitionOptionParameter)."""

    exchange: str
    underlying_con_id: int
    trading_class: str
    multiplier: str
    expirations: tuple[str, ...]
    strikes: tuple[float, ...]


class UnknownContract(LookupError):
    """No (or no unique) contract matches a description. `matches` holds the candidates."""

    def __init__(self, message: str, matches: list[SimContract] | None = None) -> None:
        super().__init__(message)
        self.matches = matches or []


# ---- calendar helpers


def third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


def next_fridays(as_of: date, n: int) -> list[date]:
    first = as_of + timedelta(days=(4 - as_of.weekday()) % 7 or 7)
    return [first + timedelta(weeks=i) for i in range(n)]


def next_monthlies(as_of: date, n: int) -> list[date]:
    out: list[date] = []
    year, month = as_of.year, as_of.month
    while len(out) < n:
        d = third_friday(year, month)
        if d > as_of:
            out.append(d)
        month += 1
        if month > 12:
            year, month = year + 1, 1
    return out


def next_quarterlies(as_of: date, n: int) -> list[date]:
    out: list[date] = []
    year, month = as_of.year, as_of.month
    while len(out) < n:
        if month in _MONTH_CODES:
            d = third_friday(year, month)
            if d > as_of:
                out.append(d)
        month += 1
        if month > 12:
            year, month = year + 1, 1
    return out


def black_scholes(spot: float, strike: float, years: float, vol: float, rate: float,
                  right: str) -> float:
    years = max(years, 1.0 / 365.0)
    sd = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / sd
    d2 = d1 - sd
    n = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    disc = strike * math.exp(-rate * years)
    if right == "C":
        return spot * n(d1) - disc * n(d2)
    return disc * n(-d2) - spot * n(-d1)


def round_to_tick(price: float, tick: float) -> float:
    return round(round(price / tick) * tick, 10)


def occ_local_symbol(symbol: str, expiry: str, right: str, strike: float) -> str:
    """OCC option symbol as IB shows it: 'AAPL  261218C00230000'."""
    return f"{symbol:<6}{expiry[2:]}{right}{int(round(strike * 1000)):08d}"


# ---- the universe


class Universe:
    """The tradable instruments of the paper TWS (immutable once built)."""

    def __init__(
        self,
        as_of: date | None = None,
        config: UniverseConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or UniverseConfig()
        self.as_of = as_of or datetime.fromtimestamp(clock(), tz=timezone.utc).date()
        self._by_con_id: dict[int, SimContract] = {}
        self._start: dict[int, float] = {}
        self._vol: dict[int, float] = {}
        self._build()

    # -- building

    def _add(self, contract: SimContract, price: float, vol: float) -> None:
        if contract.con_id in self._by_con_id:
            raise ValueError(f"conId {contract.con_id} used twice ({contract.local_symbol})")
        self._by_con_id[contract.con_id] = contract
        self._start[contract.con_id] = price
        self._vol[contract.con_id] = vol

    def _derived_con_id(self, key: str) -> int:
        con_id = 400_000_000 + zlib.crc32(key.encode()) % 1_000_000_000
        while con_id in self._by_con_id:
            con_id += 1
        return con_id

    def _build(self) -> None:
        stocks = {s.symbol: s for s in self.config.stocks}
        for s in self.config.stocks:
            self._add(
                SimContract(
                    con_id=s.con_id, symbol=s.symbol, sec_type="STK", exchange="SMART",
                    primary_exchange=s.primary_exchange, local_symbol=s.symbol,
                    trading_class="NMS" if s.primary_exchange == "NASDAQ" else s.symbol,
                    multiplier=1.0, min_tick=0.01, long_name=s.long_name,
                ),
                s.price, s.volatility,
            )
        for chain in self.config.option_chains:
            under = stocks[chain.underlying]
            expiries = sorted(set(next_fridays(self.as_of, chain.weeklies))
                              | set(next_monthlies(self.as_of, chain.monthlies)))
            atm = round(under.price / chain.strike_step) * chain.strike_step
            strikes = [atm + i * chain.strike_step
                       for i in range(-chain.strikes_each_side, chain.strikes_each_side + 1)]
            for exp in expiries:
                expiry = exp.strftime("%Y%m%d")
                years = (exp - self.as_of).days / 365.0
                for strike in strikes:
                    for right in ("C", "P"):
                        local = occ_local_symbol(under.symbol, expiry, right, strike)
                        value = black_scholes(under.price, strike, years, under.volatility,
                                              self.config.risk_free_rate, right)
                        self._add(
                            SimContract(
                                con_id=self._derived_con_id(local), symbol=under.symbol,
                                sec_type="OPT", exchange="SMART", primary_exchange="",
                                local_symbol=local, trading_class=under.symbol,
                                multiplier=100.0, min_tick=0.01, expiry=expiry, strike=strike,
                                right=right, long_name=under.long_name, under_con_id=under.con_id,
                            ),
                            max(round_to_tick(value, 0.01), 0.01), under.volatility,
                        )
        for fut in self.config.futures:
            for k, exp in enumerate(next_quarterlies(self.as_of, fut.expiries)):
                local = f"{fut.symbol}{_MONTH_CODES[exp.month]}{exp.year % 10}"
                con_id = KNOWN_FUTURE_CON_IDS.get(local) or self._derived_con_id(
                    f"{fut.symbol}:{exp:%Y%m}")
                self._add(
                    SimContract(
                        con_id=con_id, symbol=fut.symbol, sec_type="FUT", exchange=fut.exchange,
                        primary_exchange=fut.exchange, local_symbol=local,
                        trading_class=fut.symbol, multiplier=fut.multiplier,
                        min_tick=fut.min_tick, expiry=exp.strftime("%Y%m%d"),
                        contract_month=exp.strftime("%Y%m"), long_name=fut.long_name,
                        under_con_id=fut.under_con_id,
                    ),
                    round_to_tick(fut.price * (1 + 0.0125 * k), fut.min_tick), fut.volatility,
                )

    # -- reads

    def __contains__(self, con_id: object) -> bool:
        return con_id in self._by_con_id

    def __len__(self) -> int:
        return len(self._by_con_id)

    def get(self, con_id: int) -> SimContract | None:
        return self._by_con_id.get(con_id)

    def contracts(self) -> list[SimContract]:
        return sorted(self._by_con_id.values(), key=_sort_key)

    def start_price(self, con_id: int) -> float:
        return self._start[con_id]

    def volatility(self, con_id: int) -> float:
        return self._vol[con_id]

    def stock(self, symbol: str) -> SimContract:
        return self.resolve(SimContract(0, symbol, "STK", "SMART", ""))

    def underlyings(self) -> list[SimContract]:
        """Contracts whose price moves on its own (stocks, futures); options follow these."""
        return [c for c in self.contracts() if c.sec_type != "OPT"]

    def find(
        self,
        symbol: str = "",
        sec_type: str = "",
        exchange: str = "",
        currency: str = "",
        expiry: str = "",
        strike: float = 0.0,
        right: str = "",
        local_symbol: str = "",
        trading_class: str = "",
        multiplier: float | str = "",
        con_id: int = 0,
    ) -> list[SimContract]:
        """Every contract matching the given fields; empty/zero fields match anything.

        `expiry` matches a prefix of the expiry (YYYYMMDD) or the contract month (YYYYMM), so
        "202612" finds every December 2026 contract. `exchange` matches "SMART", the routing
        exchange or the primary exchange. Results are sorted by (symbol, secType, expiry,
        strike, right): the first FUT is the front month.
        """
        if con_id:
            c = self._by_con_id.get(con_id)
            candidates: Iterable[SimContract] = [c] if c else []
        else:
            candidates = self._by_con_id.values()
        right = _normalise_right(right)
        exchange = _FUTURE_EXCHANGE_ALIASES.get(exchange.upper(), exchange.upper())
        mult = _parse_multiplier(multiplier)
        out = []
        for c in candidates:
            if symbol and c.symbol != symbol.upper():
                continue
            if sec_type and c.sec_type != sec_type.upper():
                continue
            if exchange and exchange not in {c.exchange, c.primary_exchange} and not (
                    exchange == "SMART" and c.sec_type in ("STK", "OPT")):
                continue
            if currency and c.currency != currency.upper():
                continue
            if expiry and not (c.expiry.startswith(expiry) or c.contract_month == expiry):
                continue
            if strike and abs(c.strike - strike) > 1e-9:
                continue
            if right and c.right != right:
                continue
            if local_symbol and c.local_symbol.replace(" ", "") != local_symbol.replace(" ", ""):
                continue
            if trading_class and c.trading_class != trading_class:
                continue
            if mult and abs(c.multiplier - mult) > 1e-9:
                continue
            out.append(c)
        return sorted(out, key=_sort_key)

    def resolve(self, contract: SimContract) -> SimContract:
        """The one universe contract a (possibly partial) description names.

        A known conId wins (the other fields are not checked, as TWS does when they are
        blank). Raises UnknownContract when nothing or more than one contract matches.
        """
        if contract.con_id:
            found = self._by_con_id.get(contract.con_id)
            if found is None:
                raise UnknownContract(f"unknown conId {contract.con_id}")
            return found
        matches = self.find(
            symbol=contract.symbol, sec_type=contract.sec_type, exchange=contract.exchange,
            currency=contract.currency, expiry=contract.expiry or contract.contract_month,
            strike=contract.strike, right=contract.right, local_symbol=contract.local_symbol,
            trading_class=contract.trading_class,
            multiplier=contract.multiplier if contract.multiplier not in (0.0, 1.0) else "",
        )
        if len(matches) != 1:
            raise UnknownContract(
                f"{len(matches)} contracts match {contract.symbol} {contract.sec_type}", matches)
        return matches[0]

    def front_future(self, symbol: str) -> SimContract:
        futs = self.find(symbol=symbol, sec_type="FUT")
        if not futs:
            raise UnknownContract(f"no future {symbol}")
        return futs[0]

    def option_chain(self, symbol: str, expiry: str = "") -> list[SimContract]:
        return self.find(symbol=symbol, sec_type="OPT", expiry=expiry)

    def sec_def_opt_params(self, underlying_symbol: str, underlying_con_id: int = 0,
                           exchange: str = "") -> list[OptionParams]:
        """reqSecDefOptParams rows: one per exchange ("SMART", "CBOE"), or only `exchange`."""
        chain = self.find(symbol=underlying_symbol, sec_type="OPT")
        if underlying_con_id:
            chain = [c for c in chain if c.under_con_id == underlying_con_id]
        if not chain:
            return []
        rows = []
        for exch in ("SMART", "CBOE"):
            if exchange and exchange.upper() != exch:
                continue
            rows.append(OptionParams(
                exchange=exch, underlying_con_id=chain[0].under_con_id,
                trading_class=chain[0].trading_class, multiplier=f"{chain[0].multiplier:g}",
                expirations=tuple(sorted({c.expiry for c in chain})),
                strikes=tuple(sorted({c.strike for c in chain})),
            ))
        return rows

    def theoretical_price(self, option: SimContract, underlying_price: float,
                          as_of: date | None = None) -> float:
        """Black-Scholes value of an option at `underlying_price`, on its tick (>= 1 tick)."""
        exp = datetime.strptime(option.expiry, "%Y%m%d").date()
        years = (exp - (as_of or self.as_of)).days / 365.0
        value = black_scholes(underlying_price, option.strike, years,
                              self._vol[option.con_id], self.config.risk_free_rate, option.right)
        return max(round_to_tick(value, option.min_tick), option.min_tick)


def _sort_key(c: SimContract) -> tuple:
    return (c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.con_id)


def _normalise_right(right: str) -> str:
    r = (right or "").upper()
    if r in ("", "?", "0"):
        return ""
    return {"CALL": "C", "PUT": "P"}.get(r, r)


def _parse_multiplier(mult: float | str) -> float:
    if mult in ("", None, 0, 0.0):
        return 0.0
    return float(mult)


__all__ = [
    "DEFAULT_FUTURES", "DEFAULT_OPTION_CHAINS", "DEFAULT_STOCKS", "FutureSpec", "OptionChainSpec",
    "OptionParams", "StockSpec", "Universe", "UniverseConfig", "UnknownContract", "black_scholes",
    "next_quarterlies", "occ_local_symbol", "round_to_tick", "third_friday",
]
