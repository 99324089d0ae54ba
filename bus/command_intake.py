"""The MQTT bridge's intake of bracket lifecycle commands ({prefix}/commands/{agent_id}).

The same checks as a proposal's, in the same order: size cap, signature (bus/auth.py, when the
agent has a key), UTF-8 / JSON (duplicate keys, depth, lone surrogates), the topic's agent id,
then the contract (bus/commands.py). A payload that fails is answered `invalid` (or `rejected`
with the signature's code) on the agent's decisions topic; one that passes is a command for
the desk (agents/commands.py), which checks the agents file, ownership and risk.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from bracketgate.bus.commands import CommandAnswer, CommandVerdict, parse_command
from bracketgate.bus.messages import DENIAL_MESSAGES, DenialCode, Reason

_COMMAND_ID_PEEK = re.compile(rb'"command_id"\s*:\s*"([^"\\]{1,64})"')
_PROPOSAL_ID_PEEK = re.compile(rb'"proposal_id"\s*:\s*"([^"\\]{1,64})"')
_ACTION_PEEK = re.compile(rb'"action"\s*:\s*"([a-z]{1,16})"')


def _peek(rx: re.Pattern[bytes], payload: bytes) -> str:
    hit = rx.search(payload.replace(b'\\"', b'"'), 0, 8192)
    return hit.group(1).decode("utf-8", "replace") if hit else ""


def refusal_answer(agent: str, payload: bytes, verdict: CommandVerdict, reasons: list[Reason],
                   now: datetime) -> CommandAnswer:
    """An answer made from what can be read of a payload that is not a valid command."""
    from bracketgate.bus.mqtt import printable

    return CommandAnswer(command_id=printable(_peek(_COMMAND_ID_PEEK, payload)),
                         proposal_id=printable(_peek(_PROPOSAL_ID_PEEK, payload)),
                         agent_id=printable(agent, 65_535),
                         action=printable(_peek(_ACTION_PEEK, payload)) or "",
                         verdict=verdict, reasons=reasons, ts=now)


def parse_command_payload(agent: str, payload: bytes, max_payload: int,
                          now: datetime) -> Any:
    """A validated command, or the `invalid` CommandAnswer that answers the payload."""
    from bracketgate.bus.mqtt import (
        _AGENT_ID,
        _DuplicateKey,
        _object_without_duplicates,
        _unencodable,
        printable,
        validation_reasons,
    )

    def invalid(reasons: list[Reason]) -> CommandAnswer:
        return refusal_answer(agent, payload, CommandVerdict.INVALID, reasons, now)

    if len(payload) > max_payload:
        return invalid([Reason(code=DenialCode.PAYLOAD_TOO_LARGE,
                               message=DENIAL_MESSAGES[DenialCode.PAYLOAD_TOO_LARGE],
                               limit=float(max_payload), value=float(len(payload)))])
    try:
        data = json.loads(payload.decode("utf-8"), object_pairs_hook=_object_without_duplicates)
    except _DuplicateKey as exc:
        return invalid([Reason(code=DenialCode.VALIDATION_ERROR, field=printable(exc.key, 128),
                               message=f"{DENIAL_MESSAGES[DenialCode.VALIDATION_ERROR]}: duplicate key")])
    except RecursionError:
        return invalid([Reason(code=DenialCode.MALFORMED_JSON,
                               message=f"{DENIAL_MESSAGES[DenialCode.MALFORMED_JSON]}: nested too deep")])
    except (UnicodeDecodeError, ValueError) as exc:
        why = printable(str(exc))
        return invalid([Reason(code=DenialCode.MALFORMED_JSON,
                               message=f"{DENIAL_MESSAGES[DenialCode.MALFORMED_JSON]}: {why}")])
    if not isinstance(data, dict):
        what = type(data).__name__
        return invalid([Reason(code=DenialCode.MALFORMED_JSON,
                               message=f"{DENIAL_MESSAGES[DenialCode.MALFORMED_JSON]}: got {what}")])
    bad = _unencodable(data)
    if bad is not None:
        code, where, why = bad
        return invalid([Reason(code=code, field=printable(where, 128) or None,
                               message=f"{DENIAL_MESSAGES[code]}: {why}")])
    reasons: list[Reason] = []
    if _AGENT_ID.fullmatch(agent) is None:
        reasons.append(Reason(code=DenialCode.VALIDATION_ERROR, field="agent_id",
                              message="the topic's agent id is not a valid agent_id"))
    given = data.get("agent_id")
    if given is not None and given != agent:
        topic_agent = printable(agent, 80)
        reasons.append(Reason(code=DenialCode.VALIDATION_ERROR, field="agent_id",
                              message=f"agent_id in the payload contradicts the topic "
                                      f"({topic_agent!r})"))
    data["agent_id"] = agent
    try:
        command = parse_command(data)
    except ValidationError as exc:
        reasons.extend(validation_reasons(exc))
    else:
        if not reasons:
            return command
    return invalid(reasons)
