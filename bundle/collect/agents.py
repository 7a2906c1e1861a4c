"""One vantage's agent: a `python -m bundle.collect.agent` process (entered into its netns) fed the request as
JSON on stdin, whose JSON-line events are forwarded to the engine's queue."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
from typing import Any

from bundle.collect.vantage import VantageSpec


class Agent(threading.Thread):
    """Starts one vantage's agent and forwards its JSON lines to the engine's queue."""

    def __init__(self, spec: VantageSpec, request: dict[str, Any], events: queue.Queue[tuple[str, dict[str, Any]]]) -> None:
        super().__init__(daemon=True, name=f"agent-{spec.id}")
        self.spec = spec
        self.request = request
        self.events = events
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = tempfile.TemporaryFile()

    def run(self) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bundle.collect.agent"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            )
            assert self.proc.stdin is not None and self.proc.stdout is not None
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
            self.events.put((self.spec.id, {"event": "exit"}))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def stderr_tail(self, limit: int = 2000) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-limit:].decode(errors="replace")
