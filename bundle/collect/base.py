"""What a collector declares and returns; the engine does the running.

A collector runs inside its vantage's netns (in the agent process), returns
documents and artifacts, and never prints. Needs are values the engine checks,
so "skipped: needs CAP_NET_ADMIN" lands in the manifest without an `if` buried
in the collector.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from bundle.models import MediaType, Model, Provenance, SliceStatus
from bundle.models.request import CollectOptions

T = TypeVar("T")


@dataclass(frozen=True)
class ResolvedTarget:
    """A target as collectors see it: always an address (a name target is resolved in the vantage first)."""

    spec: str
    address: str
    port: int | None = None
    name: str | None = None
    # the forms a socket row may show it in: an IPv4 target also as ::ffff:a.b.c.d (a dual-stack socket's
    # v4-mapped peer — Java clients, servers bound to ::)
    forms: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        mapped = {f"::ffff:{self.address}"} if "." in self.address and ":" not in self.address else set()
        object.__setattr__(self, "forms", frozenset({self.address} | mapped))


@dataclass(frozen=True)
class Needs:
    """Preconditions: capabilities without which the slice is skipped outright."""

    capabilities: tuple[str, ...] = ()

    def unmet(self, have: list[str]) -> list[str]:
        return [f"needs {cap}" for cap in self.capabilities if cap not in have]


@dataclass
class Artifact:
    name: str
    data: bytes
    media_type: MediaType | str
    provenance: Provenance

    @classmethod
    def document(cls, name: str, doc: Model, media_type: MediaType, source: str, started: float) -> Artifact:
        return cls(
            name=name,
            data=doc.model_dump_json(indent=1).encode(),
            media_type=media_type,
            provenance=Provenance(source=source, duration_s=round(time.monotonic() - started, 6)),
        )


@dataclass
class SliceResult:
    status: SliceStatus
    artifacts: list[Artifact] = field(default_factory=list)
    reason: str | None = None


def _no_gate() -> None:
    return None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class SliceContext:
    vantage_id: str
    targets: tuple[ResolvedTarget, ...]
    passive: bool
    deadline: float  # time.monotonic() value the slice must finish by
    capabilities: tuple[str, ...] = ()
    options: CollectOptions = field(default_factory=CollectOptions)  # what the command line asked, typed
    vantage_kind: str = "host"  # how the vantage was named (netns_name, netns_pid, ...), for where files live
    vantage_ref: str | None = None
    disk_free: int | None = None  # bytes free where the bundle is written
    # Called by a collector between its passive reads and its first probe packet: it returns once every slice
    # of the vantage has taken its passive snapshot, so no table records another slice's probes.
    probe_gate: Callable[[], None] = _no_gate
    resolved_names: tuple[Any, ...] = ()  # NameReports of name targets, resolved before the slices started
    # True once every other slice of the vantage has finished: a capture stops then (its window covers them)
    peers_done: Callable[[], bool] = _never
    alone: bool = False  # no slice but window slices runs beside this one (`--slice counters` alone)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def trend(self, started: float, wanted: int, interval: float, take: Callable[[], T]) -> tuple[list[T], bool]:
        """Samples 2..wanted of a trend (the caller took the first at `started`), one per interval, stopping
        short of the deadline: (the samples, whether the deadline cut the trend)."""
        out: list[T] = []
        for i in range(1, wanted):
            wake = started + i * interval
            if wake > self.deadline - 0.5:
                return out, True
            time.sleep(max(0.0, wake - time.monotonic()))
            out.append(take())
        return out, False


class Collector(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[Needs] = Needs()
    # True for a slice that records over the others' window (capture, counters): it stops when they are done,
    # so it never waits for another such slice.
    spans_window: ClassVar[bool] = False

    @abstractmethod
    def collect(self, ctx: SliceContext) -> SliceResult:
        """Gather this slice from the current netns."""
