"""What a flight recorder's probe history says (`watch.json`): an intermittent failure is evidence even when the
snapshot taken right after it shows a healthy network. Each target's failures are counted over the whole watch,
and a watched counter that rose in the same second as a failure is named beside it (what else moved then)."""

from __future__ import annotations

from datetime import timedelta

from bundle.analyze._common import about, split_endpoint
from bundle.models import Evidence, Finding, Layer, Severity
from bundle.models.watch import ProbeTotals, WatchRecord

MEMBER = "watch.json"
# The counters whose rise at the moment of a failure says where the packet went (conntrack, rp_filter, listen
# queue, routing): named beside the failures.
_TELLING = ("conntrack_drop", "conntrack_insert_failed", "conntrack_early_drop", "TcpExtIPReversePathFilter",
            "TcpExtListenDrops", "TcpExtListenOverflows", "IpInNoRoutes", "IpOutNoRoutes", "IpInDiscards")


def socket_peaks(rec: WatchRecord) -> dict[str, int]:
    """The most sockets to the targets seen at once in each TCP state over the watch's samples."""
    peaks: dict[str, int] = {}
    for sample in rec.sockets:
        for states in sample.to_targets.values():
            for state, n in states.items():
                peaks[state] = max(peaks.get(state, 0), n)
    return peaks


def _together(rec: WatchRecord, t: ProbeTotals) -> list[str]:
    """Counters that rose within a second of one of this target's failed probes."""
    failed = [p.at for p in rec.probes if p.kind == t.kind and p.target == t.target and not p.ok]
    near: dict[str, int] = {}
    for reading in rec.counters:
        if any(abs(reading.at - at) <= timedelta(seconds=1.5) for at in failed):
            for name, delta in reading.deltas.items():
                if name in _TELLING:
                    near[name] = near.get(name, 0) + delta
    return [f"{name} +{delta}" for name, delta in sorted(near.items())]


def _ring_pcap(rec: WatchRecord) -> str:
    """The ring's pcapng member, beside its analysis (captures/N-watch-ring.pcapng/watch-ring.pcapng)."""
    folder = (rec.ring_member or "").rsplit("/", 1)[0]
    return f"{folder}/{folder.rsplit('/', 1)[-1].split('-', 1)[-1]}"


def watch_findings(rec: WatchRecord | None) -> list[Finding]:
    if rec is None:
        return []
    out: list[Finding] = []
    for i, t in enumerate(rec.totals):
        if not t.failed and not t.slow:
            continue
        evidence = [Evidence(member=MEMBER, pointer=f"totals[{i}]"), Evidence(member=MEMBER, pointer="probes")]
        moved = _together(rec, t)
        also = f"; in the same seconds: {', '.join(moved)}" if moved else ""
        when = (f" (first {t.first_failure:%H:%M:%S}Z, last {t.last_failure:%H:%M:%S}Z)"
                if t.first_failure and t.last_failure else "")
        fired = rec.trigger.target == t.target and rec.trigger.kind.startswith(t.kind)
        if t.kind == "connect":
            address, port = split_endpoint(t.target)
            target = about(address, port)
            layer = Layer.TRANSPORT
            next_command = (f"tcpdump -nn -r {_ring_pcap(rec)} 'host {address} and port {port}'" if rec.ring_member
                            else "the watch kept no capture ring: run it with --target IP:PORT")
            if t.failed:
                out.append(Finding(
                    id="watch.connect_failures", severity=Severity.CRITICAL if fired else Severity.WARNING,
                    layer=layer, vantage=rec.vantage, target=target, count=t.failed,
                    summary=f"From {rec.vantage}, {t.failed} of {t.sent} TCP connects to {t.target} failed while "
                            f"watching every {rec.every_s:g} s{when}: intermittent — the snapshot after the "
                            f"trigger may look healthy{also}.",
                    evidence=evidence, next_command=next_command))
            else:
                out.append(Finding(
                    id="watch.connect_slow", severity=Severity.WARNING, layer=layer, vantage=rec.vantage,
                    target=target, count=t.slow,
                    summary=f"From {rec.vantage}, {t.slow} of {t.sent} TCP connects to {t.target} took longer "
                            f"than the watch's limit{also} (a SYN retransmitted: about 1 s more each).",
                    evidence=evidence, next_command=next_command))
        else:
            target = about(name=t.target)
            if t.failed:
                out.append(Finding(
                    id="watch.dns_failures", severity=Severity.CRITICAL if fired else Severity.WARNING,
                    layer=Layer.DNS, vantage=rec.vantage, target=target, count=t.failed,
                    summary=f"From {rec.vantage}, {t.failed} of {t.sent} resolutions of {t.target} (the resolver's "
                            f"own plan) failed while watching every {rec.every_s:g} s{when}{also}.",
                    evidence=evidence, next_command=f"tcpdump -nn -r {_ring_pcap(rec)} port 53" if rec.ring_member
                    else None))
            else:
                out.append(Finding(
                    id="watch.dns_slow", severity=Severity.WARNING, layer=Layer.DNS, vantage=rec.vantage,
                    target=target, count=t.slow,
                    summary=f"From {rec.vantage}, {t.slow} of {t.sent} resolutions of {t.target} took longer than "
                            f"the watch's limit{also} (a query retried after resolv.conf's timeout).",
                    evidence=evidence, next_command=f"tcpdump -nn -r {_ring_pcap(rec)} port 53" if rec.ring_member
                    else None))
    if rec.ring.kernel_dropped:
        out.append(Finding(
            id="watch.ring_drops", severity=Severity.WARNING, layer=Layer.TRANSPORT, vantage=rec.vantage,
            summary=f"The capture ring missed {rec.ring.kernel_dropped} packets the kernel could not hand over "
                    f"(of {rec.ring.kernel_received}): the pre-trigger capture has gaps; absence in it proves less.",
            evidence=[Evidence(member=MEMBER, pointer="ring")], next_command=None))
    return out
