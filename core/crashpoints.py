"""Named crash points: a test makes the daemon SIGKILL itself at one exact step of a proposal's
path, to prove that every restart answers what IB has.

`BRACKETGATE_CRASH_AT=point[@n][,point[@n]...]` kills the process the n-th time (default: the
first) it passes `point`. Unset (always, outside tests) every call is one dict look-up.

The points, in the order a proposal passes them:
  proposal_offered     the proposal is offered to the gate, its commit perhaps in flight
                       (bus/mqtt.py: the gate decides while it commits), no PUBACK yet
  proposal_journaled   the proposal is durable, its PUBACK not yet sent to the broker
  intent_staged        the order intent written during the what-if is durable, IB's answer
                       perhaps not in yet (agents/staging.py), nothing sent to IB
  intent_journaled     the order intent is durable, nothing sent to IB yet
  entry_sent           the entry leg is written to IB, take-profit and stop not yet
  legs_sent            all three legs are written, IB has not acknowledged them
  bracket_acked        IB acknowledged the legs, the intent is not yet marked acked
  intent_acked         the intent's acked mark is committed (queued, not waited for: the
                       decision may have been journaled in the same batch, or not yet)
  decision_journaled   the decision is durable, not yet handed to the MQTT client
  decision_delivered   the broker acknowledged the decision (PUBACK), the delivery not journaled
and those of a bracket lifecycle command (agents/commands.py):
  command_journaled    the command is durable, not yet acted on nor acknowledged
  close_sent           a close's market exit is about to be sent to IB
  command_answered     the answer is journaled, not yet published
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "BRACKETGATE_CRASH_AT"
POINTS = (
    "proposal_offered", "proposal_journaled", "intent_staged", "intent_journaled", "entry_sent", "legs_sent", "bracket_acked",
    "intent_acked", "decision_journaled", "decision_delivered",
)
# a bracket lifecycle command's (tests/e2e/test_commands_recovery.py); apart from POINTS, which
# the proposals' crash storm cycles through
COMMAND_POINTS = ("command_journaled", "close_sent", "command_answered")


def _parse(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, nth = part.partition("@")
        if name not in POINTS + COMMAND_POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r} (known: "
                             f"{', '.join(POINTS + COMMAND_POINTS)})")
        out[name] = int(nth) if nth else 1
    return out


_armed: dict[str, int] = _parse(os.environ.get(ENV, ""))


def arm(spec: str) -> None:
    """Arm (or with "" disarm) crash points in this process (tests of this module)."""
    global _armed
    _armed = _parse(spec)


def crash_point(name: str) -> None:
    """SIGKILL this process if `name` is armed and this is its n-th pass."""
    if not _armed:
        return
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    # one line a test can wait for, written straight to the stream (no buffering left behind)
    sys.stdout.write(f'{{"event": "crash_point", "point": "{name}", "level": "warning"}}\n')
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
