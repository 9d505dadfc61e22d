"""The `iagcn` console script and `python -m iagcn`: signal handlers first, then the CLI.

Ctrl-C or SIGTERM while the CLI's modules are still being imported prints one line, not an import traceback.
Only the few lines before this module runs (the interpreter's own start-up) are out of reach.
"""
from __future__ import annotations

import contextlib
import os
import sys

from iagcn.processes import EXIT_SIGINT, EXIT_SIGTERM, exit_code_for, exit_quietly_on_signals, \
    install_cli_signal_handlers


def main() -> None:
    install_cli_signal_handlers()
    try:
        from iagcn.cli import main as cli_main
    except KeyboardInterrupt as e:
        if "--debug" in sys.argv[1:2]:
            raise
        print("interrupted while starting: nothing was done", file=sys.stderr, flush=True)
        os._exit(exit_code_for(e))  # nothing to clean up; half-imported modules' exit hooks must not run
    try:
        cli_main()
    except SystemExit as e:
        if e.code in (EXIT_SIGINT, EXIT_SIGTERM) and "--debug" not in sys.argv[1:2]:
            # interrupted, unwound, its line printed: skip the interpreter's shutdown, whose garbage collection
            # once hung after an interrupt (measured: 1 in ~60 start-up interrupts, in C, no Python frame)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(e.code)
        raise
    finally:
        exit_quietly_on_signals()  # interpreter shutdown (h5py, torch, atexit hooks): a signal exits, no traceback


if __name__ == "__main__":
    main()
