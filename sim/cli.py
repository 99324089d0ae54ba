"""`python run.py sim ...`: run the paper TWS (API port + control port) until SIGINT/SIGTERM.

    python run.py sim --port 4002 --control-port 4102 [--state FILE] [--seed N] [--host 127.0.0.1]
                      [--tick-interval 1.0] [--pacing 50] [--market-data-lines 100]
                      [--log-level INFO]

Logs are JSON lines on stdout. Once both ports listen, one `paper_tws_ready` line carries the
actual ports (useful with `--port 0`). With --state FILE the brokerage state is loaded at start
(if the file exists) and saved on every change and at stop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from bracketgate.core.logs import configure_logging, get_logger
from bracketgate.sim.engine import Brokerage
from bracketgate.sim.market import PriceFeed
from bracketgate.sim.model import AccountState
from bracketgate.sim.server import PaperTWS, load_state
from bracketgate.sim.universe import Universe

log = get_logger("sim.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py sim", description="Paper TWS: a TWS API server "
                                "with a matching engine and a loopback JSON control port.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4002, help="TWS API port (0 = any free port)")
    p.add_argument("--control-port", type=int, default=4102,
                   help="HTTP control port (0 = any free port)")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="JSON state file: loaded at start, saved on change and at stop")
    p.add_argument("--seed", type=int, default=7, help="seed of the price paths (default 7)")
    p.add_argument("--tick-interval", type=float, default=1.0,
                   help="seconds between price-path steps; 0 = prices move only by control")
    p.add_argument("--pacing", type=int, default=50,
                   help="max messages per second per client before error 100 (0 = off)")
    p.add_argument("--max-clients", type=int, default=32)
    p.add_argument("--market-data-lines", type=int, default=100,
                   help="concurrent reqMktData lines before error 101, as TWS (0 = no cap)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--account", default=None, metavar="ID",
                   help="the account id the TWS presents (default DU1234567, a paper id); e.g. "
                        "U1234567 plays a live account behind a paper port (the daemon's account guard)")
    return p


async def run(args: argparse.Namespace) -> int:
    universe = Universe()
    state = load_state(args.state) if args.state else None
    engine = Brokerage.from_dict(state, universe) if state else Brokerage(
        universe, account=AccountState(account_id=args.account) if args.account else None)
    if state and args.account:
        engine.account.account_id = args.account
    feed = PriceFeed(universe, seed=args.seed)
    tws = PaperTWS(engine, universe, host=args.host, port=args.port, feed=feed,
                   control_port=args.control_port, max_clients=args.max_clients,
                   pacing_limit=args.pacing, tick_interval=args.tick_interval,
                   state_file=args.state, max_market_data_lines=args.market_data_lines)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await tws.start()
    try:
        log.info("paper_tws_ready", host=args.host, port=tws.port, control_port=tws.control_port,
                 state=args.state or "", seed=args.seed, loaded_state=bool(state),
                 mode="PAPER TWS (simulated broker, no real orders)")
        await stop.wait()
        log.info("paper_tws_stopping")
    finally:
        await tws.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging("json", args.log_level)
    try:
        return asyncio.run(run(args))
    except OSError as e:  # port in use, bad state file path...
        log.error("paper_tws_failed", error=str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
