"""bench/bench_latency.py over several checkouts, alternated, and the medians of the trials.

    .venv/bin/python bench/latency_trials.py --repeat 3 --n 3000 before=/tmp/base after=.

Each round runs bench_latency.py once in each checkout (its own bench files: copy this
checkout's bench/bench_latency.py and bench/latency_raw.py into a base checkout first), in the
order given, then the next round; the samples of every trial are kept (--json), and the
summary prints, per checkout, the median over trials of each figure's p50 / p99 / max and of
each stage's p50, and the p50 ratios to the raw client measured in the same trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


FIGURES = ("mqtt_base", "entry", "approved", "rejected", "fsync")
RATIOS = (("entry", "raw due -> entry at TWS"), ("approved", "raw due -> 3 acks read"),
          ("daemon first leg sent -> 3 acks read", "raw first leg sent -> 3 acks read"),
          ("daemon what-if sent -> answered", "raw what-if sent -> answered"))


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summary(label: str, trials: list[dict]) -> list[str]:
    out = [f"{label}: {len(trials)} trials (median over trials of each trial's figure, [range])"]
    for f in FIGURES + tuple(k for k in trials[0] if k.startswith("raw ")):
        per = [t[f] for t in trials if t.get(f)]
        if not per:
            continue
        cells = []
        for name, fn in (("p50", statistics.median), ("p99", lambda x: pct(x, 99)), ("max", max)):
            vals = [fn(x) for x in per]
            cells.append(f"{name} {med(vals):6.2f} [{min(vals):.2f}-{max(vals):.2f}]")
        out.append(f"  {f:40} " + "  ".join(cells))
    for a, b in RATIOS:
        rs = [statistics.median(t[a]) / statistics.median(t[b]) for t in trials
              if t.get(a) and t.get(b)]
        if rs:
            out.append(f"  p50 ratio {a} / {b}: {med(rs):.2f} [{min(rs):.2f}-{max(rs):.2f}]")
    stages = trials[0].get("stages", {})
    out.append("  stages, p50 (median over trials):")
    for k in stages:
        vals = [statistics.median(t["stages"][k]) for t in trials if t.get("stages", {}).get(k)]
        if vals:
            out.append(f"    {k:45} {med(vals):6.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--out", default=None, help="directory for each trial's JSON and output")
    ap.add_argument("checkouts", nargs="+", help="label=path")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="bg-lat-trials-"))
    out.mkdir(parents=True, exist_ok=True)
    labels = [c.split("=", 1) for c in a.checkouts]
    trials: dict[str, list[dict]] = {lab: [] for lab, _ in labels}
    for r in range(a.repeat):
        for lab, path in labels:
            js = out / f"{lab}-{r}.json"
            with (out / f"{lab}-{r}.txt").open("w") as f:
                rc = subprocess.run([sys.executable, "bench/bench_latency.py", "--n", str(a.n),
                                     "--json", str(js)], cwd=path, stdout=f,
                                    stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
            if rc == 0 and js.exists():
                trials[lab].append(json.loads(js.read_text()))
            print(f"round {r} {lab}: rc={rc} ({out / f'{lab}-{r}.txt'})", flush=True)
    for lab, ts in trials.items():
        if ts:
            print("\n".join(summary(lab, ts)))


if __name__ == "__main__":
    main()
