"""Bracket lifecycle commands (issue 13): what an agent may do to a bracket it opened.

In   {prefix}/commands/{agent_id}  QoS 1   one of (discriminated on `action`):
       {"command_id": "c-1", "action": "cancel", "proposal_id": "p-1"}
       {"command_id": "c-2", "action": "amend",  "proposal_id": "p-1",
        "stop_loss"?: 101.5, "take_profit"?: 110.0, "quantity"?: 5}        (at least one)
       {"command_id": "c-3", "action": "trail",  "proposal_id": "p-1", "amount": 0.5}
                                                            (or "percent": 1.0; exactly one)
       {"command_id": "c-4", "action": "close",  "proposal_id": "p-1", "quantity"?: 5}
Out  {prefix}/decisions/{agent_id}: a CommandAnswer (it carries `command_id`, a proposal
     decision does not).

`command_id` is the idempotency key, per agent: the same id with the same content gets the
first answer again and never a second action; with other content it is rejected
DUPLICATE_COMMAND. `agent_id` comes from the topic, as for proposals.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, model_validator

from bracketgate.bus.messages import AgentId, Message, Price, ProposalId, Quantity, Reason, TradingState

CommandId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
# a trailing stop further than this from the price is no stop (and a typo more likely)
MAX_TRAIL_PERCENT = 50.0


class CommandVerdict(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    INVALID = "invalid"


class _Command(Message):
    command_id: CommandId
    agent_id: AgentId
    proposal_id: ProposalId

    def same_request(self, other: _Command) -> bool:
        """True when `other` is a re-delivery of this command (same content)."""
        return self.model_dump() == other.model_dump()


class CancelCommand(_Command):
    """Cancel the entry while it has not filled (IB cancels its children with it)."""

    action: Literal["cancel"]


class AmendCommand(_Command):
    """Move the stop and/or the take-profit, or resize the bracket (entry not filled yet)."""

    action: Literal["amend"]
    stop_loss: Price | None = None
    take_profit: Price | None = None
    quantity: Quantity | None = None

    @model_validator(mode="after")
    def _something(self) -> AmendCommand:
        if self.stop_loss is None and self.take_profit is None and self.quantity is None:
            raise ValueError("amend needs at least one of stop_loss, take_profit, quantity")
        return self


class TrailCommand(_Command):
    """Turn the stop into a trailing stop `amount` (price units) or `percent` behind the best price."""

    action: Literal["trail"]
    amount: Price | None = None
    percent: Annotated[float, Field(gt=0, le=MAX_TRAIL_PERCENT, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TrailCommand:
        if (self.amount is None) == (self.percent is None):
            raise ValueError("trail needs exactly one of amount, percent")
        return self


class CloseCommand(_Command):
    """Exit the bracket's position at market: all of it, or `quantity` of it."""

    action: Literal["close"]
    quantity: Quantity | None = None


BracketCommand = Annotated[CancelCommand | AmendCommand | TrailCommand | CloseCommand,
                           Field(discriminator="action")]
COMMAND_ADAPTER: TypeAdapter[Any] = TypeAdapter(BracketCommand)
COMMAND_TYPES = (CancelCommand, AmendCommand, TrailCommand, CloseCommand)
ACTIONS = ("cancel", "amend", "trail", "close")


def parse_command(data: dict[str, Any]) -> CancelCommand | AmendCommand | TrailCommand | CloseCommand:
    """A validated command from a parsed JSON object (raises pydantic's ValidationError)."""
    return COMMAND_ADAPTER.validate_python(data)


class LegState(Message):
    """One leg of a bracket as IB has it (after the command)."""

    order_id: int
    status: str
    order_type: str = ""
    quantity: float = 0.0
    filled: float = 0.0
    avg_fill_price: float | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    trailing_amount: float | None = None
    trailing_percent: float | None = None
    oca_group: str | None = None


class CommandAnswer(Message):
    """The answer to one command, on the agent's decisions topic."""

    command_id: str
    proposal_id: str
    agent_id: str
    action: str
    verdict: CommandVerdict
    reasons: list[Reason] = Field(default_factory=list)
    # entry / take_profit / stop_loss / close (a market exit) as IB has them after the command
    legs: dict[str, LegState] = Field(default_factory=dict)
    position: float | None = None      # units the bracket holds after the command (signed)
    trading_state: TradingState | None = None
    ts: datetime


class FlattenReport(Message):
    """What the operator's flatten did (agents/flatten.py; the command is a ControlCommand with
    action "flatten"): published on {prefix}/events ("type": "flatten") and journaled."""

    agent_id: str | None = None
    symbol: str | None = None
    cancelled_entries: list[str] = Field(default_factory=list)     # proposal_ids
    closed: dict[str, float] = Field(default_factory=dict)        # proposal_id -> units closed
    stops_cancelled: list[int] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)          # proposal_id -> why
    ts: datetime


def command_schemas() -> dict[str, Any]:
    """The JSON Schema of the command (one union, discriminated on `action`) and its answer."""
    return {"BracketCommand": COMMAND_ADAPTER.json_schema(),
            "CommandAnswer": CommandAnswer.model_json_schema(),
            "FlattenReport": FlattenReport.model_json_schema()}
