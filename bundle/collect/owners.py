"""Which processes hold which sockets: a walk of /proc/*/fd, and how much of it we could see."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from bundle.models import Owner, OwnerScan


class Holder(NamedTuple):
    """(pid, command, fd): plain tuples, since a busy node has tens of thousands of them."""

    pid: int
    command: str
    fd: int

    def model(self) -> Owner:
        return Owner(pid=self.pid, command=self.command, fd=self.fd)


@dataclass
class OwnerMap:
    by_inode: dict[int, list[Holder]] = field(default_factory=dict)
    scan: OwnerScan = field(default_factory=lambda: OwnerScan(processes=0, denied=0, uid=os.geteuid(), complete=True))


def _pids(proc: str) -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def scan_owners(wanted: set[int], proc: str = "/proc") -> OwnerMap:
    """Map socket inodes to (pid, command, fd). Processes whose fds we may not read are counted, not ignored.

    Processes in the caller's own netns are walked first; the others only while some wanted inode is
    still unowned (a socket can be held outside the netns it lives in, but rarely is). On a node with
    many pods this keeps each vantage's walk to its own processes.
    """
    result = OwnerMap()
    denied = 0
    pids = _pids(proc)
    try:
        own = os.stat(f"{proc}/self/ns/net").st_ino
    except OSError:
        own = -1
    first: list[int] = []
    rest: list[int] = []
    for pid in pids:
        try:
            (first if os.stat(f"{proc}/{pid}/ns/net").st_ino == own else rest).append(pid)
        except PermissionError:
            rest.append(pid)
        except OSError:
            continue
    missing = set(wanted)
    for group in (first, rest):
        if not missing:
            break
        for pid in group:
            status = _walk(proc, pid, wanted, missing, result.by_inode)
            denied += status
    result.scan = OwnerScan(processes=len(pids), denied=denied, uid=os.geteuid(), complete=denied == 0)
    return result


def _walk(proc: str, pid: int, wanted: set[int], missing: set[int], out: dict[int, list[Holder]]) -> int:
    """Record one process's sockets; 1 when its fds could not be read, else 0."""
    try:
        dfd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        return 1
    except OSError:  # the process exited meanwhile
        return 0
    command: str | None = None
    try:
        for fd in os.listdir(dfd):
            try:
                link = os.readlink(fd, dir_fd=dfd)
            except PermissionError:  # listing allowed (CAP_DAC_READ_SEARCH) but not ptrace-read access
                return 1
            except OSError:
                continue
            if link[:8] != "socket:[":
                continue
            inode = int(link[8:-1])
            if inode not in wanted:
                continue
            if command is None:
                command = _comm(proc, pid)
            out.setdefault(inode, []).append(Holder(pid, command, int(fd)))
            missing.discard(inode)
    except OSError:
        return 0
    finally:
        os.close(dfd)
    return 0


def _comm(proc: str, pid: int) -> str:
    try:
        with open(f"{proc}/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"
