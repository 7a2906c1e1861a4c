"""Findings of the service plane (NAT/conntrack), per vantage: conntrack near its limit or dropping new flows,
the proxy's service map against the EndpointSlices (stale DNAT, missing endpoints, REJECT with endpoints),
conntrack entries still translated to an endpoint that is gone, and more than one datapath programmed."""

from __future__ import annotations

import shlex

from bundle.analyze._common import FindingList, about
from bundle.models import Finding, Layer, NatSlice, Severity, Unavailable, Vantage
from bundle.models.nat import EndpointSliceView, ServiceEntry

NEAR_MAX = 0.9
DROP_COUNTERS = ("insert_failed", "drop", "early_drop")


def _family(address: str | None) -> str | None:
    """The EndpointSlice addressType a frontend's endpoints have: a dual-stack Service has one slice per family,
    and each family's frontend (ClusterIP) is programmed with that family's endpoints only."""
    if not address:
        return None
    return "IPv6" if ":" in address else "IPv4"


def _ready(slices: list[EndpointSliceView], service: str, port_name: str | None,
           family: str | None = None) -> tuple[set[str], bool]:
    """(ready addresses, found) of a Service in the EndpointSlices of the frontend's family. Ports are matched by
    name (kube-proxy's comment carries the port name) when the slice names its ports."""
    ready: set[str] = set()
    found = False
    for s in slices:
        if s.service != service:
            continue
        if family is not None and (s.address_type or "IPv4") != family:
            continue
        if port_name is not None and s.ports and not any((p.name or "") == port_name for p in s.ports):
            continue
        found = True
        for ep in s.endpoints:
            if ep.ready is not False:  # absent means ready (the API's rule for v1 slices)
                ready.update(ep.addresses)
    return ready, found


def _split(service: str) -> tuple[str, str | None]:
    """'ns/name:port-name' -> ('ns/name', 'port-name')."""
    name, sep, port = service.rpartition(":")
    return (name, port) if sep and "/" in name else (service, None)


def nat_findings(vantage: Vantage, doc: NatSlice, configured_mode: str | None = None) -> list[Finding]:
    """`configured_mode`: kube-proxy's ConfigMap `mode` from the Kubernetes slice ("" means the default,
    iptables on Linux), when it was read."""
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
    if len(doc.samples) >= 2:
        first = doc.samples[0]
        rising = {k: last.totals.get(k, 0) - first.totals.get(k, 0) for k in DROP_COUNTERS} if last else {}
        rising = {k: v for k, v in rising.items() if v > 0}
        if rising:
            secs = (doc.samples[-1].monotonic_ns - first.monotonic_ns) / 1e9
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
        _service_vs_slices(found, vantage, i, entry, slices, doc.proxy.mode)

    if not isinstance(doc.table, Unavailable) and slices is not None:
        frontends = {(s.address, s.port): s for s in doc.services if s.address and not s.reject}
        for i, e in enumerate(doc.table.entries):
            if not e.dnat:
                continue
            front = frontends.get((e.original.dst, e.original.dport or 0))
            if front is None:
                continue
            name, port_name = _split(front.service)
            ready, known = _ready(slices, name, port_name, _family(front.address))
            now = {(ep.address, ep.port) for ep in front.endpoints}
            if known and e.reply.src not in ready and (e.reply.src, e.reply.sport or 0) not in now:
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
                       slices: list[EndpointSliceView], doc_mode: str) -> None:
    name, port_name = _split(entry.service)
    ready, known = _ready(slices, name, port_name, _family(entry.address))
    if not known:
        return
    front = f"{entry.address or '*'}:{entry.port}/{entry.protocol}"
    programmed = {e.address for e in entry.endpoints}
    if entry.reject and ready:
        found.add("service.reject_with_endpoints", Severity.CRITICAL, about(entry.address, entry.port),
                  f"In {vantage.id} {front} ({entry.service}) is REJECTed as having no endpoints, yet its "
                  f"EndpointSlices list ready endpoints ({', '.join(sorted(ready))}): kube-proxy has not synced "
                  f"since they became ready.", f"services[{i}]", "iptables-save | grep -F 'has no endpoints'")
        return
    stale = sorted(programmed - ready)
    if stale:
        found.add("service.stale_dnat", Severity.CRITICAL, about(entry.address, entry.port),
                  f"In {vantage.id} {front} ({entry.service}) is translated to {', '.join(stale)}, which "
                  f"{'is' if len(stale) == 1 else 'are'} not a ready endpoint in the EndpointSlices "
                  f"(ready: {', '.join(sorted(ready)) or 'none'}): connections sent there hang or are refused "
                  f"while the pod IPs themselves answer.", f"services[{i}].endpoints",
                  _rules_of(entry, doc_mode))
    missing = sorted(ready - programmed)
    if missing and not entry.reject and entry.kind != "virtual server":
        found.add("service.endpoint_not_programmed", Severity.WARNING, about(entry.address, entry.port),
                  f"In {vantage.id} ready endpoints of {entry.service} are missing from {front}'s rules: "
                  f"{', '.join(missing)}: they receive no traffic through the Service.", f"services[{i}].endpoints",
                  _rules_of(entry, doc_mode))
