"""What one node's collect is asked (CollectRequest), what it reports as it goes (Progress) and what it ends
with (CollectOutcome): the values the CLI, the per-node engine and a fleet coordinator pass between them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bundle.archive import Bundle
from bundle.collect.kube import KubeRequest
from bundle.collect.vantage import VantageSpec
from bundle.models import Manifest, SliceStatus, Target
from bundle.models.request import CollectOptions

# What the caller adds once everything is collected (the CLI: findings.json): (path, bytes, media, source).
Finalizer = Callable[[Bundle], list[tuple[str, bytes, str, str]]]


@dataclass(frozen=True)
class CollectRequest:
    targets: list[Target]
    vantages: list[VantageSpec]
    output: Path | None = None
    force: bool = False  # --force: replace an existing output file (never otherwise)
    passive: bool = False
    timeout_s: float = 60.0
    ticket: str | None = None
    note: str | None = None
    argv: list[str] = field(default_factory=list)
    slices: list[str] | None = None
    options: CollectOptions = field(default_factory=CollectOptions)
    pcaps: list[Path] = field(default_factory=list)
    debug: bool = False
    kube: KubeRequest | None = None  # --service / --pod: ask the Kubernetes API first
    finalize: Finalizer | None = None  # members computed from what was collected (findings.json)
    client: str | None = None  # --client (a vantage id or the netns as named); the kube phase sets the pod's


@dataclass(frozen=True)
class Progress:
    vantage: str
    slice: str
    status: SliceStatus
    duration_s: float
    reason: str | None


@dataclass
class CollectOutcome:
    path: Path | None
    manifest: Manifest | None
    exit_code: int
    interrupted: bool = False
