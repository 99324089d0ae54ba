"""Paper TWS market: deterministic seeded price paths and quotes (bid/ask/sizes) around the last.

`PriceFeed.step()` moves every underlying (stocks, futures) one step of a geometric random walk
and re-values its options from the new underlying price; the server calls it on a timer and
hands each move to `Brokerage.set_price`. Each contract draws from its own RNG seeded with
`f"{seed}:{conId}"`, so a path never depends on which other contracts exist or how often
`quote()` is called. No clock, no I/O.

Quote model (the engine uses the same): bid = last - half spread, ask = last + half spread,
half spread = `spread_ticks` ticks (1 by default; 2 for options).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from bracketgate.sim.model import SimContract
from bracketgate.sim.universe import Universe, round_to_tick

STEPS_PER_YEAR = 252 * 6.5 * 3600  # one step = one second of a trading year


def half_spread(contract: SimContract) -> float:
    """Half the bid/ask spread: one tick, two for options. MKT orders pay it."""
    return contract.min_tick * (2 if contract.sec_type == "OPT" else 1)


@dataclass(frozen=True)
class Quote:
    con_id: int
    bid: float
    ask: float
    last: float
    bid_size: float
    ask_size: float
    last_size: float


class PriceFeed:
    """A seeded random walk per underlying. `step()` -> [(conId, new price)], deterministic."""

    def __init__(self, universe: Universe, seed: int = 7, step_seconds: float = 1.0,
                 vol_scale: float = 1.0) -> None:
        self.universe = universe
        self.seed = seed
        self.step_seconds = step_seconds
        self.vol_scale = vol_scale
        self.prices: dict[int, float] = {}     # conId -> last price, underlyings and options
        self.steps = 0
        self._rngs: dict[int, random.Random] = {}
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._rngs = {}
        self.prices = {c.con_id: self.universe.start_price(c.con_id)
                       for c in self.universe.contracts()}

    def _rng(self, con_id: int) -> random.Random:
        rng = self._rngs.get(con_id)
        if rng is None:
            rng = self._rngs[con_id] = random.Random(f"{self.seed}:{con_id}")
        return rng

    def price(self, con_id: int) -> float:
        return self.prices[con_id]

    def step(self, include_options: bool = True) -> list[tuple[int, float]]:
        """Move every underlying one step; returns the contracts whose price changed, in conId
        order of the underlyings, each followed by its options (when `include_options`)."""
        self.steps += 1
        moves: list[tuple[int, float]] = []
        for c in self.universe.underlyings():
            sigma = (self.universe.volatility(c.con_id) * self.vol_scale
                     * math.sqrt(self.step_seconds / STEPS_PER_YEAR))
            old = self.prices[c.con_id]
            new = round_to_tick(old * math.exp(sigma * self._rng(c.con_id).gauss(0.0, 1.0)),
                                c.min_tick)
            new = max(new, c.min_tick)
            if new == old:
                continue
            self.prices[c.con_id] = new
            moves.append((c.con_id, new))
            if include_options and c.sec_type == "STK":
                for opt in self.universe.find(symbol=c.symbol, sec_type="OPT"):
                    value = self.universe.theoretical_price(opt, new)
                    if value != self.prices[opt.con_id]:
                        self.prices[opt.con_id] = value
                        moves.append((opt.con_id, value))
        return moves

    def quote(self, con_id: int, last: float | None = None) -> Quote:
        """Bid/ask around `last` (default: this feed's price) with seeded sizes."""
        contract = self.universe.get(con_id)
        if contract is None:
            raise KeyError(con_id)
        px = self.prices[con_id] if last is None else last
        half = half_spread(contract)
        bid = max(round_to_tick(px - half, contract.min_tick), contract.min_tick)
        ask = round_to_tick(px + half, contract.min_tick)
        # sizes from a separate stream so quoting never shifts the price path
        rng = random.Random(f"{self.seed}:{con_id}:size:{self.steps}")
        if contract.sec_type == "STK":
            sizes = [100 * rng.randint(1, 20) for _ in range(3)]
        else:
            sizes = [rng.randint(1, 50) for _ in range(3)]
        return Quote(con_id, bid, ask, px, *map(float, sizes))
