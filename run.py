#!/usr/bin/env python3
"""bracketgate entry point: `python run.py [command] ...` (no command = the daemon).

  daemon            the trading daemon (default)
  sim               the paper TWS alone (a TWS-wire-protocol paper broker)
  schema            print the JSON Schema of every bus/MQTT message
  journal           print the journal as JSON lines
  submit            publish one proposal over MQTT and print the decision
  halt|reduce|resume  change the trading state over MQTT ({prefix}/control)
  status            print the retained status and portfolio from MQTT
  dump              JSON dump of accounts, positions, orders, executions from IB
  smoke             order smoke test (what-if only unless ALLOW_ORDERS=1 and IBKR_PAPER=1)
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    command = argv[0] if argv and not argv[0].startswith("-") else "daemon"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if command == "daemon":
        from core.app import main as daemon_main

        return daemon_main(rest)
    if command == "sim":
        from sim.cli import main as sim_main

        return sim_main(rest)
    if command == "schema":
        import json

        from bus.messages import json_schemas

        print(json.dumps(json_schemas(), indent=2))
        return 0
    if command == "journal":
        from adapters.journal import main as journal_main

        return journal_main(rest)
    if command in ("submit", "halt", "reduce", "resume", "status"):
        from core.operator import main as operator_main

        return operator_main([command, *rest])
    if command in ("dump", "smoke"):
        from adapters.ib_tools import main as tools_main

        return tools_main([command, *rest])
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
