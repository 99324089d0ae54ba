"""The denial-code reference: for every DenialCode, the verdict it comes with, the check that
emits it, what its Reason's `limit` / `value` / `field` hold, and what an agent should do.

`render_markdown()` writes docs/DENIAL_CODES.md (`python run.py codes --markdown > docs/DENIAL_CODES.md`);
tests/unit/test_denial_codes.py fails when a code has no entry here or the file is stale.
"""

from __future__ import annotations

from dataclasses import dataclass

from bracketgate.bus.messages import DENIAL_MESSAGES, DenialCode

D = DenialCode


@dataclass(frozen=True)
class CodeDoc:
    verdict: str   # the verdict the code comes with: "invalid" or "rejected"
    check: str     # who emits it (module, check), on which answer
    limit: str     # what Reason.limit holds ("" = not set)
    value: str     # what Reason.value holds ("" = not set)
    action: str    # what an agent should do about it
    field: str = ""  # what Reason.field names, when it is set


# ---------------------------------------------------------------- groups, in the enum's order
GROUPS: tuple[tuple[str, tuple[DenialCode, ...]], ...] = (
    ("Input (the payload is not a proposal)", (
        D.MALFORMED_JSON, D.PAYLOAD_TOO_LARGE, D.VALIDATION_ERROR)),
    ("Broker state: the gate fails closed", (
        D.BROKER_DISCONNECTED, D.BROKER_CONNECTIVITY_LOST, D.NOT_RECONCILED, D.SNAPSHOT_STALE,
        D.PNL_UNKNOWN, D.ACCOUNT_VALUES_UNKNOWN, D.QUOTE_UNAVAILABLE)),
    ("Trading state", (D.TRADING_HALTED, D.REDUCING_ONLY)),
    ("Bracket geometry", (
        D.BRACKET_GEOMETRY, D.PRICE_OFF_TICK, D.REWARD_RISK_TOO_LOW,
        D.STOP_DISTANCE_OUT_OF_BOUNDS)),
    ("Size and exposure", (
        D.MAX_ORDER_QUANTITY, D.MAX_ORDER_NOTIONAL, D.POSITION_LIMIT, D.POSITION_NOTIONAL_LIMIT,
        D.GROSS_EXPOSURE_LIMIT, D.NET_EXPOSURE_LIMIT, D.MAX_OPEN_BRACKETS,
        D.MAX_OPEN_BRACKETS_AGENT)),
    ("Loss", (
        D.PER_TRADE_LOSS_LIMIT, D.PER_TRADE_LOSS_PCT_LIMIT, D.DAILY_LOSS_LIMIT,
        D.AGENT_LOSS_LIMIT, D.AGENT_EXPOSURE_LIMIT)),
    ("Lists, hours, rates", (
        D.SYMBOL_NOT_ALLOWED, D.SEC_TYPE_NOT_ALLOWED, D.UNKNOWN_CONTRACT,
        D.OUTSIDE_TRADING_HOURS, D.RATE_LIMITED)),
    ("Margin", (D.INSUFFICIENT_MARGIN, D.WHATIF_FAILED)),
    ("Runtime", (
        D.OVERLOADED, D.SHUTTING_DOWN, D.PLACEMENT_FAILED, D.DUPLICATE_PROPOSAL,
        D.PROPOSAL_EXPIRED)),
    ("Replays and absurd prices", (D.RETAINED_PROPOSAL, D.PRICE_OUT_OF_BAND)),
    ("What IB already has for this orderRef (restarts, a lost journal)", (
        D.BRACKET_CANCELLED_AT_IB, D.BRACKET_FINISHED_AT_IB)),
    ("Who may trade (agents file, signatures)", (
        D.UNKNOWN_AGENT, D.AGENT_DISABLED, D.AUTH_REQUIRED, D.BAD_SIGNATURE,
        D.SIGNATURE_REPLAYED)),
    ("Combos (BAG)", (D.UNDEFINED_RISK_COMBO,)),
    ("Bracket lifecycle commands (`{prefix}/commands/{agent_id}`)", (
        D.UNKNOWN_BRACKET, D.NOT_BRACKET_OWNER, D.BRACKET_FILLED_USE_CLOSE,
        D.BRACKET_NOT_WORKING, D.NOTHING_TO_CLOSE, D.CLOSE_EXCEEDS_POSITION,
        D.DUPLICATE_COMMAND, D.COMMAND_IN_PROGRESS, D.COMMAND_FAILED)),
)

_BROKER_WAIT = ("wait for `{prefix}/status` to show `connection: ready` (or `state: online`), "
                "then send a NEW proposal_id (the same id gets this same rejection back)")
_NEW_ID = "change the proposal and send it with a NEW proposal_id (the same id gets this answer again)"

CODE_DOCS: dict[DenialCode, CodeDoc] = {
    # ---- input
    D.MALFORMED_JSON: CodeDoc(
        "invalid", "MQTT bridge (bus/mqtt.py), before any check: the payload is not UTF-8 JSON, "
        "not an object, or nested deeper than the parser allows; also on a command payload",
        "", "", "fix the encoder; nothing was journaled as a proposal, nothing placed",
        "the dotted path of the too-deep part, when known"),
    D.PAYLOAD_TOO_LARGE: CodeDoc(
        "invalid", "MQTT bridge, before parsing: more bytes than `MQTT_MAX_PAYLOAD` (16 KiB)",
        "`MQTT_MAX_PAYLOAD`, bytes", "the payload's size, bytes",
        "send a smaller payload (a proposal is a few hundred bytes)"),
    D.VALIDATION_ERROR: CodeDoc(
        "invalid", "MQTT bridge: the JSON is not a valid `TradeProposal` (`run.py schema`): "
        "one reason per pydantic error; a duplicate key; an `agent_id` contradicting the topic",
        "", "the offending input (shortened)",
        "fix the field named; every error is listed at once",
        "the dotted path of the field (`limit_price`, `legs.0.strike`, `agent_id`)"),
    # ---- broker state
    D.BROKER_DISCONNECTED: CodeDoc(
        "rejected", "gate (agents/rules.py gate_connection): no IB connection, or none yet "
        "(connecting, Gateway restart, IB's nightly reset, weekly re-login)",
        "", "the connection state (`disconnected`, `connecting`), unset before the first snapshot",
        _BROKER_WAIT),
    D.BROKER_CONNECTIVITY_LOST: CodeDoc(
        "rejected", "gate: IB sent 1100 (IB lost its own connectivity) and no 1101/1102 plus a "
        "fresh sync since", "", "`connectivity_lost`", _BROKER_WAIT),
    D.NOT_RECONCILED: CodeDoc(
        "rejected", "gate: connected, but the orders, positions and executions are not yet "
        "reconciled since the (re)connect", "", "the connection state (`connected`)",
        _BROKER_WAIT + "; usually a second or less"),
    D.SNAPSHOT_STALE: CodeDoc(
        "rejected", "gate: the oldest of account values, positions and P&L is older than "
        "`max_snapshot_age_s`", "`max_snapshot_age_s`, seconds", "the age, seconds (`inf` if missing)",
        "retry with a new proposal_id in a few seconds; if it persists, the IB data feed is stuck "
        "(tell the operator)"),
    D.PNL_UNKNOWN: CodeDoc(
        "rejected", "gate: IB has not sent a daily P&L yet, or sent an unset value", "",
        "the daily P&L as received (`null` / text)", _BROKER_WAIT),
    D.ACCOUNT_VALUES_UNKNOWN: CodeDoc(
        "rejected", "gate (NetLiquidation missing or <= 0, AvailableFunds missing), or the margin "
        "step (AvailableFunds missing when the what-if answers)", "", "the value as received",
        _BROKER_WAIT, "`NetLiquidation` or `AvailableFunds`"),
    D.QUOTE_UNAVAILABLE: CodeDoc(
        "rejected", "price bands and MKT entries (agents/rules.py): no quote for the contract, no "
        "usable bid/ask/last, or (MKT entry) a quote older than `max_quote_age_s`; no "
        "market-data line for it (core/app.py: every line pinned, or IB's error 101)",
        "`max_quote_age_s` when the quote is stale; the line budget (`IB_MAX_MARKET_DATA_LINES`, "
        "or fewer after a 101) when no line", "the quote's age, or the conId without a quote, or "
        "the lines in use",
        "retry with a new proposal_id a moment later (a first proposal subscribes the quote); for "
        "an illiquid contract use a LMT entry; `market_data_lines`: wait for brackets to close",
        "`quote_age_s`, `con_id` or `market_data_lines`, when set"),
    # ---- trading state
    D.TRADING_HALTED: CodeDoc(
        "rejected", "gate: the trading state is HALTED (operator `halt`, or the daily loss limit "
        "reached); also when a halt arrives during the what-if", "", "`HALTED`",
        "stop proposing; watch `{prefix}/events` for `TradingStateChanged` back to ACTIVE"),
    D.REDUCING_ONLY: CodeDoc(
        "rejected", "rule_reducing_only: the state is REDUCING (operator `reduce`, or drawdown past "
        "`max_drawdown_pct`) and the proposal does not shrink a position",
        "the quantity that would still reduce (after pending reductions)", "the proposal's quantity",
        "only propose position-reducing brackets, at most `limit` units", "`quantity`"),
    # ---- geometry
    D.BRACKET_GEOMETRY: CodeDoc(
        "rejected", "rule_geometry: BUY needs stop < entry < take-profit, SELL the reverse",
        "the entry price", "the misplaced stop_loss or take_profit",
        _NEW_ID, "`stop_loss` or `take_profit`"),
    D.PRICE_OFF_TICK: CodeDoc(
        "rejected", "rule_tick: a price is not a multiple of the contract's minimum tick (IB's "
        "contract details, else the limits' default)", "the minimum tick", "the price",
        "round the price named to the tick; " + _NEW_ID, "`limit_price`, `take_profit` or `stop_loss`"),
    D.REWARD_RISK_TOO_LOW: CodeDoc(
        "rejected", "rule_reward_risk: |take_profit - entry| / |entry - stop| below `min_reward_risk`",
        "`min_reward_risk`", "the bracket's reward:risk", _NEW_ID),
    D.STOP_DISTANCE_OUT_OF_BOUNDS: CodeDoc(
        "rejected", "rule_stop_distance: |entry - stop| in % of the entry outside "
        "[`min_stop_distance_pct`, `max_stop_distance_pct`]",
        "the bound crossed, %", "the stop distance, %", _NEW_ID),
    # ---- size and exposure
    D.MAX_ORDER_QUANTITY: CodeDoc(
        "rejected", "rule_max_order_quantity (`max_order_quantity`, per symbol overridable), or "
        "the number gate (a quantity beyond 10,000,000)", "the maximum", "the quantity",
        "propose fewer units", "`quantity`"),
    D.MAX_ORDER_NOTIONAL: CodeDoc(
        "rejected", "rule_max_order_notional: quantity x entry x multiplier above `max_order_notional`",
        "`max_order_notional`", "the order's notional", "propose a smaller bracket"),
    D.POSITION_LIMIT: CodeDoc(
        "rejected", "rule_position_limit: |position + pending entries + this one| above "
        "`max_position_units` for the contract (a trade that shrinks a breach passes)",
        "`max_position_units`", "the resulting position, units",
        "wait for open brackets on this contract to close, or propose fewer units"),
    D.POSITION_NOTIONAL_LIMIT: CodeDoc(
        "rejected", "rule_position_notional: the resulting position's notional above "
        "`max_position_notional`", "`max_position_notional`", "the resulting notional",
        "as for POSITION_LIMIT"),
    D.GROSS_EXPOSURE_LIMIT: CodeDoc(
        "rejected", "rule_gross_exposure: sum of |position notional| incl. pending above "
        "`max_gross_exposure_pct` of NetLiquidation", "the limit in money (NetLiq x pct)",
        "the gross exposure after this bracket", "wait for exposure to come down; propose smaller"),
    D.NET_EXPOSURE_LIMIT: CodeDoc(
        "rejected", "rule_net_exposure: |sum of signed notional| incl. pending above "
        "`max_net_exposure_pct` of NetLiquidation", "the limit in money", "|net exposure| after",
        "propose the other side, or smaller"),
    D.MAX_OPEN_BRACKETS: CodeDoc(
        "rejected", "rule_max_open_brackets: approved brackets not yet closed, all agents, "
        "above `max_open_brackets`", "`max_open_brackets`", "the count with this one",
        "wait for brackets to close (watch `{prefix}/orders/{agent_id}`)"),
    D.MAX_OPEN_BRACKETS_AGENT: CodeDoc(
        "rejected", "rule_max_open_brackets_agent: this agent's open brackets above its "
        "`max_open_brackets` ([agent] or [agents.<id>])", "the agent's maximum",
        "its count with this one", "wait for one of your brackets to close, or cancel one"),
    # ---- loss
    D.PER_TRADE_LOSS_LIMIT: CodeDoc(
        "rejected", "rule_per_trade_loss: worst-case loss (qty x |entry - stop| x multiplier + "
        "slippage) above `per_trade_loss_limit`", "`per_trade_loss_limit`",
        "the bracket's worst-case loss", "tighten the stop or propose fewer units"),
    D.PER_TRADE_LOSS_PCT_LIMIT: CodeDoc(
        "rejected", "rule_per_trade_loss_pct: worst-case loss above `per_trade_loss_pct` of "
        "NetLiquidation", "the limit in money", "the worst-case loss", "as for PER_TRADE_LOSS_LIMIT"),
    D.DAILY_LOSS_LIMIT: CodeDoc(
        "rejected", "rule_daily_loss: worst-case loss above what is left of `daily_loss_limit` "
        "after today's loss and every open bracket's worst case", "the remaining budget",
        "the worst-case loss", "propose a smaller risk, or wait for open brackets to close"),
    D.AGENT_LOSS_LIMIT: CodeDoc(
        "rejected", "rule_agent_loss: as DAILY_LOSS_LIMIT with the agent's own `loss_limit` (its "
        "realized loss today + its open brackets' worst case)", "the agent's remaining budget",
        "the worst-case loss", "as for DAILY_LOSS_LIMIT; the budget resets at local midnight"),
    D.AGENT_EXPOSURE_LIMIT: CodeDoc(
        "rejected", "rule_agent_exposure: the agent's |position notional| + pending entries above "
        "its `exposure_limit`", "the agent's `exposure_limit`", "its exposure after this bracket",
        "propose smaller, or wait for your positions to close"),
    # ---- lists, hours, rates
    D.SYMBOL_NOT_ALLOWED: CodeDoc(
        "rejected", "rule_symbol_allowed: in `denied_symbols`, or not in a non-empty "
        "`allowed_symbols`", "", "the symbol", "do not propose this symbol", "`symbol`"),
    D.SEC_TYPE_NOT_ALLOWED: CodeDoc(
        "rejected", "rule_sec_type_allowed: not in `allowed_sec_types`", "", "the sec_type",
        "do not propose this security type", "`sec_type`"),
    D.UNKNOWN_CONTRACT: CodeDoc(
        "rejected", "governor (agents/risk.py): IB has no contract for symbol/expiry/strike/right, "
        "or (without contract details) no multiplier for a future", "", "the symbol",
        "fix the contract fields (expiry format, strike, right, exchange)", "`symbol` or `multiplier`"),
    D.OUTSIDE_TRADING_HOURS: CodeDoc(
        "rejected", "rule_trading_hours: the limits file's trading-hours window", "the window, "
        "text (`09:30-16:00 America/New_York`)", "the daemon's local time, text",
        "wait for the window; send a new proposal_id then"),
    D.RATE_LIMITED: CodeDoc(
        "rejected", "rule_rates: the agent's or the global proposal bucket is empty "
        "(`max_proposals_per_s`, `proposal_burst`), or the IB pacer has no room for the "
        "bracket's order messages, or the agent used its `max_order_share_pct`",
        "proposals/s of the bucket, the order messages a bracket needs (pacer, share), or "
        "`max_order_msgs_per_s`",
        "which bucket (`global`, `agent <id>`, `unregistered agents (one shared budget)`) or the "
        "messages left", "slow down: back off (e.g. 1 s, doubling) and send a new proposal_id",
        "`proposals_per_s`, `ib_pacer_headroom`, `agent_order_share` or `order_msgs_per_s`"),
    # ---- margin
    D.INSUFFICIENT_MARGIN: CodeDoc(
        "rejected", "margin step (agents/risk.py confirm_margin): IB's what-if initial-margin "
        "change above AvailableFunds x (1 - `margin_cushion_pct`) less margin held for other "
        "unfilled brackets", "the room left, money", "the what-if's initial margin change",
        "propose smaller, or wait for unfilled brackets to fill or go"),
    D.WHATIF_FAILED: CodeDoc(
        "rejected", "margin step: IB's what-if timed out (`whatif_timeout_s`), failed, or gave no "
        "initial margin change", "`whatif_timeout_s` on a timeout", "the error, shortened",
        "retry with a new proposal_id; repeated failures: tell the operator", "`timeout_s` on a timeout"),
    # ---- runtime
    D.OVERLOADED: CodeDoc(
        "rejected", "MQTT bridge: the intake queue is full; or the journal could not say whether "
        "this proposal_id was decided before", "", "the proposal_id (journal case)",
        "back off and send it again: OVERLOADED is not remembered as the id's decision"),
    D.SHUTTING_DOWN: CodeDoc(
        "rejected", "reserved: this version does not emit it (a stopping daemon stops intake; "
        "proposals stay queued in the broker for the next start)", "", "",
        "nothing; a proposal sent during a stop is decided after the restart"),
    D.PLACEMENT_FAILED: CodeDoc(
        "rejected", "placement (agents/risk.py, agents/execution.py): IB refused a leg or did "
        "not confirm all three in `placement_timeout_s`; or, after a restart, an intent the "
        "journal holds that never reached IB (not re-sent)", "IB's error code when there is one",
        "IB's error text, or the prior outcome (`not_at_ib`)",
        "read the message (IB's reason); fix and send a new proposal_id"),
    D.DUPLICATE_PROPOSAL: CodeDoc(
        "rejected", "governor: this proposal_id was used before with different content "
        "(remembered `proposal_id_retention_days`, across restarts)", "", "the proposal_id",
        "use a fresh proposal_id for every new proposal"),
    D.PROPOSAL_EXPIRED: CodeDoc(
        "rejected", "governor: older than `max_proposal_age_s` (from `created_at`, or since it "
        "was first journaled), or `created_at` more than `max_clock_skew_s` in the future",
        "`max_proposal_age_s` or `max_clock_skew_s`", "the age (negative: seconds ahead)",
        "re-price and send a new proposal_id; keep the agent's clock on NTP", "`created_at`, when it decided"),
    # ---- replays
    D.RETAINED_PROPOSAL: CodeDoc(
        "rejected", "MQTT bridge: the proposal came with the retain flag (a broker replay)",
        "", "", "publish proposals with retain=false; clear the retained message "
        "(`mosquitto_pub -r -n -t <topic>`)"),
    D.PRICE_OUT_OF_BAND: CodeDoc(
        "rejected", "rule_price_band: limit_price outside `entry_band_pct`, take_profit/stop_loss "
        "outside `exit_band_pct` of the quote; or the number gate (a price <= 0, above 1e9, missing)",
        "the band edge crossed (or 1e9)", "the price", "check the price against the market; "
        + _NEW_ID, "the price named"),
    # ---- what IB has
    D.BRACKET_CANCELLED_AT_IB: CodeDoc(
        "rejected", "prior lookup (after a restart or a lost journal): IB holds this orderRef's "
        "legs cancelled; never placed again", "", "`cancelled`",
        "treat the proposal as done; send a new proposal_id to trade again"),
    D.BRACKET_FINISHED_AT_IB: CodeDoc(
        "rejected", "prior lookup: IB already traded this orderRef's bracket (completed orders)",
        "", "`finished`", "treat the proposal as done: it traded; check your fills"),
    # ---- who may trade
    D.UNKNOWN_AGENT: CodeDoc(
        "rejected", "governor, first check, with `AGENTS_FILE`: the agent_id (from the topic) is "
        "not in the agents file", "", "the agent_id", "ask the operator to register the agent",
        "`agent_id`"),
    D.AGENT_DISABLED: CodeDoc(
        "rejected", "governor, first check: `enabled = false` for this agent", "", "the agent_id",
        "stop; ask the operator", "`agent_id`"),
    D.AUTH_REQUIRED: CodeDoc(
        "rejected", "MQTT bridge (bus/auth.py): the agent has a key and the message is not signed "
        "(for control: an Alert on `{prefix}/events`)", "", "",
        "sign every message (docs/AUTH.md); not remembered as the id's decision"),
    D.BAD_SIGNATURE: CodeDoc(
        "rejected", "MQTT bridge: the HMAC does not verify, the envelope is malformed, or the "
        "agent has no key", "", "", "check the key and the envelope (docs/AUTH.md)"),
    D.SIGNATURE_REPLAYED: CodeDoc(
        "rejected", "MQTT bridge: the signed message's timestamp is outside the replay window, "
        "or its nonce was seen before", "", "",
        "sign again with a fresh nonce and the current time (keep the clock on NTP)"),
    # ---- combos
    D.UNDEFINED_RISK_COMBO: CodeDoc(
        "rejected", "combo risk (BAG proposals): the combo's loss is unbounded (e.g. a short "
        "straddle) and the limits file does not allow undefined-risk combos", "", "",
        "propose a defined-risk combo (add the protective wings)"),
    # ---- commands (answers carry command_id)
    D.UNKNOWN_BRACKET: CodeDoc(
        "rejected", "command handler: no bracket is known for the command's proposal_id", "",
        "the proposal_id", "check the proposal_id (an approved one)"),
    D.NOT_BRACKET_OWNER: CodeDoc(
        "rejected", "command handler: the command came on another agent's commands topic", "",
        "", "only the agent that proposed a bracket changes it"),
    D.BRACKET_FILLED_USE_CLOSE: CodeDoc(
        "rejected", "command handler: `cancel` after the entry filled (it would leave the position "
        "without its stop)", "", "", "send `close` instead"),
    D.BRACKET_NOT_WORKING: CodeDoc(
        "rejected", "command handler: the bracket is finished at IB (exited, cancelled)", "", "",
        "nothing left to do"),
    D.NOTHING_TO_CLOSE: CodeDoc(
        "rejected", "command handler: `close` on a bracket that holds no position", "", "",
        "`cancel` a bracket whose entry has not filled"),
    D.CLOSE_EXCEEDS_POSITION: CodeDoc(
        "rejected", "command handler: `close` quantity above what the bracket holds",
        "what the bracket holds", "the quantity asked", "close at most `limit`, or omit `quantity`"),
    D.DUPLICATE_COMMAND: CodeDoc(
        "rejected", "command handler: this command_id was used before with different content",
        "", "the command_id", "use a fresh command_id for every new command"),
    D.COMMAND_IN_PROGRESS: CodeDoc(
        "rejected", "command handler: another command on this bracket is still in flight at IB",
        "", "", "wait for its answer, then send the next command with a new command_id"),
    D.COMMAND_FAILED: CodeDoc(
        "rejected", "command handler: IB refused or did not confirm the change; `legs` shows the "
        "bracket as IB reports it", "IB's error code when there is one", "IB's error text",
        "read `legs`; fix and send a new command_id"),
}

def render_markdown() -> str:
    """docs/DENIAL_CODES.md: one section per group, one table row per code."""
    total = sum(len(codes) for _, codes in GROUPS)
    out = [
        "# Denial codes",
        "",
        "<!-- generated by `python run.py codes --markdown` from bus/messages.py (DenialCode,",
        "     DENIAL_MESSAGES) and bus/denial_codes.py; tests/unit/test_denial_codes.py keeps it",
        "     in sync. Do not edit by hand. -->",
        "",
        f"Every reason a proposal (or a bracket command) is not approved: {total} codes. Each "
        "comes as one entry of the answer's `reasons`:",
        "",
        "```json",
        '{"code": "STOP_DISTANCE_OUT_OF_BOUNDS", "message": "stop distance outside the allowed '
        'bounds: stop too far (%)", "limit": 10.0, "value": 28.6, "field": null}',
        "```",
        "",
        "`message` starts with the line below and may add a detail; `limit` and `value` are "
        "numbers or short text (or null) as the table says; `field` names the proposal field "
        "concerned where it applies. Proposals are answered on `{prefix}/decisions/{agent_id}`; "
        "bracket commands on the same topic with their `command_id`. A rejected proposal_id "
        "keeps its answer (`proposal_id_retention_days`, across restarts): the same id sent "
        "again gets the same rejection, so after a fix send a NEW proposal_id. Not remembered, "
        "so the same id may be sent again: `invalid` answers (the payload was no proposal), "
        "OVERLOADED and the signature codes (AUTH_REQUIRED, BAD_SIGNATURE, SIGNATURE_REPLAYED).",
        "",
    ]
    for title, codes in GROUPS:
        out += [f"## {title}", "", "| code | verdict | meaning | emitted by | `limit` | `value` "
                "| what the agent should do |", "|---|---|---|---|---|---|---|"]
        for code in codes:
            doc = CODE_DOCS[code]
            value = doc.value or "—"
            if doc.field:
                value += f"; `field`: {doc.field}"
            out.append("| " + " | ".join(_cell(c) for c in (
                f"`{code.value}`", doc.verdict, DENIAL_MESSAGES[code], doc.check,
                doc.limit or "—", value, doc.action)) + " |")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str]) -> int:
    """`run.py codes`: one line per code (code, verdict, message); --markdown: the reference."""
    import argparse

    ap = argparse.ArgumentParser(prog="run.py codes",
                                 description="every denial code with its meaning")
    ap.add_argument("--markdown", action="store_true",
                    help="print docs/DENIAL_CODES.md (the generated reference)")
    args = ap.parse_args(argv)
    if args.markdown:
        print(render_markdown(), end="")
        return 0
    for code in DenialCode:
        print(f"{code.value:28} {CODE_DOCS[code].verdict:8} {DENIAL_MESSAGES[code]}")
    return 0
