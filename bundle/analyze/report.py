"""The one analysis entry point: evidence in (the manifest and each vantage's documents), findings.json out —
findings, explanations, a ladder per target decided for the client, five sentences, the proof and the capture to
open first. `collect` writes it, `analyze` recomputes it, `render`, `show` and `summary` read it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from bundle.analyze._common import VantageDocs, about, in_vantage
from bundle.analyze.capture import OwnProbes, capture_findings
from bundle.analyze.counters import counter_findings
from bundle.analyze.dns import dns_findings
from bundle.analyze.ladder import LAYERS, flows, target_ladders
from bundle.analyze.nat import nat_findings
from bundle.analyze.policy import (
    allowed_but_lost,
    chain_findings,
    client_pod,
    dataplane_not_visible,
    decisions,
    policy_findings,
)
from bundle.analyze.roles import Flow, client_of, frontends
from bundle.analyze.route import neighbor_findings, route_findings
from bundle.analyze.transport import VantageEvidence, transport_findings
from bundle.analyze.watch import watch_findings
from bundle.models.watch import WatchRecord
from bundle.models.kube import PodView
from bundle.models import (
    CaptureAnalysis,
    Evidence,
    Explanation,
    Finding,
    FindingsReport,
    KubeSlice,
    Layer,
    Manifest,
    Severity,
    SliceStatus,
    TargetLadder,
    Verdict,
)

_SEVERITY = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
_BAD_ROUTES = ("blackhole", "unreachable", "prohibit")


@dataclass
class Inputs:
    """What the analysis reads: the manifest, each vantage's documents, the Kubernetes slice and the operator's
    captures (member path, analysis)."""

    manifest: Manifest
    docs: list[VantageDocs]
    kube: KubeSlice | None = None
    operator: list[tuple[str, CaptureAnalysis]] = field(default_factory=list)
    watch: WatchRecord | None = None  # `netbundle watch`: the probe history and trigger


def build_report(inp: Inputs) -> FindingsReport:
    m = inp.manifest
    client = client_of(m)
    placed = flows(m, client, inp.docs)
    findings = _findings(inp)
    findings += dead_answers(m, client, inp.docs, placed)
    findings = _one_fact_once(findings)
    pod = _client_pod(inp)
    if inp.kube is not None and pod is not None and client is not None:
        findings += allowed_but_lost(inp.kube, pod, client, findings)
    _calibrate(findings, inp)
    findings.sort(key=lambda f: (LAYERS.index(f.layer), _SEVERITY[f.severity]))
    ladders, explanations = target_ladders(m, inp.docs, findings, placed)
    for e in explanations:  # a cause of a client's failure is critical, whatever it weighs alone
        findings[e.cause].severity = Severity.CRITICAL
    report = _sentences(m, findings, ladders, explanations)
    if inp.kube is not None and pod is not None:
        report.policy = [d for _, d in decisions(inp.kube, pod)]
    return report


def _client_pod(inp: Inputs) -> PodView | None:
    """The client's Pod object in the Kubernetes slice, when the client is a pod."""
    if inp.kube is None:
        return None
    client = client_of(inp.manifest)
    doc = next((d for d in inp.docs if d.vantage == client), None)
    held = [a.address for a in doc.route.addresses] if doc is not None and doc.route is not None else []
    return client_pod(inp.kube, held, client)


def _findings(inp: Inputs) -> list[Finding]:
    m = inp.manifest
    configured_mode = inp.kube.kube_proxy.mode if inp.kube is not None and inp.kube.kube_proxy else None
    by_id = {v.id: v for v in m.vantages}
    # the endpoints the targets' frontends are translated to: their neighbors are on the targets' path too
    fronts = frontends(inp.docs)
    dialed = {t.address for t in m.targets if t.address} | {
        a for v in m.vantages for t in m.targets if t.name for a in v.resolved.get(t.name, [])}
    endpoints = frozenset(e for a in dialed for e in fronts.get(a, set()))
    out: list[Finding] = []
    for d in inp.docs:
        v = by_id[d.vantage]
        if d.nat is not None:
            out += nat_findings(v, d.nat, configured_mode, inp.kube.services if inp.kube is not None else ())
        if d.dns is not None:
            out += dns_findings(v, d.dns)
        if d.route is not None:
            out += route_findings(v, d.route, endpoints)
        if d.counters is not None:
            out += counter_findings(v, d.counters)
            out += chain_findings(v, d.counters)
        if d.route is not None and inp.kube is not None and inp.kube.policies:
            out += dataplane_not_visible(v, d.route)
    out += neighbor_findings([(by_id[d.vantage], d.route) for d in inp.docs if d.route is not None])
    out += transport_findings([VantageEvidence(by_id[d.vantage], d.route, d.sockets,
                                              tuple(d.nat.services) if d.nat is not None else ())
                               for d in inp.docs],
                              list(m.targets))
    out += unseen_targets(inp)
    pod = _client_pod(inp)
    if inp.kube is not None and pod is not None:
        out += policy_findings(inp.kube, pod)
    for d in inp.docs:  # after the probes' findings: a probe's words name a failure before the packets do
        if d.capture is not None and d.capture.analysis is not None:
            walks = d.route.paths if d.route is not None else []
            own = OwnProbes(icmp_ids=frozenset(p.icmp_id for p in walks if p.icmp_id is not None),
                            tcp_sports=frozenset(port for p in walks for port in p.tcp_sports))
            out += capture_findings(d.vantage, f"vantages/{d.vantage}/capture.json", d.capture.analysis, d.capture,
                                    f"vantages/{d.vantage}/capture.pcapng", own)
    for path, analysis in inp.operator:
        # the watch's ring was captured in the watched vantage: its findings are that vantage's own
        who = inp.watch.vantage if inp.watch is not None and path == inp.watch.ring_member else "operator capture"
        out += capture_findings(who, path, analysis, None, path.rsplit("/", 1)[0] + "/" + analysis.file)
    out += watch_findings(inp.watch)
    return out


# A probe's finding and the capture's finding of the same handshake, seen from the same vantage: one fact.
_SAME_FACT = {"capture.syn_rst": "transport.refused", "capture.syn_unanswered": "transport.connect_timeout"}


def _one_fact_once(findings: list[Finding]) -> list[Finding]:
    """The capture's words for a handshake the vantage's own probe already reported (refused, timed out) are
    folded into the probe's finding as more evidence: one critical finding per fact, its packets cited. A symptom
    of one kind, vantage and target found twice (a vantage's own capture and a watch's ring) is one finding,
    counted twice."""
    out: list[Finding] = []
    for f in findings:
        key = (f.id, f.vantage, f.target.model_dump_json() if f.target else None)
        same = next((o for o in out if (o.id, o.vantage, o.target.model_dump_json() if o.target else None) == key),
                    None)
        if same is not None:  # two captures of one vantage (its own and a watch's ring) saw the same symptom
            same.count += f.count
            same.evidence += [e for e in f.evidence if e not in same.evidence]
            continue
        twin = _SAME_FACT.get(f.id)
        probe = next((p for p in findings if twin and p.id == twin and p.vantage == f.vantage
                      and p.target is not None and f.target is not None
                      and (p.target.address, p.target.port) == (f.target.address, f.target.port)), None)
        if probe is None:
            out.append(f)
        else:
            probe.evidence += [e for e in f.evidence if e not in probe.evidence]
    return out


def unseen_targets(inp: Inputs) -> list[Finding]:
    """capture.target_unseen: a vantage's capture holds none of a target's packets (its route goes elsewhere,
    the filter excluded it, or nothing was sent): said, so the capture is never read as proof about it."""
    out: list[Finding] = []
    by_id = {v.id: v for v in inp.manifest.vantages}
    for d in inp.docs:
        run = d.capture
        if run is None or run.unavailable is not None or not run.interfaces:  # not captured, or before 1.2
            continue
        addresses = [t.address for t in inp.manifest.targets if t.address] + [
            a for t in inp.manifest.targets if t.name for a in by_id[d.vantage].resolved.get(t.name, [])]
        for address in dict.fromkeys(addresses):
            if address in run.hosts_seen or len(run.hosts_seen) >= 256:
                continue
            out.append(Finding(
                id="capture.target_unseen", severity=Severity.INFO, layer=Layer.ROUTE, vantage=d.vantage,
                target=about(address),
                summary=f"The capture in {d.vantage} (on {', '.join(run.interfaces)}, {run.packets_written} packets) "
                        f"holds no IP packet to or from {address}: it proves nothing about {address}.",
                evidence=[Evidence(member=f"vantages/{d.vantage}/capture.json", pointer="hosts_seen")],
                next_command=in_vantage(by_id[d.vantage], f"ip route get {address}")))
    return out


def _calibrate(findings: list[Finding], inp: Inputs) -> None:
    """What every healthy cluster does is info: ICMP to a Service frontend (a ClusterIP translates only its
    Service ports; kube-proxy rejects the rest, or nothing answers) proves nothing about the route."""
    fronts = set(frontends(inp.docs))
    if inp.kube is not None:
        fronts |= {ip for s in inp.kube.services for ip in s.cluster_ips}
    for f in findings:
        if f.id in ("icmp.no_reply", "capture.icmp_error") and f.target is not None and f.target.address in fronts \
                and (f.id == "icmp.no_reply" or f.target.port is None):
            f.severity = Severity.INFO
            f.summary += (" This address is a Service frontend: only its Service ports are translated, so ICMP "
                          "to it proves nothing (normal, not a fault).")


def dead_answers(m: Manifest, client: str | None, docs: list[VantageDocs], placed: list[Flow]) -> list[Finding]:
    """dns.dead_answer: the client's resolver answered a name target with an address that no collected vantage
    holds and that a route on the client's side refuses (blackhole, unreachable, prohibit, or no route) — the
    pod behind the record is gone (a stale DNS record, a cache). A route that merely forwards it elsewhere is not
    enough: the address may live on a node not collected."""
    out: list[Finding] = []
    vantage = next((v for v in m.vantages if v.id == client), None)
    if vantage is None:
        return out
    by_id = {d.vantage: d for d in docs}
    fronts = frontends(docs)
    for flow in placed:
        if not flow.names or flow.spec not in {t.spec for t in m.targets}:
            continue
        name = next(iter(flow.names))
        for address in sorted(flow.addresses):
            if any(d.holds(address) for d in docs) or address in fronts:
                continue
            refused = next((r for v in [client, *flow.path] if (r := refusing_route(by_id.get(v or ""), address))),
                           None)
            if refused is None:
                continue
            d, pointer, why = refused
            i_v = next(j for j, v in enumerate(m.vantages) if v.id == client)
            out.append(Finding(
                id="dns.dead_answer", severity=Severity.CRITICAL, layer=Layer.DNS, vantage=vantage.id,
                target=about(address, flow.port, name),
                summary=f"From {vantage.id}, {name} resolves to {address}, which no collected vantage holds and "
                        f"which {d.vantage} cannot reach ({why}): the name points at an address nothing holds any "
                        f"more (a stale record or cache), so every connect by that name fails.",
                evidence=[Evidence(member="manifest.json", pointer=f"vantages[{i_v}].resolved"),
                          Evidence(member=f"vantages/{d.vantage}/route.json", pointer=pointer)],
                next_command=in_vantage(vantage, f"getent ahosts {name}")))
    return out


def refusing_route(d: VantageDocs | None, address: str) -> tuple[VantageDocs, str, str] | None:
    """(vantage, pointer, why) when this vantage refuses the address: its `route get` failed or hit a blackhole,
    unreachable or prohibit route; without a lookup for it, the longest prefix of the main table that holds it
    is such a route (policy rules aside: the main table is what forwarded traffic meets without them)."""
    if d is None or d.route is None:
        return None
    for i, lk in enumerate(d.route.lookups):
        if lk.target == address and lk.source is None and lk.iif is None:
            if not lk.ok or (lk.type or "") in _BAD_ROUTES:
                return d, f"lookups[{i}]", (lk.error or "no route") if not lk.ok else f"a {lk.type} route"
            return None
    ip = ipaddress.ip_address(address)
    best: tuple[int, int] | None = None
    for i, r in enumerate(d.route.routes):
        try:
            net = ipaddress.ip_network(r.dst, strict=False)
        except ValueError:
            continue
        if r.table == 254 and net.version == ip.version and ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, i)
    if best is None:
        return None
    route = d.route.routes[best[1]]
    return (d, f"routes[{best[1]}]", f"a {route.type} route {route.dst}") if route.type in _BAD_ROUTES else None


def _sentences(m: Manifest, findings: list[Finding], ladders: list[TargetLadder],
               explanations: list[Explanation]) -> FindingsReport:
    """The ladder, five sentences, the three members that prove it and the capture to open first."""
    owned = [lad for lad in ladders if lad.owner is not None and lad.cause is not None]
    owned.sort(key=lambda lad: next(lv for lv in lad.layers if lv.layer is lad.owner).verdict is not Verdict.FAIL)
    when = f"{m.created:%Y-%m-%d %H:%M}Z"
    client = ladders[0].client if ladders else client_of(m)
    interrupted = m.invocation.exit_code == 130
    sentences = [f"Collected {when} from {len(m.vantages)} vantage(s) ({', '.join(v.id for v in m.vantages)}; "
                 f"client {client or 'none'}) for {', '.join(t.spec for t in m.targets) or 'no target'}"
                 + (" — interrupted before it finished: what follows rests on part of the evidence." if interrupted
                    and ladders and any(lad.owner for lad in ladders) else ".")]
    proof: list[str] = []
    capture = None
    if owned:
        lad = owned[0]
        first = findings[lad.cause] if lad.cause is not None else None
        others = [o.target for o in owned[1:]]
        explained = [lv.layer.value for lv in lad.layers if lv.explained_by and lv.layer is not lad.owner]
        sentences.append(f"For {lad.target} the {lad.owner.value if lad.owner else ''} layer owns it"
                         + (f" (it explains the {', '.join(explained)} failure)" if explained else "")
                         + (f" (also the owner for {', '.join(others)})" if others else "")
                         + "".join(f"; {r}" for lv in lad.layers if lv.layer is lad.owner for r in lv.reasons
                                   if r.startswith("the SYN dies")) + ".")
        if first is not None:
            sentences.append(first.summary)
            proof = list(dict.fromkeys(e.member for e in first.evidence))
            if first.next_command:
                sentences.append(f"Next, read-only: {first.next_command}")
        noise = [lv.layer.value for lv in lad.layers if lv.noise]
        sentences.append(f"The {', '.join(noise)} layer(s) also show trouble: noise until the "
                         f"{lad.owner.value if lad.owner else ''} layer is explained." if noise
                         else "No later layer disagrees.")
        vantage = first.vantage if first is not None else None
        capture = _capture(m, vantage, findings, lad, first.target.address if first and first.target else None)
    elif interrupted:
        sentences.append("The collection was interrupted before it finished: nothing is proven; collect again.")
    elif not ladders or not any(lad.proven for lad in ladders):
        failed = [f"{r.vantage} {r.slice}: {r.reason or r.status.value}" for r in m.slices
                  if r.status is SliceStatus.FAILED]
        sentences.append("Nothing was proven for any target: no layer could be tested from the client"
                         + (f" ({'; '.join(failed[:2])})." if failed else "."))
    else:
        unproven = [lad.target for lad in ladders if not lad.proven]
        elsewhere = sorted({f"{vl.vantage} ({vl.role.value})" for lad in ladders for vl in lad.vantages
                            if vl.vantage != lad.client and any(lv.verdict is Verdict.FAIL for lv in vl.layers)})
        sentences.append("No layer fails for the client " + (client or "") + " toward any target it could test"
                         + (f"; nothing proven for {', '.join(unproven)}" if unproven else "") + "."
                         + (f" Failures seen only from {', '.join(elsewhere)} are theirs, off the client's path."
                            if elsewhere else ""))
    for f in findings:
        if len(proof) >= 3:
            break
        if f.severity is Severity.CRITICAL:
            proof += [e.member for e in f.evidence if e.member not in proof]
    return FindingsReport(findings=findings, explanations=explanations, ladders=ladders, summary=sentences[:5],
                          proof=proof[:3], capture=capture)


def _capture(m: Manifest, vantage: str | None, findings: list[Finding], lad: TargetLadder,
             address: str | None) -> str | None:
    """The capture to open first: the cause's vantage's, else the client's — never one that holds none of the
    cause's address's packets."""
    members = {mem.path for mem in m.members}
    unseen = {f.vantage for f in findings if f.id == "capture.target_unseen" and f.target is not None
              and f.target.address == address}
    for v in (vantage, lad.client):
        path = f"vantages/{v}/capture.pcapng"
        if v and path in members and v not in unseen:
            return path
    return None
