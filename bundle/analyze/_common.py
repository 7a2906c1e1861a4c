"""What every layer's findings share: the read-only command as the operator would type it in that vantage,
and one way to record a finding with its evidence."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from bundle.models import (
    CaptureRun,
    CountersSlice,
    DnsSlice,
    Evidence,
    Finding,
    FindingTarget,
    Layer,
    NatSlice,
    RouteSlice,
    Severity,
    SocketsSlice,
    Vantage,
    VantageKind,
)


def in_vantage(vantage: Vantage, command: str) -> str:
    """`ip netns exec NAME …` or `nsenter -t PID -n …` around a read-only command, as the vantage needs; a
    pipeline or a list of commands runs whole inside (`sh -c '…'`), not just its first command."""
    if vantage.kind not in (VantageKind.NETNS_NAME, VantageKind.NETNS_PID) or not vantage.ref:
        return command
    if any(c in command for c in ";|&"):
        command = f"sh -c {shlex.quote(command)}"
    if vantage.kind is VantageKind.NETNS_NAME:
        return f"ip netns exec {shlex.quote(vantage.ref)} {command}"
    return f"nsenter -t {shlex.quote(vantage.ref)} -n {command}"


@dataclass
class VantageDocs:
    """One vantage's documents (any may be absent), as the cross-slice analyses read them."""

    vantage: str
    route: RouteSlice | None = None
    sockets: SocketsSlice | None = None
    dns: DnsSlice | None = None
    nat: NatSlice | None = None
    ruleset: str | None = None  # `nft list ruleset` as the NAT slice kept it
    capture: CaptureRun | None = None
    counters: CountersSlice | None = None
    vantage_model: Vantage | None = None

    def holds(self, address: str | None) -> bool:
        """Whether an interface of this vantage has the address."""
        return address is not None and self.route is not None and any(
            a.address == address for a in self.route.addresses)

    def translates(self, address: str | None) -> bool:
        """Whether this vantage's dataplane rewrites the address as a Service frontend (IPVS also puts every
        ClusterIP on kube-ipvs0: held there, served by no socket of this vantage)."""
        return address is not None and self.nat is not None and any(s.address == address for s in self.nat.services)


def about(address: str | None = None, port: int | None = None, name: str | None = None) -> FindingTarget:
    return FindingTarget(address=address, port=port, name=name)


def split_endpoint(text: str | None) -> tuple[str | None, int | None]:
    """'10.0.0.1:80', '[fd00::1]:80' or a bare address -> (address, port); the capture analysis writes them so."""
    if not text:
        return None, None
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        return addr, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") == 1:
        addr, _, port = text.partition(":")
        return addr, int(port) if port.isdigit() else None
    return text, None


@dataclass
class FindingList:
    """Findings of one layer in one vantage, each pointing into one bundle member."""

    layer: Layer
    vantage: Vantage
    member: str
    items: list[Finding] = field(default_factory=list)

    def add(self, fid: str, severity: Severity, target: FindingTarget | None, summary: str, pointer: str,
            command: str) -> None:
        self.items.append(Finding(id=fid, severity=severity, layer=self.layer, vantage=self.vantage.id,
                                  target=target, summary=summary,
                                  evidence=[Evidence(member=self.member, pointer=pointer)],
                                  next_command=in_vantage(self.vantage, command)))
