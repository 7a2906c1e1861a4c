"""What every renderer shows, gathered once from a verified bundle."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundle.analyze import (
    VantageEvidence,
    capture_findings,
    dns_findings,
    nat_findings,
    neighbor_findings,
    route_findings,
    transport_findings,
)
from bundle.analyze._common import VantageDocs
from bundle.analyze.hops import ServiceHops, service_hops
from bundle.analyze.ladder import LAYERS as _ORDER
from bundle.analyze.ladder import target_ladders
from bundle.archive import Bundle
from bundle.models import (
    UNRESOLVED_NEIGHBOR_STATES,
    CaptureAnalysis,
    CaptureRun,
    DnsSlice,
    Finding,
    FindingsReport,
    KubeSlice,
    Manifest,
    NatSlice,
    RouteLookup,
    RouteSlice,
    SliceRun,
    Socket,
    SocketsSlice,
    TargetLadder,
    Vantage,
)

BAD_NEIGHBOR_STATES = UNRESOLVED_NEIGHBOR_STATES  # STALE is shown, softer
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
    report: FindingsReport | None = None
    timeline: list[TimelineRow] = field(default_factory=list)
    timeline_span_s: float = 0.0


def build_view(bundle: Bundle) -> View:
    m = bundle.manifest
    vantages = []
    findings: list[Finding] = []
    lookups: dict[str, dict[str, RouteLookup]] = {t.address: {} for t in m.targets if t.address}
    evidence = []
    kube = bundle.kube()
    configured_mode = kube.kube_proxy.mode if kube is not None and kube.kube_proxy else None
    for v in m.vantages:
        doc = bundle.route(v.id)
        socks = bundle.sockets(v.id)
        dns = bundle.dns(v.id)
        cap = bundle.capture(v.id)
        nat = bundle.nat(v.id)
        vantages.append(VantageView(v, doc, [s for s in m.slices if s.vantage == v.id], socks, dns, cap, nat))
        if nat is not None:
            findings += nat_findings(v, nat, configured_mode)
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
    findings += neighbor_findings([(e.vantage, e.route) for e in evidence if e.route is not None])
    findings += transport_findings(evidence, list(m.targets))
    operator = bundle.operator_captures()
    for path, cdoc in operator:
        findings += capture_findings("operator capture", path, cdoc, None, path.rsplit("/", 1)[0] + "/" + cdoc.file)
    findings.sort(key=lambda f: (_LAYERS.get(f.layer, 9), _SEVERITY[f.severity.value]))
    docs = [VantageDocs(vv.vantage.id, vv.route, vv.sockets, vv.dns, vv.nat) for vv in vantages]
    hops = service_hops(kube, docs) if kube is not None else []
    rows = timeline(m, vantages)
    span = max([b[1] for r in rows for b in r.bars] + [t for r in rows for t, _k, _l in r.marks] + [0.001])
    return View(manifest=m, vantages=vantages, findings=findings, lookups=lookups,
                operator_captures=[a for _, a in operator], kube=kube, hops=hops,
                report=make_report(m, findings, target_ladders(m, docs, findings)), timeline=rows,
                timeline_span_s=span)


@dataclass
class TimelineRow:
    """One row of the collection's timeline: a slice's window (bars) and what happened in it (marks), in
    seconds since the collection started."""

    label: str
    bars: list[tuple[float, float, str]] = field(default_factory=list)
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, title)


MAX_MARKS = 400


def timeline(m: Manifest, vantages: list[VantageView]) -> list[TimelineRow]:
    """Slices, samples, capture events and DNS transactions on one time axis (wall clock from the manifest's
    start; monotonic samples placed through their slice's monotonic start)."""
    t0 = m.created.timestamp()
    rows: list[TimelineRow] = []
    for vv in vantages:
        for run in vv.slices:
            if run.started is None or run.finished is None:
                continue
            start, end = run.started.timestamp() - t0, run.finished.timestamp() - t0
            row = TimelineRow(f"{vv.vantage.id} {run.slice}", [(start, max(end, start + 0.01), run.status.value)])
            if run.slice == "sockets" and vv.sockets is not None:
                row.marks += [(start + smp.at_s, "sample", f"socket states at +{smp.at_s:.1f} s")
                              for smp in vv.sockets.samples]
            if run.slice == "nat" and vv.nat is not None and run.monotonic_start_ns is not None:
                row.marks += [(start + (smp.monotonic_ns - run.monotonic_start_ns) / 1e9, "sample",
                               f"conntrack count {smp.count if isinstance(smp.count, int) else '?'}")
                              for smp in vv.nat.samples]
            if run.slice == "capture" and vv.capture is not None and vv.capture.analysis is not None:
                a = vv.capture.analysis
                row.marks += [(e.ts_ns / 1e9 - t0, e.kind, f"{e.kind} {e.flow}") for e in a.events[:MAX_MARKS]]
                row.marks += [(d.query_ns / 1e9 - t0, "dns", f"DNS {d.qname} {d.qtype}: {d.rcode or 'no response'}")
                              for d in a.dns[:MAX_MARKS]]
            rows.append(row)
    return rows


def make_report(m: Manifest, findings: list[Finding], ladders: list[TargetLadder]) -> FindingsReport:
    """The ladder, five sentences, the three members that prove it and the capture to open first."""
    def cited(lad: TargetLadder) -> Finding | None:
        ids = lad.layers[_ORDER.index(lad.owner or "")].finding_ids
        mine = [f for f in findings if f.id in ids]
        return next((f for f in mine if f.severity.value == "critical"), mine[0] if mine else None)

    owned = [(lad, cited(lad)) for lad in ladders if lad.owner]
    owned.sort(key=lambda pair: pair[0].layers[_ORDER.index(pair[0].owner or "")].verdict.value != "fail")
    when = f"{m.created:%Y-%m-%d %H:%M}Z"
    sentences = [f"Collected {when} from {len(m.vantages)} vantage(s) ({', '.join(v.id for v in m.vantages)}) "
                 f"for {', '.join(t.spec for t in m.targets) or 'no target'}."]
    proof: list[str] = []
    capture = None
    if owned:
        lad, first = owned[0]
        others = [o.target for o, _ in owned[1:]]
        fails = lad.layers[_ORDER.index(lad.owner or "")].verdict.value == "fail"
        sentences.append(f"For {lad.target} the {lad.owner} layer "
                         + ("fails first" if fails else "is the first in trouble (nothing fails; it warns)")
                         + (f" (also the owner for {', '.join(others)})" if others else "") + ".")
        if first is not None:
            sentences.append(first.summary)
            proof = list(dict.fromkeys(e.member for e in first.evidence))
            if first.next_command:
                sentences.append(f"Next, read-only: {first.next_command}")
        noise = [lv.layer for lv in lad.layers if lv.noise]
        sentences.append(f"The {', '.join(noise)} layer(s) also show trouble: noise until the {lad.owner} "
                         f"layer is explained." if noise else "No later layer disagrees.")
        vantage = first.vantage if first is not None else None
        capture = next((mem.path for mem in m.members if mem.path == f"vantages/{vantage}/capture.pcapng"), None)
    else:
        failing = [f for f in findings if f.severity.value == "critical"]
        sentences.append("No layer fails for any target: every layer collected passes or only warns."
                         if not failing else f"{len(failing)} critical finding(s), none tied to a target.")
    for f in findings:
        if len(proof) >= 3:
            break
        if f.severity.value == "critical":
            proof += [e.member for e in f.evidence if e.member not in proof]
    capture = capture or next((mem.path for mem in m.members if mem.path.endswith(".pcapng")), None)
    return FindingsReport(findings=findings, ladders=ladders, summary=sentences[:5], proof=proof[:3], capture=capture)
