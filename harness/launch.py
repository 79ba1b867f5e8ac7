"""The `deferbench` console script: a ^C while the command line's modules still load (the
first tenth of a second) ends as quietly as one during a command, without a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from harness.cli import main as run_command

        return run_command()
    except KeyboardInterrupt:  # before any command's own stop handling was in place
        print("deferbench: interrupted", file=sys.stderr)
        return 130
