"""What every layer's findings share: the read-only command as the operator would type it in that vantage,
and one way to record a finding with its evidence."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from bundle.models import (
    DnsSlice,
    Evidence,
    Finding,
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


@dataclass
class FindingList:
    """Findings of one layer in one vantage, each pointing into one bundle member."""

    layer: str
    vantage: Vantage
    member: str
    items: list[Finding] = field(default_factory=list)

    def add(self, fid: str, severity: Severity, target: str | None, summary: str, pointer: str,
            command: str) -> None:
        self.items.append(Finding(id=fid, severity=severity, layer=self.layer, vantage=self.vantage.id,
                                  target=target, summary=summary,
                                  evidence=[Evidence(member=self.member, pointer=pointer)],
                                  next_command=in_vantage(self.vantage, command)))
