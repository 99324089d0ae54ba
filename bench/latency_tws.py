"""The paper TWS of bench/bench_latency.py in a process of its own (its work then does not share
the bench client's GIL), stamping each placeOrder as it arrives.

    python bench/latency_tws.py OUT.json      # prints one JSON line {"port", "control_port"}

Same server and settings as tests/fixtures/paper_tws.py `start_paper_tws` (pacing ON, 50
messages per client per second). Its `on_place_order` hook records (time.perf_counter(),
what_if, parent_id, order_ref) of every placeOrder; perf_counter is CLOCK_MONOTONIC on Linux,
one clock for every process of the machine, so the bench reads the stamps on its own schedule's
clock. On SIGTERM the stamps are written to OUT.json and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bracketgate.core.logs import configure_logging  # noqa: E402
from bracketgate.sim.server import PaperTWS  # noqa: E402

HOST = "127.0.0.1"


async def main(out: Path) -> int:
    if time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        print(json.dumps({"error": "perf_counter is not CLOCK_MONOTONIC here"}), flush=True)
        return 2
    tws = PaperTWS(None, host=HOST, port=0, seed=7, control_port=0, pacing_limit=50,
                   max_clients=32)
    stamps: list[tuple[float, bool, int, str]] = []

    def on_place(m: Any) -> None:
        stamps.append((time.perf_counter(), bool(m.what_if), int(m.parent_id or 0),
                       str(m.order_ref or "")))

    tws.on_place_order = on_place
    await tws.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(json.dumps({"event": "paper_tws_ready", "port": tws.port,
                      "control_port": tws.control_port}), flush=True)
    await stop.wait()
    await tws.stop()
    out.write_text(json.dumps(stamps))
    return 0


if __name__ == "__main__":
    configure_logging("json", "WARNING", stream=sys.stderr)
    raise SystemExit(asyncio.run(main(Path(sys.argv[1]))))
