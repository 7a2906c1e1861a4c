"""Which processes hold which sockets: a walk of /proc/*/fd, and how much of it we could see."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bundle.models import Owner, OwnerScan


@dataclass
class OwnerMap:
    by_inode: dict[int, list[Owner]] = field(default_factory=dict)
    scan: OwnerScan = field(default_factory=lambda: OwnerScan(processes=0, denied=0, uid=os.geteuid(), complete=True))


def scan_owners(wanted: set[int] | None = None, proc: str = "/proc") -> OwnerMap:
    """Map socket inodes to (pid, command, fd). Processes whose fds we may not read are counted, not ignored."""
    result = OwnerMap()
    processes = denied = 0
    try:
        entries = os.scandir(proc)
    except OSError:
        result.scan = OwnerScan(processes=0, denied=0, uid=os.geteuid(), complete=False)
        return result
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            processes += 1
            fd_dir = f"{proc}/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except PermissionError:
                denied += 1
                continue
            except OSError:  # the process exited meanwhile
                continue
            command: str | None = None
            for fd in fds:
                try:
                    link = os.readlink(f"{fd_dir}/{fd}")
                except PermissionError:  # listing allowed (CAP_DAC_READ_SEARCH) but not ptrace-read access
                    denied += 1
                    break
                except OSError:
                    continue
                if not link.startswith("socket:["):
                    continue
                inode = int(link[8:-1])
                if wanted is not None and inode not in wanted:
                    continue
                if command is None:
                    command = _comm(proc, pid)
                result.by_inode.setdefault(inode, []).append(Owner(pid=pid, command=command, fd=int(fd)))
    result.scan = OwnerScan(processes=processes, denied=denied, uid=os.geteuid(), complete=denied == 0)
    return result


def _comm(proc: str, pid: int) -> str:
    try:
        with open(f"{proc}/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"
