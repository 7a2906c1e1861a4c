"""The three-hop matrix of a Service port: name -> ClusterIP (DNS slice), ClusterIP:port -> endpoints (NAT slice
and a connect to the ClusterIP), PodIP:targetPort directly (connect probes). One row per hop and vantage, so
"works by IP, fails by name" or "ClusterIP hangs, pod IP answers" reads at a glance; the first failing hop in
that order is the one to explain."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundle.analyze._common import VantageDocs
from bundle.models import KubeSlice, Outcome
from bundle.models.kube import target_port

PASS, FAIL, WARN, NOT_COLLECTED = "pass", "fail", "warn", "not collected"


@dataclass(frozen=True)
class Hop:
    service: str  # ns/name:port
    hop: str  # "name -> ClusterIP", "ClusterIP -> endpoints", "pod IP direct"
    vantage: str
    verdict: str
    detail: str
    evidence: str  # member and field


@dataclass
class ServiceHops:
    service: str
    rows: list[Hop] = field(default_factory=list)

    @property
    def failing(self) -> str | None:
        """The first hop, in order, that fails from some vantage."""
        for hop in ("name -> ClusterIP", "ClusterIP -> endpoints", "pod IP direct"):
            if any(r.hop == hop and r.verdict == FAIL for r in self.rows):
                return hop
        return None


def _probe(docs: VantageDocs, address: str, port: int) -> tuple[str, str] | None:
    if docs.sockets is None:
        return None
    for i, p in enumerate(docs.sockets.probes):
        if p.address == address and p.port == port:
            return p.outcome.value, f"vantages/{docs.vantage}/sockets.json probes[{i}]"
    return None


def service_hops(kube: KubeSlice, vantages: list[VantageDocs]) -> list[ServiceHops]:
    out = []
    for svc in kube.services:
        fqdn = f"{svc.name}.{svc.namespace}.svc.cluster.local"
        own = [v for v in kube.endpoint_slices if v.service == f"{svc.namespace}/{svc.name}"]
        ready = sorted({a for v in own for ep in v.endpoints if ep.ready is not False for a in ep.addresses})
        for port in svc.ports:
            label = f"{svc.namespace}/{svc.name}:{port.name or port.port}"
            sh = ServiceHops(label)
            target = target_port(port, own)
            for docs in vantages:
                _name_hop(sh, docs, fqdn, svc.cluster_ips)
                for ip in svc.cluster_ips:
                    _cluster_ip_hop(sh, docs, ip, port.port, ready)
                for ip in ready:
                    if target is None:
                        break
                    probe = _probe(docs, ip, target)
                    if probe is not None:
                        outcome, where = probe
                        sh.rows.append(Hop(label, "pod IP direct", docs.vantage, PASS if outcome == "connected" else FAIL,
                                           f"connect {ip}:{target}: {outcome}", where))
            out.append(sh)
    return out


def _name_hop(sh: ServiceHops, docs: VantageDocs, fqdn: str, cluster_ips: list[str]) -> None:
    if docs.dns is None:
        return
    for i, report in enumerate(docs.dns.names):
        if report.name.rstrip(".") != fqdn:
            continue
        r = report.resolution
        where = f"vantages/{docs.vantage}/dns.json names[{i}]"
        if r.outcome is Outcome.ANSWERED:
            good = set(r.addresses) & set(cluster_ips)
            sh.rows.append(Hop(sh.service, "name -> ClusterIP", docs.vantage, PASS if good else FAIL,
                               f"{fqdn} -> {', '.join(r.addresses)}" + ("" if good else
                                                                        f" (the Service's ClusterIP is {', '.join(cluster_ips)})"),
                               where))
        elif not r.queries:
            sh.rows.append(Hop(sh.service, "name -> ClusterIP", docs.vantage, NOT_COLLECTED, "no query sent (passive)",
                               where))
        else:
            sh.rows.append(Hop(sh.service, "name -> ClusterIP", docs.vantage, FAIL, f"{fqdn}: {r.outcome.value}", where))


def _cluster_ip_hop(sh: ServiceHops, docs: VantageDocs, ip: str, port: int, ready: list[str]) -> None:
    if docs.nat is not None:
        entries = [(i, s) for i, s in enumerate(docs.nat.services) if s.address == ip and s.port == port]
        where = f"vantages/{docs.vantage}/nat.json"
        if entries:
            i, entry = entries[0]
            programmed = sorted({e.address for e in entry.endpoints})
            if entry.reject:
                verdict, detail = FAIL, f"{ip}:{port} is REJECTed as having no endpoints"
            elif set(programmed) - set(ready) or (ready and not set(programmed) & set(ready)):
                verdict, detail = FAIL, f"{ip}:{port} -> {', '.join(programmed) or 'nothing'}; ready endpoints: " \
                                        f"{', '.join(ready) or 'none'}"
            else:
                verdict, detail = PASS, f"{ip}:{port} -> {', '.join(programmed)}"
            sh.rows.append(Hop(sh.service, "ClusterIP -> endpoints", docs.vantage, verdict, detail,
                               f"{where} services[{i}]"))
        elif docs.nat.proxy.mode != "none":
            sh.rows.append(Hop(sh.service, "ClusterIP -> endpoints", docs.vantage, FAIL,
                               f"no {docs.nat.proxy.mode} rule translates {ip}:{port}", f"{where} services"))
    probe = _probe(docs, ip, port)
    if probe is not None:
        outcome, where = probe
        sh.rows.append(Hop(sh.service, "ClusterIP -> endpoints", docs.vantage,
                           PASS if outcome == "connected" else FAIL, f"connect {ip}:{port}: {outcome}", where))
