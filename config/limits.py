"""Risk limits: one frozen model loaded from a TOML file; a typo in a limit is an error at start.

`load_limits(path)` reads the file with tomllib and validates it (unknown keys are errors).
Top-level keys are the global limits; `[agent]` holds every agent's default budget,
`[agents.<agent_id>]` overrides some of it for one agent, `[symbols.<SYMBOL>]` overrides the
size limits (and contract facts: multiplier, min tick) for one symbol, the optional
`[trading_hours]` restricts when proposals are admitted, and `[bracket_policy]` fills in the
take-profit / stop-loss an order file's row leaves out (core/order_files.py; not a gate check).
Percentages are in percent (0.5 = 0.5 %).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bracketgate.bus.errors import ConfigError
from bracketgate.bus.messages import SecType

Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosMoney = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Pct = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SharePct = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]

DEFAULT_LIMITS_PATH = Path(__file__).with_name("limits.default.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AgentLimits(_Strict):
    """One agent's budget. `[agent]` in the file sets the default for every agent."""

    loss_limit: Money = 5_000.0            # realized loss today + open brackets' worst case
    exposure_limit: Money = 300_000.0      # |position notional| + pending entry notional
    max_open_brackets: Annotated[int, Field(ge=0)] = 10
    max_proposals_per_s: Rate = 5.0        # token bucket: sustained rate ...
    proposal_burst: Annotated[int, Field(ge=1)] = 10  # ... and bucket size
    # fair share of the IB pacer: the most of its order-message throughput (and of its idle
    # headroom) this agent's approvals may take, so one agent cannot exhaust it
    max_order_share_pct: SharePct = 50.0


class AgentOverride(_Strict):
    """`[agents.<agent_id>]`: any subset of AgentLimits, applied over `[agent]`."""

    loss_limit: Money | None = None
    exposure_limit: Money | None = None
    max_open_brackets: Annotated[int, Field(ge=0)] | None = None
    max_proposals_per_s: Rate | None = None
    proposal_burst: Annotated[int, Field(ge=1)] | None = None
    max_order_share_pct: SharePct | None = None


class SymbolOverride(_Strict):
    """`[symbols.<SYMBOL>]`: size limits and contract facts for one symbol."""

    multiplier: PosMoney | None = None
    min_tick: PosMoney | None = None
    max_order_quantity: Annotated[int, Field(ge=0)] | None = None
    max_order_notional: Money | None = None
    max_position_units: Money | None = None
    max_position_notional: Money | None = None


class TradingHours(_Strict):
    """Proposals are admitted only on `weekdays` (0 = Monday) between start and end, local time."""

    start: time = time(9, 30)
    end: time = time(16, 0)
    weekdays: list[Annotated[int, Field(ge=0, le=6)]] = Field(default_factory=lambda: [0, 1, 2, 3, 4])

    @model_validator(mode="after")
    def _ordered(self) -> TradingHours:
        if self.end <= self.start:
            raise ValueError("trading_hours.end must be after trading_hours.start")
        return self


class BracketPolicy(_Strict):
    """`[bracket_policy]`: exits for an order file's row that gives none (core/order_files.py).

    The stop lies `stop_distance_pct` % of the entry away (on the losing side), the take-profit
    `reward_risk` times that distance on the winning side; both on the contract's tick (the stop
    at least one tick away, the take-profit rounded outwards so reward:risk never falls below).
    Only the order-file command uses it: the gate checks the result like any other proposal.
    """

    stop_distance_pct: Annotated[float, Field(gt=0, lt=100, allow_inf_nan=False)] = 1.0
    reward_risk: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 2.0


@dataclass(frozen=True, slots=True)
class SymbolLimits:
    """The size limits that apply to one symbol: global limits with its override applied."""

    multiplier: float | None
    min_tick: float | None
    max_order_quantity: int
    max_order_notional: float
    max_position_units: float
    max_position_notional: float


class RiskLimits(_Strict):
    """Every limit the RiskGovernor enforces. Defaults suit a $1M paper account."""

    # -- broker-state freshness (fail-closed)
    max_snapshot_age_s: Seconds = 10.0
    max_quote_age_s: Seconds = 15.0
    # -- loss
    daily_loss_limit: Money = 20_000.0
    per_trade_loss_limit: Money = 5_000.0
    per_trade_loss_pct: Pct = 0.5
    max_drawdown_pct: Pct | None = 3.0     # from today's NetLiquidation peak -> REDUCING
    slippage_ticks: Money = 2.0            # added to the stop leg (and a MKT entry) per unit
    slippage_pct: Pct = 0.0                # idem, in % of entry; both add up
    # -- bracket geometry
    default_min_tick: PosMoney = 0.01
    futures_min_tick: PosMoney = 0.25
    tick_tolerance: Annotated[float, Field(ge=0, lt=0.5)] = 1e-6   # fraction of one tick
    min_reward_risk: Money = 1.0
    min_stop_distance_pct: Pct = 0.1
    max_stop_distance_pct: Pct = 10.0
    option_multiplier: PosMoney = 100.0   # when no contract_info and no symbol override
    # -- price bands around the current quote (its mid, else its last): absurd prices refused.
    # A resting entry a fifth away from the market (BUY at 200 with the stock at 230) is normal
    # use, and exits lie beyond the entry; 1,000x the quote or 5e-324 is never meant.
    price_bands: bool = True               # false: no band check, and no quote needed for LMT
    entry_band_pct: Pct = 20.0             # limit_price within 20 % of the quote
    exit_band_pct: Pct = 50.0              # take_profit and stop_loss within 50 % of it
    # -- size and exposure
    max_order_quantity: Annotated[int, Field(ge=0)] = 5_000
    max_order_notional: Money = 200_000.0
    max_position_units: Money = 10_000.0
    max_position_notional: Money = 300_000.0
    max_gross_exposure_pct: Pct = 200.0
    max_net_exposure_pct: Pct = 100.0
    max_open_brackets: Annotated[int, Field(ge=0)] = 40
    # -- lists
    allowed_symbols: list[str] = Field(default_factory=list)    # empty = any symbol
    denied_symbols: list[str] = Field(default_factory=list)
    allowed_sec_types: list[SecType] = Field(default_factory=lambda: list(SecType))
    # combos (BAG) whose loss is unbounded (a short straddle, any net short naked option) are
    # refused UNDEFINED_RISK_COMBO unless this is true (agents/combo_risk.py)
    allow_undefined_risk_combos: bool = False
    # -- rates (token buckets on the monotonic clock)
    max_proposals_per_s: Rate = 50.0
    proposal_burst: Annotated[int, Field(ge=1)] = 100
    max_order_msgs_per_s: Rate = 45.0      # a bracket is 3 order messages; IB's cap is 50/s
    # -- margin (IB what-if after a provisional approval) and placement
    margin_cushion_pct: Annotated[float, Field(ge=0, lt=100)] = 10.0
    whatif_timeout_s: Seconds = 5.0
    placement_timeout_s: Seconds = 10.0
    # -- idempotency: decisions held in memory, a hot cache (oldest forgotten first; open
    # brackets never); every id is answered for proposal_id_retention_days from the journal
    max_remembered_decisions: Annotated[int, Field(ge=1)] = 8192
    # -- replays: a proposal older than this is refused PROPOSAL_EXPIRED (age from its
    # created_at, else from when it was first journaled); a created_at further in the future
    # than the skew allowance is refused too; ids are remembered (journal) for the retention
    max_proposal_age_s: Seconds = 60.0
    max_clock_skew_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 5.0
    proposal_id_retention_days: Annotated[float, Field(gt=0, le=3650, allow_inf_nan=False)] = 7.0
    # -- journal retention: events older than this are deleted (Journal.compact, hourly), except
    # what an open intent or a remembered id still needs; at least proposal_id_retention_days
    journal_retention_days: Annotated[float, Field(gt=0, le=3650, allow_inf_nan=False)] = 14.0
    # -- the trading day (daily counters roll at local midnight) and optional hours window
    timezone: str = "America/New_York"
    trading_hours: TradingHours | None = None
    # -- exits for order-file rows without take-profit / stop-loss (not a check of the gate)
    bracket_policy: BracketPolicy = Field(default_factory=BracketPolicy)
    # -- per-agent and per-symbol
    agent: AgentLimits = Field(default_factory=AgentLimits)
    agents: dict[str, AgentOverride] = Field(default_factory=dict)
    symbols: dict[str, SymbolOverride] = Field(default_factory=dict)

    @field_validator("allowed_symbols", "denied_symbols")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s != s.upper() or not s]
        if bad:
            raise ValueError(f"symbols are upper case: {bad}")
        return v

    @field_validator("symbols")
    @classmethod
    def _upper_keys(cls, v: dict[str, SymbolOverride]) -> dict[str, SymbolOverride]:
        bad = [s for s in v if s != s.upper()]
        if bad:
            raise ValueError(f"symbols are upper case: {bad}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown timezone {v!r}") from e
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RiskLimits:
        if self.min_stop_distance_pct > self.max_stop_distance_pct:
            raise ValueError("min_stop_distance_pct must be <= max_stop_distance_pct")
        if self.max_order_msgs_per_s < 3:
            raise ValueError("max_order_msgs_per_s must admit one bracket (3 messages)")
        if self.journal_retention_days < self.proposal_id_retention_days:
            raise ValueError("journal_retention_days must be >= proposal_id_retention_days (a"
                             " remembered id is answered from its journaled events)")
        return self

    # ------------------------------------------------------------------ resolved lookups

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def for_agent(self, agent_id: str) -> AgentLimits:
        over = self.agents.get(agent_id)
        if over is None:
            return self.agent
        return self.agent.model_copy(update=over.model_dump(exclude_none=True))

    def min_tick_for(self, symbol: str, sec_type: str = "STK") -> float:
        """The tick a price of `symbol` is rounded to when IB's contract details are not at hand:
        its `[symbols]` override, else futures_min_tick for a future, else default_min_tick."""
        over = self.symbols.get(symbol)
        if over is not None and over.min_tick is not None:
            return over.min_tick
        return self.futures_min_tick if str(sec_type) == "FUT" else self.default_min_tick

    def for_symbol(self, symbol: str) -> SymbolLimits:
        over = self.symbols.get(symbol) or SymbolOverride()

        def pick(name: str) -> Any:
            v = getattr(over, name)
            return getattr(self, name) if v is None else v

        return SymbolLimits(
            multiplier=over.multiplier,
            min_tick=over.min_tick,
            max_order_quantity=pick("max_order_quantity"),
            max_order_notional=pick("max_order_notional"),
            max_position_units=pick("max_position_units"),
            max_position_notional=pick("max_position_notional"),
        )


def parse_limits(data: dict[str, Any], *, source: str = "<dict>") -> RiskLimits:
    try:
        return RiskLimits.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"invalid risk limits in {source}: {problems}") from e


def load_limits(path: str | Path) -> RiskLimits:
    """Read and validate a limits TOML file. Raises ConfigError (never returns half a file)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read risk limits {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"risk limits {path} is not valid TOML: {e}") from e
    return parse_limits(data, source=str(path))


def diff_limits(old: RiskLimits, new: RiskLimits) -> list[str]:
    """Human lines `key: old -> new` for every leaf that changed (nested keys dotted)."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    a, b = flat(old.model_dump(mode="json")), flat(new.model_dump(mode="json"))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, "<unset>") != b.get(k, "<unset>")]
