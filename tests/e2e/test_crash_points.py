"""Issue 8, crash windows: the daemon SIGKILLs itself at each named crash point of a proposal's
path (core/crashpoints.py, `BRACKETGATE_CRASH_AT`) while an agent streams proposals; after the
restart every proposal has one decision that agrees with the paper TWS.

For each point between journaling a proposal and the broker's PUBACK of its decision: a
proposal whose bracket IB has (or had) is answered with it — approved with the legs' ids, or a
typed rejection saying it was cancelled — never a fresh verdict; a rejection never has a live
bracket behind it; an approval always has its three legs at IB; every filled entry has a
working stop. The audit is test_recovery_chaos.audit (the same invariants as the kill storm).
bench/bench_crash_points.py runs the storm at 50 proposals/s with >= 50 kills.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bracketgate.core.crashpoints import ENV, POINTS
from tests.e2e.test_recovery_chaos import (
    Audit,
    Rig,
    _report,
    _seed,
    audit,
    journal_intents,
)

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


async def crash_round(rig: Rig, point: str, nth: int, *, rate: float,
                      max_stream_s: float = 8.0) -> tuple[list[str], bool, float]:
    """Start a daemon armed at `point` (its `nth` pass), stream proposals at `rate`/s until it
    kills itself (or `max_stream_s` passes), restart it unarmed and wait for every decision.
    Returns (proposal ids sent, whether it crashed, restart-to-ready seconds)."""
    if rig.daemon is not None:
        await rig.d.kill()                   # the last round's unarmed daemon, idle
    rig.extra_env[ENV] = f"{point}@{nth}"
    try:
        daemon = await rig.start_daemon()
    finally:
        rig.extra_env.pop(ENV, None)
    sent: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_stream_s
    period = 1.0 / rate
    next_at = loop.time()
    while daemon.proc.returncode is None and loop.time() < deadline:
        sent.append(await rig.propose())
        next_at += period
        await asyncio.sleep(max(0.0, next_at - loop.time()))   # the agent's publishing pace
    crashed = any(e.get("event") == "crash_point" and e.get("point") == point
                  for e in daemon.logs)
    await daemon.kill()                      # a no-op when it killed itself
    # restarted unarmed (same journal and MQTT session) with limits that reject every fresh
    # decision: what was placed before the crash must still be answered with IB's bracket
    normal = rig.extra_env["RISK_LIMITS_FILE"]
    rig.extra_env["RISK_LIMITS_FILE"] = str(_deny_all_limits(rig))
    t0 = time.monotonic()
    try:
        await rig.start_daemon()
    finally:
        rig.extra_env["RISK_LIMITS_FILE"] = normal
    return sent, crashed, time.monotonic() - t0


def _deny_all_limits(rig: Rig) -> Path:
    path = rig.tmp / "deny-all-limits.toml"
    if not path.exists():
        text = Path(rig.extra_env["RISK_LIMITS_FILE"]).read_text()
        text, n = re.subn(r"(?m)^denied_symbols = .*$", 'denied_symbols = ["AAPL"]', text)
        assert n == 1, "limits.default.toml changed shape: denied_symbols"
        path.write_text(text)
    return path


async def crash_storm(rig: Rig, kills: int, *, rate: float, points: tuple[str, ...] = POINTS,
                      log: Callable[[str], None] = print) -> tuple[Audit, Counter]:
    """Rounds cycling through `points` (a random early pass of each) until `kills` SIGKILLs
    happened (at most 2 x kills rounds: a point after placement is only reached by an approval):
    after every restart all proposals are decided and the paper TWS, the decisions and the
    journal agree."""
    rng = rig.rng
    hits: Counter = Counter()
    violations: list[str] = []
    result = Audit()
    i = -1
    while sum(hits.values()) < kills and i + 1 < 2 * kills:
        i += 1
        point = points[i % len(points)]
        nth = rng.randint(1, 3)
        sent, crashed, restart_s = await crash_round(rig, point, nth, rate=rate)
        if crashed:
            hits[point] += 1
        missing = await rig.wait_decided(sent, timeout=30.0)
        for pid in missing:
            violations.append(f"round {i} ({point}@{nth}): {pid} has no decision after restart")
        state = await rig.quiet_state()
        result = audit(state, rig.proposals, rig.decisions(), journal_intents(rig.journal_path),
                       rig.fills())
        violations += [f"round {i} ({point}@{nth}): {v}" for v in result.violations]
        log(f"round {i:3d} crash@{point}@{nth:<2} crashed={crashed!s:<5} sent={len(sent):3d} "
            f"restart->ready {restart_s:.2f}s  {result.line()}")
        # the market moves: some entries fill, some exits fire
        await rig.move(rig.price + rng.uniform(-1.5, 1.5))
    result.violations = list(dict.fromkeys(violations))
    return result, hits


async def test_sigkill_at_every_named_crash_point(mosquitto, paper_tws_process, tmp_path):
    """One SIGKILL at each named crash point while proposals stream at 20/s; after each
    restart every proposal has one decision agreeing with the paper TWS."""
    seed = _seed()
    print(f"CHAOS_SEED={seed}")
    async with asyncio.timeout(240):
        async with Rig(paper_tws_process, mosquitto.url, tmp_path, random.Random(seed)) as rig:
            result, hits = await crash_storm(rig, kills=len(POINTS), rate=20.0)
            print(f"crash points hit: {dict(hits)}")
            print(_report("crash-points", seed, result))
            assert not result.violations, _report("crash-points", seed, result)
            # every point was really reached (a point never passed proves nothing)
            assert set(hits) == set(POINTS), f"points never hit: {set(POINTS) - set(hits)}"
            assert result.approved >= 5, result.line()
            rc = await rig.d.terminate()
            assert rc == 0, "\n".join(rig.d.raw[-30:])


async def test_sigkill_with_a_staged_intent_while_the_what_if_answers(mosquitto, paper_tws_process,
                                                                      tmp_path):
    """The intent written during the what-if (agents/staging.py) is durable, nothing is at IB:
    after the restart the proposal is answered without a second intent or a bracket behind a
    rejection, and every intent of it is closed (failed) or followed (acked) - none pending."""
    seed = _seed()
    print(f"CHAOS_SEED={seed}")
    async with asyncio.timeout(150):
        async with Rig(paper_tws_process, mosquitto.url, tmp_path, random.Random(seed)) as rig:
            result, hits = await crash_storm(rig, kills=2, rate=20.0, points=("intent_staged",))
            print(_report("crash-staged", seed, result))
            assert not result.violations, _report("crash-staged", seed, result)
            assert hits["intent_staged"] == 2, dict(hits)
            intents = journal_intents(rig.journal_path)
            assert intents and not [p for p, rec in intents.items()
                                    if rec.get("state") in ("pending", "sent")], intents
            rc = await rig.d.terminate()
            assert rc == 0, "\n".join(rig.d.raw[-30:])


@pytest.mark.parametrize("spec", ["proposal_journaled", "bracket_acked@2", "nowhere"])
def test_crash_point_spec_is_validated(spec):
    from bracketgate.core import crashpoints

    if spec == "nowhere":
        with pytest.raises(ValueError, match="unknown crash point"):
            crashpoints._parse(spec)
    else:
        name, _, nth = spec.partition("@")
        assert crashpoints._parse(spec) == {name: int(nth or 1)}
    assert os.environ.get(ENV) is None   # never armed in the test process itself
