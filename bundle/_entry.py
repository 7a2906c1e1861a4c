"""The console-script entry: interrupts that land while Python is still importing end in one line, too."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


_MAIN_PID = os.getpid()


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM becomes KeyboardInterrupt in netbundle itself, so the bundle is still written.

    A forked helper (pyroute2 forks to enter namespaces) inherits this handler;
    there it must simply die, not unwind netbundle's own code a second time.
    """
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, interrupt)
    try:
        from bundle.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("netbundle: error: interrupted\n")
        return 130
    return cli_main()
