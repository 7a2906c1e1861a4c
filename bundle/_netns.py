"""Entering a network namespace and reading who we are: small, dependency-free.

Python 3.11 has no os.setns, so this calls libc's setns(2) through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

CAP_NAMES = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID "
    "CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN "
    "CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE "
    "CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME "
    "CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP "
    "CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ "
    "CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()


def setns_net(path: str | Path) -> None:
    """Move the calling thread (and, single-threaded, the process) into the netns at path."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def netns_inode(path: str | Path = "/proc/self/ns/net") -> int:
    return os.stat(path).st_ino


def effective_caps(field: str = "CapEff") -> tuple[str, list[str]]:
    """A capability set of this process (CapEff; CapBnd for the bounding set) as hex and as names."""
    hexval = "0"
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                hexval = line.split()[1]
                break
    bits = int(hexval, 16)
    names = [name for i, name in enumerate(CAP_NAMES) if bits >> i & 1]
    names += [f"CAP_{i}" for i in range(len(CAP_NAMES), 64) if bits >> i & 1]
    return hexval, names


def named_netns_path(name: str) -> Path:
    """/run/netns/NAME, refusing names that would leave that folder."""
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"not a netns name: {name!r}")
    return NETNS_RUN_DIR / name
