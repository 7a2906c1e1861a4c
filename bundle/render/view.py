"""What every renderer shows, gathered once from a verified bundle."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundle.analyze._common import VantageDocs
from bundle.analyze.crossnode import NodeEvidence, SetReport, set_report
from bundle.analyze.hops import ServiceHops, service_hops
from bundle.analyze.report import Inputs, build_report
from bundle.archive import Bundle
from bundle.archive.incidentset import IncidentSet
from bundle.models import (
    UNRESOLVED_NEIGHBOR_STATES,
    CaptureAnalysis,
    CaptureRun,
    ConnectProbe,
    CountersSlice,
    DnsSlice,
    Finding,
    FindingsReport,
    KubeSlice,
    Manifest,
    MtuSweep,
    NatSlice,
    PathTrace,
    RouteLookup,
    RouteSlice,
    SliceRun,
    Socket,
    SocketsSlice,
    TargetLadder,
    Vantage,
)
from bundle.models.incidentset import NodeOutcome, SetManifest
from bundle.models.watch import WatchRecord
from bundle.models.policy import LabelSelector, PolicyRule

BAD_NEIGHBOR_STATES = UNRESOLVED_NEIGHBOR_STATES  # STALE is shown, softer


@dataclass
class PolicyBlock:
    """A piece of a policy as YAML: its head (selector, types) or one rule; `mark` says what a decision made of
    it: "allows" (a rule that lets a decided flow through) or "isolates" (the head of a policy that selects an
    endpoint of a denied flow and allows none of it)."""

    text: str
    mark: str = ""
    label: str = ""


@dataclass
class PolicyCard:
    namespace: str
    name: str
    blocks: list[PolicyBlock]


def _selector_api(sel: LabelSelector | None) -> dict[str, object] | None:
    if sel is None:
        return None
    out: dict[str, object] = {}
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.match_expressions:
        out["matchExpressions"] = [{"key": e.key, "operator": e.operator, **({"values": e.values} if e.values else {})}
                                   for e in sel.match_expressions]
    return out


def _rule_api(rule: PolicyRule, key: str) -> dict[str, object]:
    out: dict[str, object] = {}
    if rule.peers:
        peers = []
        for peer in rule.peers:
            entry: dict[str, object] = {}
            if peer.ip_block is not None:
                entry["ipBlock"] = {"cidr": peer.ip_block.cidr,
                                    **({"except": peer.ip_block.except_cidrs} if peer.ip_block.except_cidrs else {})}
            for k, v in (("namespaceSelector", peer.namespace_selector), ("podSelector", peer.pod_selector)):
                if v is not None:
                    entry[k] = _selector_api(v)
            peers.append(entry)
        out[key] = peers
    if rule.ports:
        out["ports"] = [{"protocol": pt.protocol, **({"port": pt.port} if pt.port is not None else {}),
                         **({"endPort": pt.end_port} if pt.end_port is not None else {})} for pt in rule.ports]
    return out


def policy_cards(kube: KubeSlice | None, report: FindingsReport) -> list[PolicyCard]:
    """Each policy of the Kubernetes slice in API spelling, cut into its head and rules, with what the report's
    decisions made of each marked (the analysis decided; this only points at the parts)."""
    import yaml

    if kube is None or not kube.policies:
        return []
    allows = {(r.namespace, r.name, r.direction, r.rule) for d in report.policy for v in (d.egress, d.ingress)
              for r in v.allowing}
    isolates = {(r.namespace, r.name) for d in report.policy for v in (d.egress, d.ingress) if not v.allowed
                for r in v.selecting}
    cards = []
    for pol in kube.policies:
        head = {"metadata": {"namespace": pol.namespace, "name": pol.name},
                "spec": {"podSelector": _selector_api(pol.pod_selector) or {}, "policyTypes": pol.policy_types}}
        blocks = [PolicyBlock(yaml.safe_dump(head, sort_keys=False).rstrip(),
                              "isolates" if (pol.namespace, pol.name) in isolates else "", "")]
        for direction, rules, key in (("ingress", pol.ingress, "from"), ("egress", pol.egress, "to")):
            if direction.capitalize() not in pol.policy_types and not rules:
                continue
            blocks.append(PolicyBlock(f"  {direction}:" + ("" if rules else " []  # isolates, allows nothing")))
            for i, rule in enumerate(rules):
                text = yaml.safe_dump([_rule_api(rule, key)], sort_keys=False, default_flow_style=False).rstrip()
                text = "\n".join("  " + line for line in text.splitlines()) if text != "- {}" else "  - {}  # everything"
                blocks.append(PolicyBlock(text, "allows" if (pol.namespace, pol.name, direction, i) in allows else "",
                                          f"{direction} rule {i}"))
        cards.append(PolicyCard(pol.namespace, pol.name, blocks))
    return cards
# Capabilities whose absence hides evidence: netns entry, raw probes, netlink writes/dumps, other owners' /proc.
KEY_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH")
TREND_STATES = ("ESTAB", "SYN-SENT", "SYN-RECV", "CLOSE-WAIT", "TIME-WAIT", "FIN-WAIT-2", "LISTEN")


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
    counters: CountersSlice | None = None

    def path(self, key: tuple[str, str, int | None]) -> PathTrace | None:
        """This vantage's walk of (target, protocol, port), if it made one."""
        return next((p for p in self.route.paths if (p.target, p.protocol, p.port) == key), None) \
            if self.route is not None else None

    def target_sockets(self, address: str, port: int | None) -> list[Socket]:
        """The rows of one target: to it (client side) or on its port (server side)."""
        if self.sockets is None:
            return []
        forms = {address, f"::ffff:{address}"}  # a dual-stack socket shows an IPv4 peer v4-mapped
        return [s for s in self.sockets.sockets
                if (s.remote in forms and (port is None or s.rport == port)) or (port is not None and s.lport == port)]


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
    policies: list[PolicyCard] = field(default_factory=list)

    @property
    def sweeps(self) -> list[tuple[VantageView, MtuSweep]]:
        return [(vv, sw) for vv in self.vantages if vv.route is not None for sw in vv.route.mtu_sweeps]

    @property
    def probes(self) -> list[tuple[VantageView, ConnectProbe]]:
        return [(vv, p) for vv in self.vantages if vv.sockets is not None for p in vv.sockets.probes]

    @property
    def path_keys(self) -> list[tuple[str, str, int | None]]:
        """Every (target, protocol, port) some vantage walked, in the order first walked."""
        return list(dict.fromkeys((p.target, p.protocol, p.port) for vv in self.vantages if vv.route is not None
                                  for p in vv.route.paths))


def inputs(bundle: Bundle) -> Inputs:
    """What the analysis reads, from a verified bundle."""
    m = bundle.manifest
    docs = [VantageDocs(v.id, bundle.route(v.id), bundle.sockets(v.id), bundle.dns(v.id), bundle.nat(v.id),
                        capture=bundle.capture(v.id), counters=bundle.counters(v.id), vantage_model=v)
            for v in m.vantages]
    return Inputs(manifest=m, docs=docs, kube=bundle.kube(), operator=bundle.operator_captures(),
                  watch=bundle.watch())


def build_view(bundle: Bundle, recompute: bool = False) -> View:
    """The stored findings.json (1.2 on) unless asked to recompute; an older bundle's is always recomputed."""
    m = bundle.manifest
    inp = inputs(bundle)
    stored = None if recompute else bundle.findings()
    report = stored if stored is not None else build_report(inp)
    vantages = [VantageView(d.vantage_model, d.route, [s for s in m.slices if s.vantage == d.vantage], d.sockets,
                            d.dns, d.capture, d.nat, d.counters)
                for d in inp.docs if d.vantage_model is not None]
    lookups: dict[str, dict[str, RouteLookup]] = {t.address: {} for t in m.targets if t.address}
    for d in inp.docs:
        for lk in d.route.lookups if d.route is not None else []:
            lookups.setdefault(lookup_label(lk), {})[d.vantage] = lk
    hops = service_hops(inp.kube, inp.docs) if inp.kube is not None else []
    ring = dict(inp.operator).get(inp.watch.ring_member or "") if inp.watch is not None else None
    rows = timeline(m, vantages, inp.watch, ring)
    span = max([b[1] for r in rows for b in r.bars] + [t for r in rows for t, _k, _l in r.marks] + [0.001])
    return View(manifest=m, vantages=vantages, findings=report.findings, lookups=lookups,
                operator_captures=[a for _, a in inp.operator], kube=inp.kube, hops=hops, report=report,
                timeline=rows, timeline_span_s=span, policies=policy_cards(inp.kube, report))


@dataclass
class TimelineRow:
    """One row of the collection's timeline: a slice's window (bars) and what happened in it (marks), in
    seconds since the collection started."""

    label: str
    bars: list[tuple[float, float, str]] = field(default_factory=list)
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, title)


MAX_MARKS = 400


def timeline(m: Manifest, vantages: list[VantageView], watch: WatchRecord | None = None,
             ring: CaptureAnalysis | None = None) -> list[TimelineRow]:
    """Slices, samples, capture events and DNS transactions on one time axis (wall clock from the manifest's
    start — or, for a watch's bundle, from the oldest packet of its ring; monotonic samples placed through their
    slice's monotonic start). A watch adds its ring's window before the trigger, the failed probes and the
    trigger itself."""
    t0 = m.created.timestamp()
    rows: list[TimelineRow] = []
    if watch is not None:
        t0 = min([t0, watch.trigger.at.timestamp(), *([watch.ring.oldest.timestamp()] if watch.ring.oldest else [])])
        row = TimelineRow("watch: ring before the trigger")
        if watch.ring.oldest and watch.ring.newest:
            row.bars.append((watch.ring.oldest.timestamp() - t0, watch.ring.newest.timestamp() - t0, "complete"))
        row.marks.append((watch.trigger.at.timestamp() - t0, "trigger", f"trigger {watch.trigger.kind}: "
                                                                         f"{watch.trigger.detail}"))
        row.marks += [(p.at.timestamp() - t0, "probe_failed", f"{p.kind} {p.target}: {p.outcome}")
                      for p in watch.probes if not p.ok and p.at.timestamp() >= t0][:MAX_MARKS]
        if ring is not None:
            row.marks += [(e.ts_ns / 1e9 - t0, e.kind, f"{e.kind} {e.flow}") for e in ring.events[:MAX_MARKS]]
            row.marks += [(d.query_ns / 1e9 - t0, "dns", f"DNS {d.qname} {d.qtype}: {d.rcode or 'no response'}")
                          for d in ring.dns[:MAX_MARKS]]
        rows.append(row)
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


@dataclass
class NodeSection:
    outcome: NodeOutcome
    view: View | None  # None: no bundle came back from that node
    bundle: Bundle | None


@dataclass
class SetView:
    manifest: SetManifest
    report: SetReport
    nodes: list[NodeSection]

    def node_index(self, member: str) -> int | None:
        return next((i for i, n in enumerate(self.nodes) if n.outcome.member == member), None)


def set_view(st: IncidentSet) -> SetView:
    """The set: each node's own view (its stored report), then what the nodes say together (analyze/crossnode)."""
    sections = [NodeSection(n, build_view(st.bundles[n.node]) if n.node in st.bundles else None,
                            st.bundles.get(n.node)) for n in st.manifest.nodes]
    evidence = [NodeEvidence(s.outcome.node, s.outcome.member or "", tuple(inputs(s.bundle).docs),
                             s.bundle.manifest.created) for s in sections if s.bundle is not None]
    reports = {s.outcome.node: s.view.report for s in sections if s.view is not None and s.view.report is not None}
    return SetView(st.manifest, set_report(evidence, reports, st.manifest.start_at), sections)
