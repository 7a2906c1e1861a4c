"""`netbundle show`: the terminal summary."""

from __future__ import annotations

from bundle.analyze.crossnode import ClockOffset
from bundle.analyze.watch import socket_peaks
from bundle.archive import Bundle
from bundle.archive.incidentset import IncidentSet
from bundle.models import Finding
from bundle.render.view import SetView, build_view, lookup_label, missing_capabilities, set_view


def printable(text: object) -> str:
    """Strip control characters so a hostile string cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


_STOPPED = {"packet_limit": "stopped at its packet limit", "byte_limit": "stopped at its size limit",
            "time_limit": "stopped at its time limit", "other_slices_done": "stopped when the other slices ended",
            "deadline": "stopped by the deadline", "interface_gone": "stopped: the interface went away"}
_SWEEP = {"found": "found a narrower path", "all_pass": "every size passes", "no_reply": "no reply at all",
          "cut": "cut by its time budget", "unavailable": "not run"}


def summary(bundle: Bundle) -> str:
    view = build_view(bundle)
    m = view.manifest
    out = [
        f"bundle   {printable(m.bundle_id)}  (format {printable(m.format_version)}, netbundle {printable(m.tool_version)})",
        f"host     {printable(m.host.hostname)}  kernel {printable(m.host.kernel.split()[0])}",
        f"when     {m.created:%Y-%m-%d %H:%M:%S}Z .. {m.finished:%H:%M:%S}Z   by {printable(m.invocation.user)} "
        f"(uid {m.invocation.uid}), exit {m.invocation.exit_code}",
    ]
    if m.invocation.ticket or m.invocation.note:
        out.append(f"ticket   {printable(m.invocation.ticket or '-')}  {printable(m.invocation.note or '')}")
    out.append("targets  " + (" ".join(printable(t.spec) for t in m.targets) or "-"))
    out += _watch_lines(bundle)
    out.append("")
    for vv in view.vantages:
        v = vv.vantage
        missing = missing_capabilities(v)
        caps = "privileged" if not missing else "without " + ",".join(missing)
        where = f"{v.kind.value} {printable(v.ref) if v.ref else ''}".strip()
        uid = v.privileges.uid if v.privileges else "?"
        out.append(f"vantage  {printable(v.id)}  [{where}, netns {v.netns_inode or '?'}, uid {uid}, {caps}]")
        if v.error:
            out.append(f"         error: {printable(v.error)}")
        if v.lost:
            out.append(f"         lost: {printable(v.lost)}")
        for s in vv.slices:
            why = f"  {printable(s.reason)}" if s.reason else ""
            out.append(f"         {s.slice:<8} {s.status.value:<8} {s.duration_s:5.1f}s{why}")
        if vv.route:
            for lk in vv.route.lookups:
                via = f"via {lk.gateway} " if lk.gateway else ""
                src = f" src {lk.prefsrc}" if lk.prefsrc else ""
                res = f"{lk.type} {via}dev {lk.dev}{src} mtu {lk.mtu}" if lk.ok else f"error: {lk.error}"
                out.append(f"         route get {printable(lookup_label(lk))}: {printable(res)}")
            for sw in vv.route.mtu_sweeps:
                out.append(f"         mtu sweep {printable(sw.target)}: {_SWEEP[sw.status.value]}"
                           + (f", path MTU {sw.path_mtu}" if sw.path_mtu else "")
                           + (f" (largest DF payload passing {sw.largest_pass}" if sw.largest_pass is not None else "")
                           + (f", smallest failing {sw.smallest_fail})" if sw.smallest_fail is not None
                              else ")" if sw.largest_pass is not None else "")
                           + f" in {sw.duration_s:.1f}s")
            for walk in vv.route.paths:
                hops = " ".join(f"{h.ttl}:{h.responder or '*'}" for h in walk.hops)
                probe = f"tcp {walk.port}" if walk.port else "icmp"
                out.append(f"         path {printable(walk.target)} ({probe}): {printable(hops)} — {walk.stopped}")
        if vv.sockets:
            sk = vv.sockets
            counts = " ".join(f"{k.replace(' ', ':')}={n}" for k, n in sk.counts.items()) or "none"
            kept = f", {sk.dropped} rows past the limit not kept" if sk.dropped else ""
            out.append(f"         sockets {sk.total}{kept}: {printable(counts)}")
            ls = ", ".join(f"{lst.protocol}/{printable(lst.local)}:{lst.lport}"
                           f"{' (loopback only)' if lst.scope.value == 'loopback' else ''}" for lst in sk.listeners[:12])
            out.append(f"         listeners {len(sk.listeners)}: {ls or '-'}{' ...' if len(sk.listeners) > 12 else ''}")
            for p in sk.probes:
                lat = ", ".join(f"{a.outcome.value} {a.latency_ms:.0f}ms" for a in p.attempts)
                out.append(f"         connect {printable(p.target)}: {p.outcome.value} ({lat})")
            if not sk.owner_scan.complete:
                out.append(f"         owners: {sk.owner_scan.denied} of {sk.owner_scan.processes} processes unreadable "
                           f"as uid {sk.owner_scan.uid}: empty owners are unknown, not absent")
        if vv.capture:
            c = vv.capture
            if c.unavailable:
                out.append(f"         capture: {c.unavailable.unavailable.value}: {printable(c.unavailable.detail)}")
            else:
                a = c.analysis
                flows = (f", {a.flows_total} TCP flows, {len(a.dns)} DNS transactions, {len(a.icmp)} ICMP errors"
                         if a else "")
                where = ", ".join(c.interfaces) or c.interface or "?"
                stopped = _STOPPED.get(c.stopped_by.value, c.stopped_by.value) if c.stopped_by else "not started"
                out.append(f"         capture on {printable(where)} [{printable(c.filter)}]: {c.packets_written} "
                           f"packets, {c.bytes_written} bytes, {stopped}, kernel drops {c.kernel_dropped}{flows}")
        if vv.dns:
            d = vv.dns
            if d.resolv_conf:
                rc = d.resolv_conf
                out.append(f"         resolv.conf {printable(rc.path)}: nameserver {printable(' '.join(rc.nameservers))}; "
                           f"search {printable(' '.join(rc.search)) or '-'}; ndots:{rc.options.ndots} "
                           f"timeout:{rc.options.timeout} attempts:{rc.options.attempts}")
            for nr in d.names:
                r = nr.resolution
                if not d.active_probes:
                    out.append(f"         dns {printable(nr.name)}: not asked (--passive); the resolver would send "
                               f"{r.expected_queries} queries")
                    continue
                got = ", ".join(r.addresses) or r.outcome.value
                fq = f"; FQDN directly: {len(nr.fqdn.queries)} queries" if nr.fqdn else ""
                out.append(f"         dns {printable(nr.name)}: {printable(got)} after {len(r.queries)}/{r.expected_queries} "
                           f"queries, {r.total_ms:.1f} ms{fq}")
    out.append("")
    for sh in view.hops:
        first = sh.failing
        out.append(f"service {printable(sh.service)}: " + (f"first failing hop: {first}" if first else "no failing hop"))
        for hop in sh.rows:
            out.append(f"  {hop.hop:<24} {printable(hop.vantage):<28} {hop.verdict:<6} {printable(hop.detail)}")
    if view.hops:
        out.append("")
    if view.findings:
        out.append("findings")
        for f in view.findings:
            out.append(f"  [{f.severity.value}] {printable(f.summary)}")
            if f.next_command:
                out.append(f"      next: {printable(f.next_command)}")
    else:
        out.append("findings: none from the collected slices")
    return "\n".join(out) + "\n"


def _watch_lines(bundle: Bundle) -> list[str]:
    """A watch's bundle: what fired, the probe history, the ring's window before it."""
    rec = bundle.watch()
    if rec is None:
        return []
    t = rec.trigger
    out = [f"watch    bundle {rec.bundle_index} of a watch from {rec.started:%Y-%m-%d %H:%M:%S}Z in {printable(rec.vantage)}"
           f", every {rec.every_s:g} s; trigger {printable(t.kind)} at {t.at:%H:%M:%S}Z: {printable(t.detail)}"
           f" ({rec.triggers_seen} trigger(s) so far)"]
    for tot in rec.totals:
        out.append(f"         {tot.kind} {printable(tot.target)}: {tot.failed} of {tot.sent} failed"
                   + (f", {tot.slow} slow" if tot.slow else ""))
    if rec.sockets:
        shown = ", ".join(f"{printable(k)} {v}" for k, v in sorted(socket_peaks(rec).items())) or "none"
        out.append(f"         sockets to the targets ({len(rec.sockets)} samples), most at once: {shown}")
    r = rec.ring
    if r.unavailable:
        out.append(f"         ring: none ({printable(r.unavailable)})")
    else:
        span = (f"{r.oldest:%H:%M:%S}Z .. {r.newest:%H:%M:%S}Z" if r.oldest and r.newest else "empty")
        out.append(f"         ring: {r.packets_kept} packets ({r.bytes_kept} bytes) {span} on "
                   f"{', '.join(printable(i) for i in r.interfaces)}, kernel drops {r.kernel_dropped or 0}"
                   f" -> {printable(rec.ring_member or '-')}")
    return out


def set_findings(st: IncidentSet) -> tuple[list[Finding], list[ClockOffset]]:
    """What the nodes' captures say together (analyze/crossnode.py), from the set's bundles."""
    sv = set_view(st)
    return sv.report.findings, sv.report.offsets


def set_summary(st: IncidentSet) -> str:
    """An incident set for the ticket: who asked which nodes, what came of each, the verdict across the nodes
    per target, then each node's own summary."""
    sv = set_view(st)
    m = sv.manifest
    got = [n for n in m.nodes if n.member]
    lines = [f"Incident set {m.set_id} — {m.engine}, {len(got)} of {len(m.nodes)} nodes collected, by {m.user} at "
             f"{m.created:%Y-%m-%d %H:%M}Z" + (f", shared start {m.start_at:%H:%M:%S}Z" if m.start_at else ""), ""]
    for n in m.nodes:
        lines.append(f"  {printable(n.node):<28} {n.outcome:<18} {n.duration_s:6.1f}s" + (f"  {printable(n.detail)}" if n.detail else ""))
    lines += _set_verdicts(sv)
    for s in sv.nodes:
        if s.bundle is not None:
            lines += ["", f"== node {printable(s.outcome.node)} ({s.outcome.member})", summary(s.bundle).rstrip()]
    return "\n".join(lines) + "\n"


def _set_verdicts(sv: SetView) -> list[str]:
    rep = sv.report
    lines: list[str] = []
    owned = [lad for lad in rep.ladders if lad.owner is not None]
    if owned:
        lines += ["", "Owner per target, across the nodes:"]
        for lad in owned:
            why = (f"{lad.cause.id}: {printable(lad.cause.summary)}" if lad.cause is not None
                   else next((printable(r.cause) for r in lad.rows if r.owner is not None and r.cause), ""))
            lines.append(f"  {printable(lad.target)}: {lad.owner.value if lad.owner else '-'} ({lad.decided_by})"
                         + (f" — {why}" if why else ""))
    if rep.findings:
        lines += ["", "Across the nodes:"]
        lines += [f"  [{f.severity.value}] {f.id}: {printable(f.summary)}" + (f"\n      next: {printable(f.next_command)}"
                                                                            if f.next_command else "") for f in rep.findings]
    for o in rep.offsets[:8]:
        lines.append(f"  clock: {printable(o.b)} - {printable(o.a)} = {o.offset_s:+.3f} s (one-way delay included; {o.flow})")
    for sp in rep.splits:
        lines += ["", f"Port {sp.port} from {printable(sp.client_node)}: answered on "
                      f"{', '.join(printable(n) for n in sp.working)}, never on {', '.join(printable(n) for n in sp.failing)}; "
                      f"{printable(sp.pair[0])} against {printable(sp.pair[1])}:"]
        lines += [f"  [{d.area}] {printable(d.key)}: {printable(d.failing)}  vs  {printable(d.healthy)}" for d in sp.leads[:10]]
        if not sp.leads:
            lines.append("  no difference in their slices that could explain it (look between them: the network)")
    return lines
