"""Findings of the service plane (NAT/conntrack), per vantage: conntrack near its limit or dropping new flows,
the proxy's service map against the EndpointSlices (stale DNAT, missing endpoints, REJECT with endpoints),
conntrack entries still translated to an endpoint that is gone, and more than one datapath programmed."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from bundle.analyze._common import FindingList, about
from bundle.models import Finding, Layer, NatSlice, Severity, Unavailable, Vantage
from bundle.models.kube import ServiceView
from bundle.models.nat import EndpointSliceView, ServiceEntry, SliceEndpoint

NEAR_MAX = 0.9
# conntrack's TCP states of a connection already closing or closed
_CLOSING = frozenset({"FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"})
DROP_COUNTERS = ("insert_failed", "drop", "early_drop")


def _family(address: str | None) -> str | None:
    """The EndpointSlice addressType a frontend's endpoints have: a dual-stack Service has one slice per family,
    and each family's frontend (ClusterIP) is programmed with that family's endpoints only."""
    if not address:
        return None
    return "IPv6" if ":" in address else "IPv4"


def _endpoints(slices: list[EndpointSliceView], service: str, port_name: str | None,
               family: str | None = None) -> tuple[list[SliceEndpoint], bool]:
    """(endpoints, found) of a Service in the EndpointSlices of the frontend's family. Ports are matched by name
    (kube-proxy's comment carries the port name) when the slice names its ports."""
    out: list[SliceEndpoint] = []
    found = False
    for s in slices:
        if s.service != service:
            continue
        if family is not None and (s.address_type or "IPv4") != family:
            continue
        if port_name is not None and s.ports and not any((p.name or "") == port_name for p in s.ports):
            continue
        found = True
        out += s.endpoints
    return out, found


def _ready(eps: list[SliceEndpoint]) -> list[SliceEndpoint]:
    """The ready ones: absent `ready` means ready (the API's rule for v1 slices)."""
    return [ep for ep in eps if ep.ready is not False]


def conntrack_rises(doc: NatSlice) -> dict[str, int]:
    """The conntrack drop counters (insert_failed, drop, early_drop) that rose over the window, by how much."""
    if len(doc.samples) < 2:
        return {}
    first, last = doc.samples[0].totals, doc.samples[-1].totals
    rises = {k: last.get(k, 0) - first.get(k, 0) for k in DROP_COUNTERS}
    return {k: v for k, v in rises.items() if v > 0}


def _serving(eps: list[SliceEndpoint]) -> set[str]:
    """Addresses still serving: ready, or terminating and still answering (kube-proxy sends a Service's traffic
    to these when no endpoint is ready, and a draining pod keeps its established connections)."""
    return {a for ep in eps if ep.ready is not False or ep.serving is True for a in ep.addresses}


def _left_out_by_design(entry: ServiceEntry, programmed: set[str], missing: set[str], eps: list[SliceEndpoint],
                        service: ServiceView | None) -> bool:
    """Whether kube-proxy leaves these ready endpoints out of this frontend on purpose (pkg/proxy/topology.go): a
    Local traffic policy keeps only this node's endpoints (internalTrafficPolicy for the ClusterIP,
    externalTrafficPolicy for node ports and external/load-balancer IPs), and topology-aware routing only those
    hinted for this node's zone (or node) when every endpoint carries a hint. The node is not named in the
    evidence: the programmed set must be exactly one node's (or zone's) share."""
    ready = _ready(eps)
    if service is not None:
        policy = service.internal_traffic_policy if entry.kind == "cluster IP" else service.external_traffic_policy
        if policy == "Local":
            nodes = {ep.node for ep in ready if programmed & set(ep.addresses)}
            if not programmed:  # this node has no endpoint of its own: kube-proxy drops, as asked
                return True
            if len(nodes) == 1 and None not in nodes and not any(
                    ep.node in nodes for ep in ready if missing & set(ep.addresses)):
                return True
    for hints in ([ep.for_zones for ep in ready], [ep.for_nodes for ep in ready]):
        if not ready or not all(hints):
            continue
        for place in {h for hs in hints for h in hs or []}:
            if programmed == {a for ep, hs in zip(ready, hints) if place in (hs or []) for a in ep.addresses}:
                return True
    return False


def _split(service: str) -> tuple[str, str | None]:
    """'ns/name:port-name' -> ('ns/name', 'port-name')."""
    name, sep, port = service.rpartition(":")
    return (name, port) if sep and "/" in name else (service, None)


def nat_findings(vantage: Vantage, doc: NatSlice, configured_mode: str | None = None,
                 services: Sequence[ServiceView] = ()) -> list[Finding]:
    """`configured_mode`: kube-proxy's ConfigMap `mode` from the Kubernetes slice ("" means the default,
    iptables on Linux), when it was read; `services`: the Service objects it read (their traffic policies)."""
    found = FindingList(Layer.SERVICE, vantage, f"vantages/{vantage.id}/nat.json")
    add = found.add

    last = doc.samples[-1] if doc.samples else None
    cmax = doc.settings.max
    if last is not None and isinstance(last.count, int) and isinstance(cmax, int) and cmax > 0:
        ratio = last.count / cmax
        if ratio >= NEAR_MAX:
            add("service.conntrack_near_max", Severity.CRITICAL if ratio >= 0.98 else Severity.WARNING, None,
                f"In {vantage.id} the conntrack table holds {last.count} of {cmax} entries ({ratio:.0%}): new flows "
                f"are refused or evict others once it is full, while established ones carry on.",
                f"samples[{len(doc.samples) - 1}].count", "conntrack -C; conntrack -S")
    rising = conntrack_rises(doc)
    if rising:
        secs = (doc.samples[-1].monotonic_ns - doc.samples[0].monotonic_ns) / 1e9
        what = ", ".join(f"{k} +{v}" for k, v in rising.items())
        add("service.conntrack_dropping", Severity.CRITICAL, None,
            f"In {vantage.id} conntrack refused new flows during the {secs:.1f} s window ({what}): connections "
            f"that need a new entry fail or stall while established ones survive.",
            f"samples[{len(doc.samples) - 1}].totals", "conntrack -S; cat /proc/net/stat/nf_conntrack")

    checks = [c for c in doc.proxy.checks if c.programmed]
    if doc.proxy.mode == "ambiguous":
        add("service.proxy_ambiguous", Severity.WARNING, None,
            f"In {vantage.id} more than one datapath holds kube-proxy's rules ("
            f"{', '.join(c.datapath.value + ': ' + c.detail for c in checks)}): leftovers of a mode change can "
            f"answer for Services before the live proxier does.", "proxy.checks",
            "iptables-save | grep -c KUBE-SVC; nft list table ip kube-proxy; ipvsadm -Ln")
    reported = doc.proxy.reported
    if isinstance(reported, str) and doc.proxy.mode not in ("ambiguous", "none") and reported != doc.proxy.mode:
        add("service.proxy_mode_mismatch", Severity.WARNING, None,
            f"kube-proxy in {vantage.id} says its mode is {reported!r} but the rules programmed are "
            f"{doc.proxy.mode}: it is not the proxier that wrote them, or it has not synced.",
            "proxy.reported", "curl -s 127.0.0.1:10249/proxyMode; iptables-save -t nat | head")

    if configured_mode is not None and doc.proxy.mode not in ("ambiguous", "none"):
        wanted = configured_mode or "iptables"
        if wanted != doc.proxy.mode:
            add("service.proxy_mode_configmap_mismatch", Severity.WARNING, None,
                f"kube-proxy's ConfigMap asks for mode {wanted!r} but {vantage.id} is programmed in "
                f"{doc.proxy.mode} mode: kube-proxy has not restarted since the change, or this node runs another "
                f"proxy; the live rules are the {doc.proxy.mode} ones.", "proxy",
                "kubectl -n kube-system get configmap kube-proxy -o yaml; curl -s 127.0.0.1:10249/proxyMode")

    slices = doc.endpoint_slices
    for i, entry in enumerate(doc.services):
        if slices is None:
            break
        name = _split(entry.service)[0]
        _service_vs_slices(found, vantage, i, entry, slices, doc.proxy.mode,
                           next((sv for sv in services if f"{sv.namespace}/{sv.name}" == name), None))

    if not isinstance(doc.table, Unavailable) and slices is not None:
        frontends = {(s.address, s.port): s for s in doc.services if s.address and not s.reject}
        for i, e in enumerate(doc.table.entries):
            if not e.dnat:
                continue
            front = frontends.get((e.original.dst, e.original.dport or 0))
            if front is None:
                continue
            name, port_name = _split(front.service)
            if e.tcp_state in _CLOSING:  # a closed connection's leftover carries no traffic
                continue
            eps, known = _endpoints(slices, name, port_name, _family(front.address))
            now = {(ep.address, ep.port) for ep in front.endpoints}
            if known and e.reply.src not in _serving(eps) and (e.reply.src, e.reply.sport or 0) not in now:
                add("service.conntrack_stale_endpoint", Severity.WARNING, about(front.address, front.port),
                    f"In {vantage.id} a conntrack entry still sends {e.original.src} -> {e.original.dst}:"
                    f"{e.original.dport} to {e.reply.src}:{e.reply.sport}, which is neither in the service map nor "
                    f"a ready endpoint of {name}: that flow keeps going to a removed pod until the entry expires "
                    f"({e.timeout_s} s left).", f"table.entries[{i}]",
                    f"conntrack -L -d {e.original.dst} -p {e.original.proto}")
    return found.items


def _rules_of(entry: ServiceEntry, mode: str) -> str:
    """The read-only command that shows this frontend's rules in the datapath the node runs."""
    if mode == "nftables":
        chain = next((e.chain for e in entry.endpoints if e.chain), None)
        return (f"nft list chain ip kube-proxy {shlex.quote(chain)}" if chain else
                "nft list map ip kube-proxy service-ips")
    if mode == "ipvs":
        host = f"[{entry.address}]" if entry.address and ":" in entry.address else entry.address
        return f"ipvsadm -Ln -t {host}:{entry.port}" if host else "ipvsadm -Ln"
    chain = next((e.chain for e in entry.endpoints if e.chain), None)
    return "iptables-save -t nat | grep -F " + shlex.quote(chain or entry.service)


def _service_vs_slices(found: FindingList, vantage: Vantage, i: int, entry: ServiceEntry,
                       slices: list[EndpointSliceView], doc_mode: str, service: ServiceView | None) -> None:
    name, port_name = _split(entry.service)
    eps, known = _endpoints(slices, name, port_name, _family(entry.address))
    if not known:
        return
    ready = {a for ep in _ready(eps) for a in ep.addresses}
    front = f"{entry.address or '*'}:{entry.port}/{entry.protocol}"
    programmed = {e.address for e in entry.endpoints}
    if entry.reject and ready:
        found.add("service.reject_with_endpoints", Severity.CRITICAL, about(entry.address, entry.port),
                  f"In {vantage.id} {front} ({entry.service}) is REJECTed as having no endpoints, yet its "
                  f"EndpointSlices list ready endpoints ({', '.join(sorted(ready))}): kube-proxy has not synced "
                  f"since they became ready.", f"services[{i}]", "iptables-save | grep -F 'has no endpoints'")
        return
    stale = sorted(programmed - _serving(eps))
    if stale:
        found.add("service.stale_dnat", Severity.CRITICAL, about(entry.address, entry.port),
                  f"In {vantage.id} {front} ({entry.service}) is translated to {', '.join(stale)}, which "
                  f"{'is' if len(stale) == 1 else 'are'} not a ready endpoint in the EndpointSlices "
                  f"(ready: {', '.join(sorted(ready)) or 'none'}): connections sent there hang or are refused "
                  f"while the pod IPs themselves answer.", f"services[{i}].endpoints",
                  _rules_of(entry, doc_mode))
    missing = sorted(ready - programmed)
    if missing and not entry.reject and entry.kind != "virtual server" and not _left_out_by_design(
            entry, programmed, set(missing), eps, service):
        found.add("service.endpoint_not_programmed", Severity.WARNING, about(entry.address, entry.port),
                  f"In {vantage.id} ready endpoints of {entry.service} are missing from {front}'s rules: "
                  f"{', '.join(missing)}: they receive no traffic through the Service.", f"services[{i}].endpoints",
                  _rules_of(entry, doc_mode))
