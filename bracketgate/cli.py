"""bracketgate's commands: `bracketgate [command] ...` installed, `python run.py [command] ...`
from a checkout; no command (or only flags) runs the daemon. `COMMAND --help` shows one
command's own options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable


def _daemon(rest: list[str]) -> int:
    from bracketgate.core.app import main

    return main(rest)


def _sim(rest: list[str]) -> int:
    from bracketgate.sim.cli import main

    return main(rest)


def _schema(rest: list[str]) -> int:
    import json

    from bracketgate.bus.messages import json_schemas

    argparse.ArgumentParser(prog="run.py schema",
                            description="print the JSON Schema of every bus/MQTT message",
                            ).parse_args(rest)
    print(json.dumps(json_schemas(), indent=2))
    return 0


def _codes(rest: list[str]) -> int:
    from bracketgate.bus.denial_codes import main

    return main(rest)


def _journal(rest: list[str]) -> int:
    from bracketgate.adapters.journal import main

    return main(rest)


def _operator(command: str) -> Callable[[list[str]], int]:
    def run(rest: list[str]) -> int:
        from bracketgate.core.operator import main

        return main([command, *rest])
    return run


def _orders(rest: list[str]) -> int:
    from bracketgate.core.order_files import main

    return main(rest)


def _tools(command: str) -> Callable[[list[str]], int]:
    def run(rest: list[str]) -> int:
        from bracketgate.adapters.ib_tools import main

        return main([command, *rest])
    return run


# name -> (one line for --help, handler of the command's own arguments)
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "daemon": ("the trading daemon (the default when no command is given)", _daemon),
    "sim": ("the paper TWS alone (a TWS-wire-protocol paper broker)", _sim),
    "schema": ("print the JSON Schema of every bus/MQTT message", _schema),
    "codes": ("every denial code with its meaning (--markdown: docs/DENIAL_CODES.md)", _codes),
    "journal": ("print the journal as JSON lines", _journal),
    "submit": ("publish one proposal over MQTT and print the decision", _operator("submit")),
    "orders": ("send an order file (JSON list or CSV) through the gate, one decision per row",
               _orders),
    "halt": ("halt trading over MQTT ({prefix}/control)", _operator("halt")),
    "reduce": ("reduce-only trading over MQTT", _operator("reduce")),
    "resume": ("resume trading over MQTT", _operator("resume")),
    "flatten": ("halt, cancel working entries, close positions at market (--agent A, --symbol S:"
                " only those); prints what was done", _operator("flatten")),
    "status": ("one line of the daemon's status (--json: all of it); exit 0 online, 1 degraded,"
               " 3 offline", _operator("status")),
    "dump": ("JSON dump of accounts, positions, orders, executions from IB", _tools("dump")),
    "smoke": ("order smoke test (what-if only unless ALLOW_ORDERS=1 and IBKR_PAPER=1)",
              _tools("smoke")),
}


def build_parser() -> argparse.ArgumentParser:
    prog = "bracketgate" if Path(sys.argv[0]).name == "bracketgate" else "run.py"
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (help_, _) in COMMANDS.items():
        # the command parses its own arguments (and its own --help)
        sub.add_parser(name, help=help_, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    """`run.py` / the installed `bracketgate` command."""
    if argv is None:
        argv = sys.argv[1:]
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return _daemon(argv)           # `run.py` alone, or `run.py --env-file F`: the daemon
    if argv[0] == "help":             # `run.py help` / `run.py help COMMAND`
        argv = [argv[1], "--help"] if len(argv) > 1 else ["--help"]
    if argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        build_parser().parse_args([name])   # argparse's "invalid choice" message, exit 2
        return 2
    return COMMANDS[name][1](rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
