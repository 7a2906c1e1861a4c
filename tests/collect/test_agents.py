"""The agent processes: forked from a single-threaded collect (no second interpreter), exec'd from a process with
other threads running. Real processes, real pipes; each agent is given a netns path that does not exist, so it
reports that and ends without touching the machine."""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

from bundle.collect import vantage
from bundle.collect.agents import Agent, _Forked


def _request(tmp: Path) -> bytes:
    return json.dumps({"vantage_id": "nowhere", "netns_path": str(tmp / "no-such-netns"), "targets": [],
                       "timeout_s": 5, "slices": []}).encode()


def _events(stdout) -> list[dict]:
    return [json.loads(line) for line in stdout]


def _fds(pid: int) -> set[int]:
    try:
        return {int(n) for n in os.listdir(f"/proc/{pid}/fd")}
    except FileNotFoundError:
        return set()


def test_forked_agent_holds_only_its_own_pipes(tmp_path):
    """Two agents forked one after the other: the second, waiting for its request, must hold no copy of the
    first's stdin (the first would never see its end of file) — the first finishes while the second waits, and
    each holds descriptors 0, 1, 2 only. Both run as forks of this very process (same command line)."""
    with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2:
        _two_forks(tmp_path, err1, err2)


def _two_forks(tmp_path: Path, err1, err2) -> None:
    first = _Forked(err1)
    second = _Forked(err2)
    try:
        cmdline = Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
        assert Path(f"/proc/{second.pid}/cmdline").read_bytes() == cmdline
        end = time.monotonic() + 10
        while _fds(second.pid) != {0, 1, 2} and time.monotonic() < end:
            time.sleep(0.02)
        assert _fds(second.pid) == {0, 1, 2}
        first.stdin.write(_request(tmp_path))
        first.stdin.close()
        events = _events(first.stdout)
        assert first.wait() == 0
        assert [e["event"] for e in events] == ["vantage", "done"]
        assert events[0]["entered"] is False and "no-such-netns" in events[0]["error"]
        assert second.poll() is None  # still waiting for its own request
        second.stdin.write(_request(tmp_path))
        second.stdin.close()
        assert [e["event"] for e in _events(second.stdout)] == ["vantage", "done"]
        assert second.wait() == 0
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()


def test_agent_execs_when_other_threads_run(tmp_path):
    """A thread besides this one (a watch's prober): a fork would copy locks it may hold, so the agent is a fresh
    `python -m bundle.collect.agent`; it delivers the same events."""
    hold = threading.Event()
    other = threading.Thread(target=hold.wait, daemon=True)
    other.start()
    events: queue.Queue = queue.Queue()
    spec = vantage.path(str(tmp_path / "no-such-netns"))
    agent = Agent(spec, json.loads(_request(tmp_path)), events)
    try:
        agent.spawn()
        assert not isinstance(agent.proc, _Forked)
        assert b"bundle.collect.agent" in Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes()
    finally:
        hold.set()
        other.join()
    agent.start()
    agent.join(timeout=30)
    got = []
    while not events.empty():
        got.append(events.get()[1]["event"])
    agent.stderr.close()
    assert got == ["vantage", "done", "exit"]
