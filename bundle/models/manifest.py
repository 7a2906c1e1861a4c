"""The bundle manifest: provenance of the bundle and of every member in it."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from bundle.models._base import Model

FORMAT_NAME = "netbundle"
FORMAT_VERSION = "1.5"
# The earliest format version this reader can read (plaso-style compatibility).
READ_COMPATIBLE_FORMAT_VERSION = "1.5"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})$")


def parse_version(text: str) -> tuple[int, int]:
    """Split "MAJOR.MINOR"; ValueError on anything else."""
    m = _VERSION.match(text)
    if not m:
        raise ValueError(f"not a MAJOR.MINOR version: {text!r}")
    return int(m.group(1)), int(m.group(2))


class MediaType(StrEnum):
    MANIFEST = "application/vnd.netbundle.manifest.v1+json"
    ROUTE = "application/vnd.netbundle.route.v1+json"
    SOCKETS = "application/vnd.netbundle.sockets.v1+json"
    SOCKET_TABLE = "application/vnd.netbundle.socket-table.v1+json"
    DNS = "application/vnd.netbundle.dns.v1+json"
    RESOLV_CONF = "text/vnd.netbundle.resolv-conf"
    CAPTURE = "application/vnd.netbundle.capture.v1+json"
    PCAPNG = "application/x-pcapng"
    CAPTURE_ANALYSIS = "application/vnd.netbundle.capture-analysis.v1+json"
    NAT = "application/vnd.netbundle.nat.v1+json"
    KUBE = "application/vnd.netbundle.kube.v1+json"
    FINDINGS = "application/vnd.netbundle.findings.v2+json"  # 1.2: structured targets, roles, explanations
    FINDINGS_V1 = "application/vnd.netbundle.findings.v1+json"  # 1.0/1.1: kept, not read (recomputed)
    COUNTERS = "application/vnd.netbundle.counters.v1+json"
    WATCH = "application/vnd.netbundle.watch.v1+json"  # 1.4: the flight recorder's record
    TRACEBACK = "text/vnd.netbundle.traceback"
    TEXT = "text/plain"
    JSON = "application/json"


class SliceStatus(StrEnum):
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"
    SKIPPED = "skipped"


class VantageKind(StrEnum):
    HOST = "host"
    NETNS_NAME = "netns_name"
    NETNS_PID = "netns_pid"
    NETNS_PATH = "netns_path"
    KUBERNETES_API = "kubernetes_api"


class Provenance(Model):
    """How one member came to be: which slice and vantage, from which call."""

    slice: str | None = None
    vantage: str | None = None
    source: str = Field(description="netlink request, file read, argv or API call that produced it")
    argv: list[str] | None = None
    exit_code: int | None = None
    duration_s: float = 0.0
    truncated: bool = False


class Member(Model):
    path: str = Field(description="path inside the bundle folder, '/'-separated")
    size: int = Field(ge=0)
    sha256: str
    media_type: MediaType | str
    provenance: Provenance

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in v or "\x00" in v:
            raise ValueError(f"member path must be relative and normalised: {v!r}")
        if v == "manifest.json":
            raise ValueError("manifest.json is not listed among the members")
        return v


class HostFacts(Model):
    hostname: str
    kernel: str
    boot_id: str | None = None
    machine: str = ""


class Privileges(Model):
    """Who a probe ran as, so missing data can be told from missing privilege."""

    uid: int
    euid: int
    cap_effective: str = Field(description="CapEff from /proc/self/status, hex")
    capabilities: list[str] = Field(description="names of the effective capabilities")


class Vantage(Model):
    id: str
    kind: VantageKind
    ref: str | None = Field(default=None, description="netns name, pid or path as given")
    netns_inode: int | None = None
    entered: bool = Field(description="whether the probe process ran inside that netns")
    privileges: Privileges | None = None
    error: str | None = None
    resolved: dict[str, list[str]] = Field(
        default_factory=dict, description="name targets as this vantage's resolver answered them (empty: no answer)"
    )
    lost: str | None = Field(
        default=None, description="the netns was removed or replaced before the collection ended (a pod deleted?): "
                                  "evidence taken after that may show the teardown, not the incident")


def endpoint_spec(address: str, port: int | None) -> str:
    """An address and port as written on a command line: 10.96.0.20:443, [fd00:10:96::14]:443, a bare address."""
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class Target(Model):
    spec: str = Field(description="as the operator wrote it")
    address: str | None = Field(default=None, description="an IP target's address")
    name: str | None = Field(default=None, description="a name target: each vantage resolves it itself")
    port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _one_of(self) -> Target:
        if (self.address is None) == (self.name is None):
            raise ValueError("a target has an address or a name, not both and not neither")
        return self


class SliceRun(Model):
    slice: str
    vantage: str
    status: SliceStatus
    reason: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    duration_s: float = 0.0
    monotonic_start_ns: int | None = Field(default=None, description="CLOCK_MONOTONIC: windows of slices compare")
    monotonic_end_ns: int | None = None
    members: list[str] = []


class Invocation(Model):
    argv: list[str]
    user: str
    uid: int
    exit_code: int
    ticket: str | None = None
    note: str | None = None
    passive: bool = False
    timeout_s: float


class Manifest(Model):
    format: str
    format_version: str
    read_compatible_version: str
    bundle_id: str
    created: datetime
    finished: datetime
    tool_version: str
    host: HostFacts
    invocation: Invocation
    targets: list[Target]
    vantages: list[Vantage]
    client: str | None = Field(default=None, description="the client vantage (--client, the pod of --pod, else "
                                                           "the first named): the ladder's verdict is its; null "
                                                           "before 1.2")
    slices: list[SliceRun]
    members: list[Member]
    redacted_from: str | None = Field(default=None, description="the SHA-256 of the bundle this copy was redacted "
                                                                "from (redact); null for an original")

    @field_validator("format")
    @classmethod
    def _name(cls, v: str) -> str:
        if v != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME} manifest")
        return v

    @field_validator("format_version", "read_compatible_version")
    @classmethod
    def _version(cls, v: str) -> str:
        parse_version(v)
        return v

    @field_validator("bundle_id")
    @classmethod
    def _bundle_id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", v):
            raise ValueError("bundle_id must be a plain folder name")
        return v
