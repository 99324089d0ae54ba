"""Kill storm at the named crash points (issue 8): the daemon SIGKILLs itself at each step of a
proposal's path (core/crashpoints.py) while an agent streams proposals at --rate per second.

mosquitto, the paper TWS (`run.py sim`) and the daemon (`run.py`) run as processes on loopback,
driven by tests/e2e/test_crash_points.py's `crash_storm` (the CI test runs it once per point):
every round starts a daemon armed at one point (a random 1st..3rd pass), streams proposals until
it kills itself, restarts it unarmed on the same journal and MQTT session with limits that deny
every fresh decision, waits for every proposal's decision and audits (test_recovery_chaos.audit):
every proposal one decision that agrees with the paper TWS, 0 live brackets behind a rejection,
0 approvals without their three legs, every filled entry under a working stop.

    .venv/bin/python bench/bench_crash_points.py [--kills 56] [--rate 50] [--seed N]

Exit status 1 when an invariant is violated (the findings are printed).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.core.crashpoints import POINTS  # noqa: E402
from tests.e2e.test_crash_points import crash_storm  # noqa: E402
from tests.e2e.test_recovery_chaos import Rig  # noqa: E402
from tests.fixtures.mosquitto import MOSQUITTO_BINARY, MosquittoServer  # noqa: E402
from tests.fixtures.paper_tws import spawn_paper_tws, stop_process  # noqa: E402


def line(text: str = "") -> None:
    print(text, flush=True)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=7 * len(POINTS),
                    help="SIGKILLs wanted (rounds go on until that many, at most twice as many)")
    ap.add_argument("--rate", type=float, default=50.0, help="proposals per second")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    binary = shutil.which(MOSQUITTO_BINARY) or shutil.which("mosquitto")
    if binary is None:
        line("mosquitto not found (apt-get install mosquitto)")
        return 2
    line(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    line(f"python {platform.python_version()} on {platform.machine()}, seed {seed} "
         f"(replay the choices with --seed {seed})")
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as td:
        tmp = Path(td)
        broker = MosquittoServer(binary, tmp / "mosquitto")
        broker.start()
        proc, tws = await spawn_paper_tws()
        try:
            work = tmp / "storm"
            work.mkdir()
            t0 = time.monotonic()
            async with Rig(tws, broker.url, work, random.Random(seed)) as rig:
                result, hits = await crash_storm(rig, args.kills, rate=args.rate,
                                                 log=lambda s: line("  " + s))
                await rig.d.terminate()
            took = time.monotonic() - t0
        finally:
            await stop_process(proc, tws)
            broker.stop()
    line(f"== {args.kills} rounds in {took:.0f} s; SIGKILLs at crash points: {sum(hits.values())} "
         f"{dict(sorted(hits.items()))}")
    line(f"   {result.line()}")
    line(f"   rejection codes {dict(result.rejection_codes)}")
    sample = {}
    for ds in rig.decisions().values():
        for r in ds[0].get("reasons") or ():
            sample.setdefault(r["code"], r)
    for code, r in sample.items():
        line(f"   e.g. {code}: {r.get('message')} limit={r.get('limit')} value={r.get('value')}")
    for v in result.violations[:50]:
        line(f"   VIOLATION {v}")
    line(f"== invariant violations: {len(result.violations)}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
