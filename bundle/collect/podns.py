"""A pod's network namespace by its UID: the kubelet puts every container of a pod in a cgroup whose path
names the pod UID, so a process whose /proc/PID/cgroup holds it shares the pod's netns.

Layouts (cgroup v1 and v2 alike, each line of /proc/PID/cgroup is `id:controllers:path`):
  cgroupfs driver:  /kubepods/besteffort/pod<uid>/<container-id>, /kubepods/pod<uid>/<container-id>
  systemd driver:   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _ for ->.slice/
                    cri-containerd-<id>.scope (containerd) or crio-<id>.scope (CRI-O)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_PROCS = 200_000


@dataclass(frozen=True)
class PodProcess:
    pid: int
    cgroup: str  # the matching cgroup path
    netns_inode: int | None


def pod_markers(uid: str) -> tuple[str, str]:
    """The two spellings of a pod UID in cgroup paths: cgroupfs (`pod<uid>`) and systemd (`pod<uid_with_underscores>`)."""
    return f"pod{uid}", f"pod{uid.replace('-', '_')}"


def _matches(path: str, markers: tuple[str, str]) -> bool:
    for part in path.split("/"):
        for marker in markers:
            # cgroupfs: the component is exactly pod<uid>; systemd: ...-pod<uid_>.slice
            if part == marker or part.endswith(f"-{marker}.slice") or part == f"{marker}.slice":
                return True
    return False


def find_pod_process(uid: str, proc: Path = Path("/proc")) -> PodProcess | None:
    """The lowest PID in a cgroup of this pod (the pause container's, when it is visible), or None."""
    if not _UID.match(uid):
        return None
    markers = pod_markers(uid)
    found: list[PodProcess] = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    for name in entries[:MAX_PROCS]:
        if not name.isdigit():
            continue
        try:
            text = (proc / name / "cgroup").read_text()
        except OSError:
            continue  # gone, or not ours to read
        for line in text.splitlines():
            path = line.split(":", 2)[-1]
            if _matches(path, markers):
                try:
                    inode = os.stat(proc / name / "ns" / "net").st_ino
                except OSError:
                    inode = None
                found.append(PodProcess(int(name), path, inode))
                break
    return min(found, key=lambda p: p.pid) if found else None
