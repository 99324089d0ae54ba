"""Order files: a JSON list or a CSV of orders, each row sent as a proposal through the gate.

  python run.py orders FILE [--agent ID] [--dry-run] [--limits FILE] [--timeout S]

A row has ticker, action (BUY/SELL), quantity and limit_price, and optionally take_profit,
stop_loss, sec_type, expiry, strike, right, order_type; any other field is an error (a typo such
as `stoploss` must not silently become a policy stop). Exits a row leaves out come from the
limits file's `[bracket_policy]` and are shown (stderr) before anything is sent. The whole file is
validated first (each row as a TradeProposal): one bad row and nothing is sent, every bad row and
field is named. Each row's proposal_id is a hash of the file's bytes and the row, so the same
file run twice is answered with its first decisions and never places a second order.
See docs/ORDER_FILES.md.

Exit codes: 0 every row approved (or --dry-run and the file is valid), 1 some row rejected or
invalid at the gate, 2 bad usage or a bad file (nothing sent), 3 a row had no answer before the
timeout (later rows not sent), 4 MQTT broker unreachable, 6 the broker refused the login.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import json
import math
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bracketgate.bus.messages import TradeProposal

REQUIRED = ("ticker", "action", "quantity", "limit_price")
OPTIONAL = ("take_profit", "stop_loss", "sec_type", "expiry", "strike", "right", "order_type")
PRICES = ("limit_price", "take_profit", "stop_loss", "strike")
UPPER = ("ticker", "action", "sec_type", "right", "order_type")
# file column -> TradeProposal field (errors are reported under the file's name)
TO_PROPOSAL = {"ticker": "symbol", "action": "side"}
FROM_PROPOSAL = {v: k for k, v in TO_PROPOSAL.items()}
EXIT_OK, EXIT_REJECTED, EXIT_BAD_FILE, EXIT_NO_ANSWER = 0, 1, 2, 3


class BadOrderFile(ValueError):
    """The file as a whole cannot be read (not JSON / CSV, not a list, no header, empty)."""


@dataclass(frozen=True)
class RowError:
    row: int          # 1-based, in file order (a CSV's header is not a row: row 1 is line 2)
    field: str        # the file's column name, or "row" for the row as a whole
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class PlannedOrder:
    row: int
    proposal: TradeProposal
    filled: tuple[str, ...] = ()     # exits the bracket policy supplied

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "proposal_id": self.proposal.proposal_id,
                "filled_by_policy": list(self.filled),
                "proposal": self.proposal.model_dump(mode="json", exclude_none=True)}


@dataclass
class Plan:
    orders: list[PlannedOrder] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


# ============================================================================ reading


def read_rows(data: bytes, name: str = "") -> list[dict[str, Any]]:
    """The rows of a JSON list of objects, or of a CSV with a header row (by the file's first
    non-blank character: `[` is JSON). Raises BadOrderFile."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadOrderFile(f"{name or 'the file'} is not UTF-8 text ({e})") from None
    if not text.strip():
        raise BadOrderFile(f"{name or 'the file'} is empty")
    if text.lstrip().startswith(("[", "{")):
        try:
            rows = json.loads(text)
        except ValueError as e:
            raise BadOrderFile(f"{name or 'the file'} is not valid JSON: {e}") from None
        if not isinstance(rows, list):
            raise BadOrderFile("a JSON order file is a list of objects, one per order")
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise BadOrderFile("a CSV order file needs a header row")
    rows = []
    for raw in reader:
        extra = raw.pop(None, None)     # more cells than the header has names
        row: dict[str, Any] = {k: v for k, v in raw.items() if v is not None}
        if extra and any(str(x).strip() for x in extra):
            row["<extra cells>"] = extra
        if any(str(v).strip() for v in row.values()):   # blank lines are not orders
            rows.append(row)
    if not rows:
        raise BadOrderFile(f"{name or 'the file'} has a header but no rows")
    return rows


def _number(value: Any, *, whole: bool) -> int | float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, str):
        text = value.strip().replace(",", "") if whole else value.strip()
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            kind = "a whole number" if whole else "a number"
            raise ValueError(f"expected {kind}, got {value!r}") from None
    if whole:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def normalize_row(raw: Any, row: int) -> tuple[dict[str, Any], list[RowError]]:
    """The row's known fields, typed (upper-cased codes, numbers parsed), and its errors."""
    if not isinstance(raw, dict):
        return {}, [RowError(row, "row", f"expected an object with {', '.join(REQUIRED)}")]
    out: dict[str, Any] = {}
    errors: list[RowError] = []
    for key, value in raw.items():
        name = str(key).strip().lower()
        if name not in REQUIRED and name not in OPTIONAL:
            errors.append(RowError(row, str(key), "unknown field (known: "
                                   + ", ".join(REQUIRED + OPTIONAL) + ")"))
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            if name == "quantity":
                value = _number(value, whole=True)
            elif name in PRICES:
                value = _number(value, whole=False)
            elif name == "expiry":
                value = str(value).strip()
            elif name in UPPER:
                value = str(value).strip().upper()
        except ValueError as e:
            errors.append(RowError(row, name, str(e)))
            continue
        out[name] = value
    for name in REQUIRED:
        if name not in out and not any(e.field == name for e in errors):
            errors.append(RowError(row, name, "required"))
    return out, errors


# ============================================================================ the policy


def _on_tick(ticks: float, tick: float) -> float:
    """The price `ticks` ticks from zero, rounded to a whole tick (float noise trimmed)."""
    return round(round(ticks) * tick, 10)


def policy_exits(side: str, entry: float, tick: float, stop_pct: float, reward_risk: float,
                 take_profit: float | None = None, stop_loss: float | None = None,
                 ) -> tuple[float, float]:
    """(take_profit, stop_loss) with the missing ones from the policy, on the tick.

    No exits: the stop `stop_pct` % of the entry away (at least one tick), the take-profit
    `reward_risk` x that risk. Only the stop: the take-profit from its risk. Only the
    take-profit: the stop at its reward / reward_risk. Distances are rounded so that the
    reward:risk is never below the policy's."""
    sign = 1 if side == "BUY" else -1
    if stop_loss is None:
        if take_profit is None:
            risk_ticks = max(1, round(entry * stop_pct / 100 / tick))
        else:   # the widest stop on the tick that keeps reward / risk >= reward_risk
            reward = abs(take_profit - entry)
            risk_ticks = max(1, math.floor(reward / reward_risk / tick + 1e-9))
        stop_loss = _on_tick(entry / tick - sign * risk_ticks, tick)
    if take_profit is None:   # rounded outwards: reward / risk >= reward_risk on the tick
        target = (entry + sign * abs(entry - stop_loss) * reward_risk) / tick
        take_profit = _on_tick(math.ceil(target - 1e-9) if sign > 0 else math.floor(target + 1e-9),
                               tick)
    return take_profit, stop_loss


# ============================================================================ the plan


def proposal_id(file_digest: str, row: int, fields: dict[str, Any]) -> str:
    """Stable: the same file's same row always gets the same id (the gate's idempotency key)."""
    h = hashlib.sha256(f"{file_digest}\n{row}\n{json.dumps(fields, sort_keys=True)}".encode())
    return f"of-{h.hexdigest()[:32]}"


def plan_orders(data: bytes, *, agent_id: str, limits: Any, name: str = "") -> Plan:
    """Every row of the file as a validated TradeProposal (exits filled by the policy), or the
    errors of every bad row. Raises BadOrderFile when the file itself cannot be read."""
    digest = hashlib.sha256(data).hexdigest()
    policy = limits.bracket_policy
    plan = Plan()
    for row, raw in enumerate(read_rows(data, name), start=1):
        fields, errors = normalize_row(raw, row)
        if not isinstance(raw, dict):
            plan.errors += errors
            continue
        flagged = {e.field for e in errors}
        sec_type = fields.get("sec_type", "STK")
        proposal: dict[str, Any] = {
            "proposal_id": proposal_id(digest, row, fields), "agent_id": agent_id,
            "order_type": fields.get("order_type", "LMT"), "sec_type": sec_type,
            **{TO_PROPOSAL.get(k, k): fields[k] for k in ("ticker", "action", "quantity", "expiry",
                                                          "strike", "right") if k in fields},
        }
        entry = fields.get("limit_price")
        if proposal["order_type"] != "MKT" and entry is not None:   # MKT: the policy's reference
            proposal["limit_price"] = entry
        filled = tuple(k for k in ("take_profit", "stop_loss") if k not in fields)
        tp, sl = fields.get("take_profit"), fields.get("stop_loss")
        policy_ok = (not errors and fields["action"] in ("BUY", "SELL") and entry > 0
                     and str(sec_type) in ("STK", "OPT", "FUT"))
        if filled and policy_ok:
            tick = limits.min_tick_for(fields["ticker"], sec_type)
            tp, sl = policy_exits(fields["action"], entry, tick, policy.stop_distance_pct,
                                  policy.reward_risk, tp, sl)
        if tp is not None:
            proposal["take_profit"] = tp
        if sl is not None:
            proposal["stop_loss"] = sl
        try:
            validated = TradeProposal.model_validate(proposal)
        except ValidationError as e:
            for err in e.errors():
                loc = [str(p) for p in err["loc"]]
                name_ = FROM_PROPOSAL.get(loc[0], loc[0]) if loc else "row"
                if name_ in flagged or (err["type"] == "missing" and (errors or name_ in filled)):
                    continue   # already named, or missing only because of another bad field
                plan.errors.append(RowError(row, name_, err["msg"].removeprefix("Value error, ")))
        else:
            if not errors:
                plan.orders.append(PlannedOrder(row, validated, filled))
        plan.errors += errors
    plan.errors.sort(key=lambda e: e.row)
    return plan


# ============================================================================ sending


class _Pace:
    """Sends no faster than the gate's proposal buckets refill (the agent's and the global,
    from the limits file), so a long file is not refused RATE_LIMITED half way."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst - 1)   # one token of slack
        self.sent = 0
        self.start: float | None = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        due = self.start + max(0, self.sent + 1 - self.burst) * 1.1 / self.rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())   # pacing, not a wait for an event
        self.sent += 1


async def send(plan: Plan, agent_id: str, timeout: float, pace: _Pace) -> int:
    """Each order through the gate in file order, one JSON line per row with its decision."""
    from bracketgate.core import operator as op

    worst = EXIT_OK
    topic_dec = f"{op.prefix()}/decisions/{agent_id}"
    topic = f"{op.prefix()}/proposals/{agent_id}"
    async with op._client(op.broker_url(), f"bg-orders-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topic_dec, qos=1)
        for i, order in enumerate(plan.orders):
            await pace.wait()
            pid = order.proposal.proposal_id
            body = order.proposal.model_dump_json(exclude_none=True)
            await client.publish(topic, op._maybe_signed(topic, body, agent_id), qos=1)
            decision = await op._first_json(client, lambda d, pid=pid: d.get("proposal_id") == pid,
                                            timeout)
            line = order.as_json() | {"decision": decision}
            if decision is None:
                line["error"] = "no answer from the daemon before the timeout"
                print(json.dumps(line), flush=True)
                for later in plan.orders[i + 1:]:
                    print(json.dumps(later.as_json() | {"decision": None, "sent": False}),
                          flush=True)
                return EXIT_NO_ANSWER
            print(json.dumps(line), flush=True)
            if decision.get("verdict") != "approved":
                worst = EXIT_REJECTED
    return worst


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run.py orders", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a JSON list or a CSV with a header row ('-' = stdin)")
    ap.add_argument("--agent", default="orders",
                    help="the agent_id the rows are sent as (default orders)")
    ap.add_argument("--dry-run", action="store_true", help="print the proposals, send nothing")
    ap.add_argument("--limits", help="limits file with [bracket_policy] (default RISK_LIMITS_FILE,"
                                     " else config/limits.default.toml)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each decision")
    a = ap.parse_args(argv)

    from bracketgate.bus.errors import ConfigError
    from bracketgate.config.limits import DEFAULT_LIMITS_PATH, load_limits
    from bracketgate.core import operator as op

    try:
        limits = load_limits(a.limits or os.environ.get("RISK_LIMITS_FILE") or DEFAULT_LIMITS_PATH)
    except ConfigError as e:
        return op._fail(EXIT_BAD_FILE, str(e))
    try:
        data = sys.stdin.buffer.read() if a.file == "-" else Path(a.file).read_bytes()
        plan = plan_orders(data, agent_id=a.agent, limits=limits, name=a.file)
    except OSError as e:
        return op._fail(EXIT_BAD_FILE, f"cannot read {a.file}: {e}")
    except BadOrderFile as e:
        return op._fail(EXIT_BAD_FILE, f"bad order file {a.file}: {e}")
    if plan.errors:
        bad = sorted({e.row for e in plan.errors})
        print(json.dumps({"error": f"bad order file {a.file}: {len(bad)} bad row(s), nothing sent",
                          "exit_code": EXIT_BAD_FILE, "rows": [e.as_json() for e in plan.errors]}),
              file=sys.stderr)
        return EXIT_BAD_FILE
    if a.dry_run:
        for order in plan.orders:
            print(json.dumps(order.as_json() | {"dry_run": True}))
        return EXIT_OK
    for order in plan.orders:   # shown before anything is sent
        if order.filled:
            p = order.proposal
            print(json.dumps({"row": order.row, "proposal_id": p.proposal_id,
                              "filled_by_policy": list(order.filled), "take_profit": p.take_profit,
                              "stop_loss": p.stop_loss}), file=sys.stderr)
    agent = limits.for_agent(a.agent)
    pace = _Pace(min(agent.max_proposals_per_s, limits.max_proposals_per_s),
                 min(agent.proposal_burst, limits.proposal_burst))
    return op.guarded(lambda: asyncio.run(send(plan, a.agent, a.timeout, pace)))
