"""Where evidence is seen from: the host netns, a named netns, a process's netns, a netns path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bundle._netns import named_netns_path
from bundle.errors import UsageError
from bundle.models import VantageKind


@dataclass(frozen=True)
class VantageSpec:
    id: str
    kind: VantageKind
    ref: str | None
    path: Path | None  # None: stay in the collector's own netns

    def fate(self, inode: int | None) -> str | None:
        """What became of the netns entered as `inode` by now: removed, replaced, or None when still there."""
        if self.path is None or inode is None:
            return None
        try:
            now = self.path.stat().st_ino
        except OSError:
            return f"{self.path} no longer exists: the netns was removed during the collection"
        if now != inode:
            return f"{self.path} now names another netns (inode {now}, was {inode}): replaced during the collection"
        return None

    def problem(self) -> str | None:
        """Why this vantage cannot be entered, checked before any agent starts."""
        if self.path is None:
            return None
        if not self.path.exists():
            return f"netns {self.ref} not found ({self.path} does not exist)"
        return None


def safe_id(text: str) -> str:
    """A vantage id fit for member paths."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64]


def host() -> VantageSpec:
    return VantageSpec(id="host", kind=VantageKind.HOST, ref=None, path=None)


def named(name: str) -> VantageSpec:
    try:
        path = named_netns_path(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return VantageSpec(id=f"netns-{safe_id(name)}", kind=VantageKind.NETNS_NAME, ref=name, path=path)


def pid(value: str) -> VantageSpec:
    if not value.isdigit() or int(value) <= 0:
        raise UsageError(f"--netns-pid takes a process id, not {value!r}")
    return VantageSpec(id=f"pid-{int(value)}", kind=VantageKind.NETNS_PID, ref=str(int(value)),
                       path=Path(f"/proc/{int(value)}/ns/net"))


def path(value: str) -> VantageSpec:
    p = Path(value)
    return VantageSpec(id=f"path-{safe_id(p.name or 'netns')}", kind=VantageKind.NETNS_PATH, ref=value, path=p)


def dedupe(specs: list[VantageSpec]) -> list[VantageSpec]:
    """Drop repeats and make ids unique, keeping the operator's order."""
    out: list[VantageSpec] = []
    seen: set[str] = set()
    for spec in specs:
        key = str(spec.path) if spec.path else "host"
        if key in seen:
            continue
        seen.add(key)
        vid, n = spec.id, 2
        while any(o.id == vid for o in out):
            vid, n = f"{spec.id}-{n}", n + 1
        out.append(VantageSpec(id=vid, kind=spec.kind, ref=spec.ref, path=spec.path))
    return out

