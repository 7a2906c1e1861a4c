"""One vantage's agent: a process (entered into its netns) fed the request as JSON on stdin, whose JSON-line events
are forwarded to the engine's queue.

The process is forked from this one when this one has a single thread — the collectors are imported already, so
an agent costs a fork, not a fresh interpreter's half a CPU-second of imports (what 40 nodes sharing a start time
feel). A process with other threads running (a watch: its prober and ring) execs `python -m bundle.collect.agent`
instead, since a fork copies the locks those threads may hold.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import IO, Any

from bundle.collect import agent
from bundle.collect.vantage import VantageSpec


class _Forked:
    """An agent forked from this process: the slice of Popen's interface the engine uses."""

    def __init__(self, stderr: IO[bytes]) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # what sits in a buffer would be written twice
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its events are what the tests check
            _child(in_r, out_w, stderr.fileno())
        os.close(in_r)
        os.close(out_w)
        self.pid = pid
        self.stdin: IO[bytes] = os.fdopen(in_w, "wb")
        self.stdout: IO[bytes] = os.fdopen(out_r, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by wait() in the agent's thread meanwhile
                return self.returncode if self.returncode is not None else -1
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = self.returncode if self.returncode is not None else -1
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _child(stdin: int, stdout: int, stderr: int) -> None:
    """The forked agent: only its three pipes open (an inherited copy of another agent's pipe would hold back
    that agent's end of file), none of the parent's objects ever collected (their descriptors are closed here), and
    never back into the parent's code."""
    try:
        gc.freeze()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd, to in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, to)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - for the life of the process
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        agent.main()  # ends the process
    except BaseException:  # noqa: BLE001 - whatever it is, the engine reads it from the stderr tail
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(70)  # agent.main() ends with its own exit: reached only when it could not run


class Agent(threading.Thread):
    """Starts one vantage's agent and forwards its JSON lines to the engine's queue."""

    def __init__(self, spec: VantageSpec, request: dict[str, Any], events: queue.Queue[tuple[str, dict[str, Any]]]) -> None:
        super().__init__(daemon=True, name=f"agent-{spec.id}")
        self.spec = spec
        self.request = request
        self.events = events
        self.proc: subprocess.Popen[bytes] | _Forked | None = None
        self.stderr = tempfile.TemporaryFile()
        self._spawn_error: OSError | None = None

    def spawn(self) -> None:
        """Start the process: from the thread that made the Agent, before any agent's thread runs (a fork then
        copies one thread only)."""
        try:
            if threading.active_count() == 1:
                self.proc = _Forked(self.stderr)
            else:
                self.proc = subprocess.Popen([sys.executable, "-m", "bundle.collect.agent"],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        except OSError as exc:
            self._spawn_error = exc

    def run(self) -> None:
        try:
            if self._spawn_error is not None:
                raise self._spawn_error
            assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(self.request).encode())
            self.proc.stdin.close()
            for line in self.proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.put((self.spec.id, event))
            self.proc.wait()
        except OSError as exc:
            self.events.put((self.spec.id, {"event": "crash", "reason": f"cannot start agent: {exc}"}))
        finally:
            if self.proc is not None and self.proc.stdout is not None:
                self.proc.stdout.close()
            self.events.put((self.spec.id, {"event": "exit"}))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def stderr_tail(self, limit: int = 2000) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-limit:].decode(errors="replace")
