"""The contracts: frozen pydantic models for every message that crosses the bus or MQTT.

Agents in other languages code against these (`python run.py schema` prints their JSON Schema).
Prices are floats validated finite and positive, rounded to the contract's tick where it
matters (the governor checks the tick); quantities are whole numbers.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bracketgate.bus.combos import ComboLeg, combo_problems

# --------------------------------------------------------------------------- base


class Message(BaseModel):
    """Every message: immutable, unknown fields are errors, NaN/inf refused in JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="null")


# --------------------------------------------------------------------------- enums


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class SecType(StrEnum):
    STK = "STK"
    OPT = "OPT"
    FUT = "FUT"
    BAG = "BAG"      # a multi-leg combo (bus/combos.py)


class OrderType(StrEnum):
    LMT = "LMT"
    MKT = "MKT"


class TimeInForce(StrEnum):
    DAY = "DAY"
    GTC = "GTC"


class Right(StrEnum):
    C = "C"
    P = "P"


class Verdict(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    INVALID = "invalid"


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class Leg(StrEnum):
    ENTRY = "entry"
    TAKE_PROFIT = "take_profit"
    STOP_LOSS = "stop_loss"


class DenialCode(StrEnum):
    """Every reason a proposal is not approved. `DENIAL_MESSAGES` holds one line for each."""

    # input (verdict invalid)
    MALFORMED_JSON = "MALFORMED_JSON"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    # fail-closed broker state
    BROKER_DISCONNECTED = "BROKER_DISCONNECTED"
    BROKER_CONNECTIVITY_LOST = "BROKER_CONNECTIVITY_LOST"
    NOT_RECONCILED = "NOT_RECONCILED"
    SNAPSHOT_STALE = "SNAPSHOT_STALE"
    PNL_UNKNOWN = "PNL_UNKNOWN"
    ACCOUNT_VALUES_UNKNOWN = "ACCOUNT_VALUES_UNKNOWN"
    QUOTE_UNAVAILABLE = "QUOTE_UNAVAILABLE"
    # trading state
    TRADING_HALTED = "TRADING_HALTED"
    REDUCING_ONLY = "REDUCING_ONLY"
    # geometry
    BRACKET_GEOMETRY = "BRACKET_GEOMETRY"
    PRICE_OFF_TICK = "PRICE_OFF_TICK"
    REWARD_RISK_TOO_LOW = "REWARD_RISK_TOO_LOW"
    STOP_DISTANCE_OUT_OF_BOUNDS = "STOP_DISTANCE_OUT_OF_BOUNDS"
    # size and exposure
    MAX_ORDER_QUANTITY = "MAX_ORDER_QUANTITY"
    MAX_ORDER_NOTIONAL = "MAX_ORDER_NOTIONAL"
    POSITION_LIMIT = "POSITION_LIMIT"
    POSITION_NOTIONAL_LIMIT = "POSITION_NOTIONAL_LIMIT"
    GROSS_EXPOSURE_LIMIT = "GROSS_EXPOSURE_LIMIT"
    NET_EXPOSURE_LIMIT = "NET_EXPOSURE_LIMIT"
    MAX_OPEN_BRACKETS = "MAX_OPEN_BRACKETS"
    MAX_OPEN_BRACKETS_AGENT = "MAX_OPEN_BRACKETS_AGENT"
    # loss
    PER_TRADE_LOSS_LIMIT = "PER_TRADE_LOSS_LIMIT"
    PER_TRADE_LOSS_PCT_LIMIT = "PER_TRADE_LOSS_PCT_LIMIT"
    DAILY_LOSS_LIMIT = "DAILY_LOSS_LIMIT"
    AGENT_LOSS_LIMIT = "AGENT_LOSS_LIMIT"
    AGENT_EXPOSURE_LIMIT = "AGENT_EXPOSURE_LIMIT"
    # lists, hours, rates
    SYMBOL_NOT_ALLOWED = "SYMBOL_NOT_ALLOWED"
    SEC_TYPE_NOT_ALLOWED = "SEC_TYPE_NOT_ALLOWED"
    UNKNOWN_CONTRACT = "UNKNOWN_CONTRACT"
    OUTSIDE_TRADING_HOURS = "OUTSIDE_TRADING_HOURS"
    RATE_LIMITED = "RATE_LIMITED"
    # margin
    INSUFFICIENT_MARGIN = "INSUFFICIENT_MARGIN"
    WHATIF_FAILED = "WHATIF_FAILED"
    # runtime
    OVERLOADED = "OVERLOADED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    PLACEMENT_FAILED = "PLACEMENT_FAILED"
    DUPLICATE_PROPOSAL = "DUPLICATE_PROPOSAL"
    PROPOSAL_EXPIRED = "PROPOSAL_EXPIRED"
    # replays and absurd prices
    RETAINED_PROPOSAL = "RETAINED_PROPOSAL"
    PRICE_OUT_OF_BAND = "PRICE_OUT_OF_BAND"
    # what IB has for this proposal's orderRef (crash recovery, lost journal)
    BRACKET_CANCELLED_AT_IB = "BRACKET_CANCELLED_AT_IB"
    BRACKET_FINISHED_AT_IB = "BRACKET_FINISHED_AT_IB"
    # who may trade (agents file, message authentication)
    UNKNOWN_AGENT = "UNKNOWN_AGENT"
    AGENT_DISABLED = "AGENT_DISABLED"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    SIGNATURE_REPLAYED = "SIGNATURE_REPLAYED"
    # multi-leg combos (BAG)
    UNDEFINED_RISK_COMBO = "UNDEFINED_RISK_COMBO"
    # bracket lifecycle commands (cancel / amend / trail / close)
    UNKNOWN_BRACKET = "UNKNOWN_BRACKET"
    NOT_BRACKET_OWNER = "NOT_BRACKET_OWNER"
    BRACKET_FILLED_USE_CLOSE = "BRACKET_FILLED_USE_CLOSE"
    BRACKET_NOT_WORKING = "BRACKET_NOT_WORKING"
    NOTHING_TO_CLOSE = "NOTHING_TO_CLOSE"
    CLOSE_EXCEEDS_POSITION = "CLOSE_EXCEEDS_POSITION"
    DUPLICATE_COMMAND = "DUPLICATE_COMMAND"
    COMMAND_IN_PROGRESS = "COMMAND_IN_PROGRESS"
    COMMAND_FAILED = "COMMAND_FAILED"


DENIAL_MESSAGES: dict[DenialCode, str] = {
    DenialCode.MALFORMED_JSON: "payload is not a JSON object",
    DenialCode.PAYLOAD_TOO_LARGE: "payload exceeds the maximum size",
    DenialCode.VALIDATION_ERROR: "payload is not a valid proposal",
    DenialCode.BROKER_DISCONNECTED: "not connected to IB",
    DenialCode.BROKER_CONNECTIVITY_LOST: "IB reports lost connectivity (1100) and no fresh data since",
    DenialCode.NOT_RECONCILED: "broker state not reconciled since the last (re)connect",
    DenialCode.SNAPSHOT_STALE: "portfolio snapshot older than the limit",
    DenialCode.PNL_UNKNOWN: "daily P&L unknown (not received, nan or unset)",
    DenialCode.ACCOUNT_VALUES_UNKNOWN: "account values needed for risk are missing or unset",
    DenialCode.QUOTE_UNAVAILABLE:
        "no current quote to price a market entry or centre the price bands",
    DenialCode.TRADING_HALTED: "trading is HALTED",
    DenialCode.REDUCING_ONLY: "trading is REDUCING: only position-reducing proposals are admitted",
    DenialCode.BRACKET_GEOMETRY: "bracket prices are not on the right sides of the entry",
    DenialCode.PRICE_OFF_TICK: "a price is not a multiple of the contract's minimum tick",
    DenialCode.REWARD_RISK_TOO_LOW: "reward:risk below the minimum",
    DenialCode.STOP_DISTANCE_OUT_OF_BOUNDS: "stop distance outside the allowed bounds",
    DenialCode.MAX_ORDER_QUANTITY: "order quantity above the maximum",
    DenialCode.MAX_ORDER_NOTIONAL: "order notional above the maximum",
    DenialCode.POSITION_LIMIT: "resulting position (with pending brackets) above the limit",
    DenialCode.POSITION_NOTIONAL_LIMIT: "resulting position notional above the limit",
    DenialCode.GROSS_EXPOSURE_LIMIT: "gross exposure above the limit (% of NetLiquidation)",
    DenialCode.NET_EXPOSURE_LIMIT: "net exposure above the limit (% of NetLiquidation)",
    DenialCode.MAX_OPEN_BRACKETS: "too many open brackets",
    DenialCode.MAX_OPEN_BRACKETS_AGENT: "too many open brackets for this agent",
    DenialCode.PER_TRADE_LOSS_LIMIT: "bracket worst-case loss above the per-trade limit",
    DenialCode.PER_TRADE_LOSS_PCT_LIMIT: "bracket worst-case loss above the per-trade % of NetLiquidation",
    DenialCode.DAILY_LOSS_LIMIT: "bracket worst-case loss exceeds the remaining daily loss budget",
    DenialCode.AGENT_LOSS_LIMIT: "bracket worst-case loss exceeds the agent's remaining loss budget",
    DenialCode.AGENT_EXPOSURE_LIMIT: "agent exposure above its limit",
    DenialCode.SYMBOL_NOT_ALLOWED: "symbol not allowed",
    DenialCode.SEC_TYPE_NOT_ALLOWED: "security type not allowed",
    DenialCode.UNKNOWN_CONTRACT: "IB has no such contract",
    DenialCode.OUTSIDE_TRADING_HOURS: "outside the trading-hours window",
    DenialCode.RATE_LIMITED: "proposal or order rate above the limit",
    DenialCode.INSUFFICIENT_MARGIN: "initial margin change does not fit AvailableFunds with the cushion",
    DenialCode.WHATIF_FAILED: "IB what-if failed or timed out",
    DenialCode.OVERLOADED: "intake queue full",
    DenialCode.SHUTTING_DOWN: "daemon is shutting down",
    DenialCode.PLACEMENT_FAILED: "approved bracket could not be sent to IB",
    DenialCode.DUPLICATE_PROPOSAL: "proposal_id already used with different content",
    DenialCode.PROPOSAL_EXPIRED: "proposal expired before it could be placed",
    DenialCode.RETAINED_PROPOSAL: "a retained proposal is a replay: never placed (publish with retain=false)",
    DenialCode.PRICE_OUT_OF_BAND: "a price is outside the allowed band around the current quote",
    DenialCode.BRACKET_CANCELLED_AT_IB: "IB has this proposal's bracket (orderRef) cancelled; not placed again",
    DenialCode.BRACKET_FINISHED_AT_IB: "IB already traded this proposal's bracket (orderRef); never placed twice",
    DenialCode.UNKNOWN_AGENT: "agent_id is not in the agents file",
    DenialCode.AGENT_DISABLED: "agent is disabled in the agents file",
    DenialCode.AUTH_REQUIRED: "this agent's messages must be signed (HMAC) and this one is not",
    DenialCode.BAD_SIGNATURE: "the message's signature does not verify with the agent's key",
    DenialCode.SIGNATURE_REPLAYED: "the signed message is outside the replay window or was seen before",
    DenialCode.UNDEFINED_RISK_COMBO:
        "combo's loss is unbounded (e.g. a short straddle) and the limits file does not allow undefined-risk combos",
    DenialCode.UNKNOWN_BRACKET: "no bracket is known for this proposal_id",
    DenialCode.NOT_BRACKET_OWNER: "only the agent that opened a bracket may change it",
    DenialCode.BRACKET_FILLED_USE_CLOSE:
        "the entry has filled: cancelling would leave the position unprotected; use close",
    DenialCode.BRACKET_NOT_WORKING: "the bracket is finished at IB: nothing left to change",
    DenialCode.NOTHING_TO_CLOSE: "the bracket holds no position to close",
    DenialCode.CLOSE_EXCEEDS_POSITION: "close quantity above what the bracket holds",
    DenialCode.DUPLICATE_COMMAND: "command_id already used with different content",
    DenialCode.COMMAND_IN_PROGRESS: "another command on this bracket is still in flight",
    DenialCode.COMMAND_FAILED: "IB refused or did not confirm the change; the bracket is as IB reports it",
}


# --------------------------------------------------------------------------- field types

ProposalId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
AgentId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]
Symbol = Annotated[str, Field(min_length=1, max_length=24, pattern=r"^[A-Z0-9][A-Z0-9.\- ]*$")]
# No listed instrument trades near a billion per unit (BRK.A: ~7e5); past that a price is a typo
# or an attack, and bounded it keeps every product the governor forms (x quantity x multiplier,
# / tick) far from float overflow. Prices absurd for the instrument are the price bands' job.
MAX_PRICE = 1e9
Price = Annotated[float, Field(gt=0, le=MAX_PRICE, allow_inf_nan=False, strict=True)]
MAX_QUANTITY = 10_000_000
Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True)]
# a proposal's entry / exit price: > 0, except a combo's (BAG), which may be a net credit (< 0);
# never 0, NaN or inf
BracketPrice = Annotated[float, Field(
    ge=-MAX_PRICE, le=MAX_PRICE, allow_inf_nan=False, strict=True,
    description="> 0; a combo's (sec_type BAG) net price may be negative (a credit), never 0")]


# --------------------------------------------------------------------------- proposals


class TradeProposal(Message):
    """A strategy agent's bracket: entry + take-profit + stop-loss, as ONE risk unit.

    `agent_id` comes from the MQTT topic; a payload may omit it (the bridge fills it in) but may
    not contradict it. `proposal_id` is the idempotency key and travels to IB as orderRef.
    """

    proposal_id: ProposalId
    agent_id: AgentId
    symbol: Symbol
    sec_type: SecType = SecType.STK
    exchange: Annotated[str, Field(min_length=1, max_length=16)] = "SMART"
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    side: Side
    quantity: Quantity
    order_type: OrderType = OrderType.LMT
    limit_price: BracketPrice | None = None
    take_profit: BracketPrice
    stop_loss: BracketPrice
    tif: TimeInForce = TimeInForce.DAY
    # options: expiry YYYYMMDD + strike + right; futures: expiry YYYYMM or "front"
    expiry: Annotated[str, Field(pattern=r"^(\d{6}|\d{8}|front)$")] | None = None
    strike: Price | None = None
    right: Right | None = None
    # cancel the entry if it has not filled this many seconds after placement
    cancel_entry_after_s: Annotated[float, Field(gt=0, le=7 * 86400, allow_inf_nan=False)] | None = None
    # when the agent made it (ISO-8601 with an offset, e.g. "2026-11-20T15:00:00Z"): an older
    # proposal than the limits' max_proposal_age_s is refused PROPOSAL_EXPIRED
    created_at: AwareDatetime | None = None
    # a combo (sec_type BAG): 2..4 legs on `symbol`, prices are combo prices (bus/combos.py)
    legs: Annotated[list[ComboLeg], Field(min_length=2, max_length=4)] | None = None

    @field_validator("limit_price", "take_profit", "stop_loss")
    @classmethod
    def _price_sign(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and v <= 0 and (v == 0 or info.data.get("sec_type") is not SecType.BAG):
            raise ValueError("must be > 0 (only a combo's, sec_type BAG, may be a negative credit)"
                             if v < 0 else "must not be 0")
        return v

    @model_validator(mode="after")
    def _shape(self) -> TradeProposal:
        if (self.sec_type is SecType.BAG) != (self.legs is not None):
            raise ValueError("legs: a combo is sec_type BAG with legs; only a combo has legs")
        if self.order_type is OrderType.LMT and self.limit_price is None:
            raise ValueError("limit_price is required for order_type LMT")
        if self.order_type is OrderType.MKT and self.limit_price is not None:
            raise ValueError("limit_price must be omitted for order_type MKT")
        if self.sec_type is SecType.OPT:
            if self.expiry is None or len(self.expiry) != 8 or self.strike is None or self.right is None:
                raise ValueError("options need expiry (YYYYMMDD), strike and right")
        elif self.sec_type is SecType.FUT:
            if self.expiry is None or len(self.expiry) == 8:
                raise ValueError("futures need expiry (YYYYMM) or 'front'")
            if self.strike is not None or self.right is not None:
                raise ValueError("futures take no strike or right")
        elif self.sec_type is SecType.BAG:
            if self.expiry is not None or self.strike is not None or self.right is not None:
                raise ValueError("a combo takes expiry, strike and right on its legs only")
            problems = combo_problems(self.legs or [], self.currency)
            if problems:
                raise ValueError("; ".join(problems))
        else:
            if self.expiry is not None or self.strike is not None or self.right is not None:
                raise ValueError("stocks take no expiry, strike or right")
        return self

    def same_request(self, other: TradeProposal) -> bool:
        """True when `other` is a re-delivery of this proposal (same content)."""
        return self.model_dump() == other.model_dump()


# --------------------------------------------------------------------------- decisions


class Reason(Message):
    code: DenialCode
    message: str
    limit: float | str | None = None
    value: float | str | None = None
    field: str | None = None
    # which bound a combo's worst case is (agents/combo_risk.py): "stop" or "structure"
    bound: Literal["stop", "structure"] | None = None

    @field_validator("limit", "value")
    @classmethod
    def _finite_or_text(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v


class BracketOrderIds(Message):
    entry: int
    take_profit: int
    stop_loss: int


class WorstCase(Message):
    """An approval's risk as the gate counted it: the bracket's worst-case loss and the bound that
    gave it ("stop": quantity x |entry - stop| x multiplier + slippage; "structure": a combo's own
    maximum loss, when that is the lower)."""

    loss: float
    bound: Literal["stop", "structure"]


class RiskDecision(Message):
    proposal_id: str
    agent_id: str
    verdict: Verdict
    reasons: list[Reason] = Field(default_factory=list)
    order_ids: BracketOrderIds | None = None
    trading_state: TradingState | None = None
    ts: datetime
    # approvals decided by the gate: the worst case counted against the loss budgets
    worst_case: WorstCase | None = None


class ResolvedContract(Message):
    """What IB confirmed about a proposal's instrument (from contract details)."""

    con_id: int
    symbol: str
    sec_type: SecType
    exchange: str
    currency: str
    multiplier: float = 1.0
    min_tick: float = 0.01
    expiry: str | None = None
    strike: float | None = None
    right: Right | None = None
    local_symbol: str | None = None
    trading_class: str | None = None
    # a combo (BAG): its legs as IB confirmed them, in the proposal's order; con_id is then the
    # daemon's key for the combo (bus/combos.py combo_con_id), not an IB conId
    legs: list[ResolvedContract] | None = None


class ApprovedBracket(Message):
    """An approved proposal on its way to IB. orderRef = proposal_id on every leg."""

    proposal: TradeProposal
    contract: ResolvedContract | None = None
    approved_at: datetime

    @property
    def order_ref(self) -> str:
        return self.proposal.proposal_id


class PriorPlacement(Message):
    """What IB has (or had) for a proposal's orderRef when the gate meets a proposal_id it has no
    decision for (a restart between placing and journaling the decision, a lost journal). The
    gate answers from it and never decides such a proposal afresh:
      placed     every leg is (or was) at IB, ids known -> approved with those ids
      cancelled  IB holds the legs cancelled (e.g. a send cut by a crash)  -> rejected
      finished   IB traded the bracket, ids unknown (completed orders)     -> rejected
      not_at_ib  an earlier run recorded the intent, IB never got it       -> rejected
    """

    proposal_id: str
    outcome: Literal["placed", "cancelled", "finished", "not_at_ib"]
    order_ids: BracketOrderIds | None = None
    detail: str = ""


class PlacementResult(Message):
    proposal_id: str
    ok: bool
    order_ids: BracketOrderIds | None = None
    error: str | None = None
    code: int | None = None


# --------------------------------------------------------------------------- order events


class OrderEvent(Message):
    """One step of one leg's life at IB (status change, error, cancel)."""

    proposal_id: str
    agent_id: str
    order_id: int
    leg: Leg
    symbol: str
    status: str
    filled: float = 0.0
    remaining: float = 0.0
    avg_fill_price: float | None = None
    perm_id: int | None = None
    parent_id: int | None = None
    code: int | None = None
    message: str | None = None
    ts: datetime


class Fill(Message):
    proposal_id: str
    agent_id: str
    order_id: int
    leg: Leg
    exec_id: str
    symbol: str
    con_id: int = 0                  # IB's contract id (0 = not known)
    side: Side
    quantity: float
    price: float
    commission: float | None = None
    realized_pnl: float | None = None
    exec_time: datetime | None = None
    ts: datetime
    # the executed contract's type: a combo fills as one BAG execution (quantity in combos, the
    # net price) and one execution per leg (its conId, quantity, price, commission, P&L)
    sec_type: str | None = None
    # realized P&L of this bracket so far, over all its fills (every leg of a combo)
    bracket_realized_pnl: float | None = None


# --------------------------------------------------------------------------- portfolio


class Position(Message):
    con_id: int
    symbol: str
    sec_type: str
    quantity: float
    avg_cost: float
    multiplier: float = 1.0
    market_price: float | None = None
    market_value: float | None = None
    unrealized_pnl: float | None = None
    realized_pnl: float | None = None
    expiry: str | None = None
    strike: float | None = None
    right: str | None = None


class WorkingOrder(Message):
    order_id: int
    perm_id: int | None = None
    parent_id: int | None = None
    order_ref: str | None = None
    symbol: str
    con_id: int = 0                  # IB's contract id (0 = not known)
    multiplier: float | None = None  # the contract's (None = not known)
    side: Side
    order_type: str
    quantity: float
    remaining: float
    limit_price: float | None = None
    stop_price: float | None = None
    status: str


class PnL(Message):
    """Account P&L from reqPnL. None = not received, nan or IB's unset value: unknown."""

    daily: float | None = None
    unrealized: float | None = None
    realized: float | None = None

    @property
    def known(self) -> bool:
        return self.daily is not None


class Quote(Message):
    """The latest bid / ask / last of ONE contract: a stock and its options, or two expiries of
    one future, are different contracts with different quotes."""

    con_id: int                      # IB's contract id: the key of PortfolioSnapshot.quotes
    symbol: str
    bid: float | None = None
    ask: float | None = None
    last: float | None = None
    ts: datetime


class ConnectionState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"          # socket up, not yet reconciled
    CONNECTIVITY_LOST = "connectivity_lost"  # 1100 received, socket up
    READY = "ready"                  # connected + reconciled


class PortfolioSnapshot(Message):
    ts: datetime
    account: str | None = None
    connection: ConnectionState = ConnectionState.DISCONNECTED
    reconciled: bool = False
    account_values: dict[str, float] = Field(default_factory=dict)
    account_values_ts: datetime | None = None
    positions: list[Position] = Field(default_factory=list)
    positions_ts: datetime | None = None
    pnl: PnL = Field(default_factory=PnL)
    pnl_ts: datetime | None = None
    working_orders: list[WorkingOrder] = Field(default_factory=list)
    # conId -> Quote (JSON object keys are the conId in decimal: {"265598": {...}})
    quotes: dict[int, Quote] = Field(default_factory=dict, json_schema_extra={
        "propertyNames": {"pattern": r"^-?[0-9]+$"},
        "description": "conId (decimal) -> the latest quote of that contract"})

    @field_validator("quotes")
    @classmethod
    def _quotes_keyed_by_con_id(cls, v: dict[int, Quote]) -> dict[int, Quote]:
        wrong = [k for k, q in v.items() if q.con_id != k]
        if wrong:
            raise ValueError(f"quotes must be keyed by their con_id; not so for keys {wrong[:5]}")
        return v

    def age(self, now: datetime) -> float:
        """Seconds since the snapshot was taken."""
        return (now - self.ts).total_seconds()

    def data_age(self, now: datetime) -> float:
        """Seconds since the OLDEST of the parts risk needs was last updated (inf if missing)."""
        stamps = [self.account_values_ts, self.pnl_ts, self.positions_ts]
        if any(s is None for s in stamps):
            return math.inf
        return max((now - s).total_seconds() for s in stamps if s is not None)

    def position(self, symbol: str, sec_type: str = "STK") -> float:
        return sum(p.quantity for p in self.positions if p.symbol == symbol and p.sec_type == sec_type)

    @property
    def net_liquidation(self) -> float | None:
        return self.account_values.get("NetLiquidation")


# --------------------------------------------------------------------------- state and status


class TradingStateChanged(Message):
    old: TradingState
    new: TradingState
    reason: str
    by: Literal["operator", "auto", "startup"]
    ts: datetime


class ControlCommand(Message):
    action: Literal["halt", "reduce", "resume", "flatten"]
    reason: str = ""
    by: str = "operator"
    # flatten only (agents/flatten.py): scoped to one agent's / one symbol's brackets
    agent_id: AgentId | None = None
    symbol: Symbol | None = None

    @model_validator(mode="after")
    def _scope(self) -> ControlCommand:
        if self.action != "flatten" and (self.agent_id is not None or self.symbol is not None):
            raise ValueError("agent_id / symbol scope only a flatten")
        return self


class Status(Message):
    state: Literal["starting", "online", "degraded", "stopping", "offline"]
    mode: Literal["default", "paper", "live"] | None = None
    trading_state: TradingState | None = None
    connection: ConnectionState | None = None
    detail: str | None = None
    ts: datetime
    # flatten --agent/--symbol's scoped halts in force ("agent A", "symbol X"), until resume
    halted_scopes: list[str] | None = None
    # how the daemon is doing (core/metrics.py), as of `ts`; None = not known yet
    started_at: datetime | None = None
    uptime_s: float | None = None
    heartbeat_rtt_ms: float | None = None     # the last IB heartbeat's round trip
    ib_reconnects: int | None = None
    mqtt_reconnects: int | None = None
    journal_lag_ms: float | None = None       # the last journal commit: oldest write's wait
    http: str | None = None                   # the dashboard / metrics URL, when serving


class Alert(Message):
    """Something a person must look at (unprotected fill, reconcile mismatch, id regression)."""

    code: str
    message: str
    proposal_id: str | None = None
    agent_id: str | None = None
    order_id: int | None = None
    ts: datetime


# --------------------------------------------------------------------------- broker level
# What adapters/ib.py publishes about the one IB connection. Internal to the daemon: the
# ExecutionAgent turns these into agent-level OrderEvent/Fill; the PortfolioMonitor reads the
# adapter's converted state when told something changed.


class BrokerConnection(Message):
    state: ConnectionState
    code: int | None = None
    message: str = ""
    ts: datetime


class BrokerOrderUpdate(Message):
    """An order's state at IB (from openOrder/orderStatus/error), for any order of this account."""

    order_id: int
    perm_id: int | None = None
    client_id: int | None = None
    parent_id: int | None = None
    order_ref: str = ""
    symbol: str = ""
    side: Side | None = None
    order_type: str = ""
    quantity: float = 0.0
    limit_price: float | None = None
    stop_price: float | None = None
    status: str
    filled: float = 0.0
    remaining: float = 0.0
    avg_fill_price: float | None = None
    code: int | None = None
    message: str | None = None
    ts: datetime


class BrokerExecution(Message):
    """One execution (with its commission when IB has sent it)."""

    exec_id: str
    order_id: int
    perm_id: int | None = None
    order_ref: str = ""
    con_id: int = 0
    symbol: str
    sec_type: str = "STK"
    side: Side
    quantity: float
    price: float
    cum_qty: float = 0.0
    avg_price: float = 0.0
    exec_time: datetime | None = None
    commission: float | None = None
    realized_pnl: float | None = None
    ts: datetime


class BrokerDataChanged(Message):
    """Account values, positions, P&L, quotes or working orders changed at the adapter."""

    kind: Literal["account", "positions", "pnl", "quotes", "orders", "connection"]
    ts: datetime


# every model exported by `python run.py schema`
SCHEMA_MODELS: tuple[type[Message], ...] = (
    TradeProposal, RiskDecision, Reason, ApprovedBracket, PlacementResult, OrderEvent, Fill,
    PortfolioSnapshot, TradingStateChanged, ControlCommand, Status, Alert,
)


def json_schemas() -> dict[str, Any]:
    from bracketgate.bus.commands import command_schemas   # bracket lifecycle commands (issue 13)

    return {**{m.__name__: m.model_json_schema() for m in SCHEMA_MODELS}, **command_schemas()}
