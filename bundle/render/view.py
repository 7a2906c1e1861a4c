"""What every renderer shows, gathered once from a verified bundle."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundle.analyze import (
    VantageEvidence,
    capture_findings,
    dns_findings,
    nat_findings,
    route_findings,
    transport_findings,
)
from bundle.analyze.hops import ServiceHops, VantageDocs, service_hops
from bundle.archive import Bundle
from bundle.models import (
    CaptureAnalysis,
    CaptureRun,
    DnsSlice,
    Finding,
    KubeSlice,
    Manifest,
    NatSlice,
    NeighborState,
    RouteLookup,
    RouteSlice,
    SliceRun,
    Socket,
    SocketsSlice,
    Vantage,
)

BAD_NEIGHBOR_STATES = {NeighborState.FAILED, NeighborState.INCOMPLETE}  # STALE is shown, softer
# Capabilities whose absence hides evidence: netns entry, raw probes, netlink writes/dumps, other owners' /proc.
KEY_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH")
TREND_STATES = ("ESTAB", "SYN-SENT", "SYN-RECV", "CLOSE-WAIT", "TIME-WAIT", "FIN-WAIT-2", "LISTEN")
_LAYERS = {"route": 0, "transport": 1, "dns": 2, "service": 3}
_SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def lookup_label(lk: RouteLookup) -> str:
    """`10.96.0.10 from 10.244.1.2 iif cbr0`, as the operator would type it after `ip route get`."""
    return " ".join([lk.target] + ([f"from {lk.source}"] if lk.source else []) + ([f"iif {lk.iif}"] if lk.iif else []))


def missing_capabilities(vantage: Vantage) -> list[str]:
    if vantage.privileges is None:
        return list(KEY_CAPABILITIES)
    return [c for c in KEY_CAPABILITIES if c not in vantage.privileges.capabilities]


@dataclass
class VantageView:
    vantage: Vantage
    route: RouteSlice | None
    slices: list[SliceRun]
    sockets: SocketsSlice | None = None
    dns: DnsSlice | None = None
    capture: CaptureRun | None = None
    nat: NatSlice | None = None

    def target_sockets(self, address: str, port: int | None) -> list[Socket]:
        """The rows of one target: to it (client side) or on its port (server side)."""
        if self.sockets is None:
            return []
        return [s for s in self.sockets.sockets
                if (s.remote == address and (port is None or s.rport == port)) or (port is not None and s.lport == port)]


@dataclass
class View:
    manifest: Manifest
    vantages: list[VantageView]
    findings: list[Finding]
    # target -> vantage id -> lookup: "route get" side by side, host vs pod
    lookups: dict[str, dict[str, RouteLookup]] = field(default_factory=dict)
    operator_captures: list[CaptureAnalysis] = field(default_factory=list)
    kube: KubeSlice | None = None
    hops: list[ServiceHops] = field(default_factory=list)


def build_view(bundle: Bundle) -> View:
    m = bundle.manifest
    vantages = []
    findings: list[Finding] = []
    lookups: dict[str, dict[str, RouteLookup]] = {t.address: {} for t in m.targets if t.address}
    evidence = []
    for v in m.vantages:
        doc = bundle.route(v.id)
        socks = bundle.sockets(v.id)
        dns = bundle.dns(v.id)
        cap = bundle.capture(v.id)
        nat = bundle.nat(v.id)
        vantages.append(VantageView(v, doc, [s for s in m.slices if s.vantage == v.id], socks, dns, cap, nat))
        if nat is not None:
            kube_doc = bundle.kube()
            configured = kube_doc.kube_proxy.mode if kube_doc is not None and kube_doc.kube_proxy else None
            findings += nat_findings(v, nat, configured)
        if cap is not None and cap.analysis is not None:
            findings += capture_findings(v.id, f"vantages/{v.id}/capture.json", cap.analysis, cap,
                                         f"vantages/{v.id}/capture.pcapng")
        if dns is not None:
            findings += dns_findings(v, dns)
        evidence.append(VantageEvidence(v, doc, socks))
        if doc is not None:
            findings += route_findings(v, doc)
            for lk in doc.lookups:
                lookups.setdefault(lookup_label(lk), {})[v.id] = lk
    findings += transport_findings(evidence, list(m.targets))
    operator = bundle.operator_captures()
    for path, cdoc in operator:
        findings += capture_findings("operator capture", path, cdoc, None, path.rsplit("/", 1)[0] + "/" + cdoc.file)
    findings.sort(key=lambda f: (_LAYERS.get(f.layer, 9), _SEVERITY[f.severity.value]))
    kube = bundle.kube()
    hops = service_hops(kube, [VantageDocs(vv.vantage.id, vv.dns, vv.nat, vv.sockets) for vv in vantages]) \
        if kube is not None else []
    return View(manifest=m, vantages=vantages, findings=findings, lookups=lookups,
                operator_captures=[a for _, a in operator], kube=kube, hops=hops)
