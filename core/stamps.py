"""Stage stamps along a proposal's path (MQTT in -> journal -> gate -> IB -> decision out), for
bench/bench_latency.py. Off unless BRACKETGATE_STAMPS names a file; then every `stamp` keeps
(proposal_id, stage, time.perf_counter()) and the list is written there as JSON at exit.

perf_counter is CLOCK_MONOTONIC on Linux, one clock for every process of the machine, so the
bench reads these on its own schedule's clock. Call sites test `ON` first (one global read
when off). Bounded: past MAX_STAMPS the rest are not kept.
"""

from __future__ import annotations

import atexit
import json
import os
import time

PATH = os.environ.get("BRACKETGATE_STAMPS", "")
ON = bool(PATH)
MAX_STAMPS = 2_000_000

_stamps: list[tuple[str, str, float]] = []


def stamp(proposal_id: str, stage: str, at: float | None = None) -> None:
    """Record that `proposal_id` reached `stage` now (or at `at`, a perf_counter time)."""
    if len(_stamps) < MAX_STAMPS:
        _stamps.append((proposal_id, stage, time.perf_counter() if at is None else at))


def _dump() -> None:
    tmp = PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_stamps, f)
    os.replace(tmp, PATH)


if ON:
    atexit.register(_dump)
