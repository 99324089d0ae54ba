#!/usr/bin/env python3
"""bracketgate's entry point from a checkout: `python run.py [command] ...` (no command = the
daemon). Installed, the same is the `bracketgate` command (bracketgate/cli.py)."""

import sys

from bracketgate.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
