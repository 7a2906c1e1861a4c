"""NAT/conntrack slice: conntrack usage and per-CPU counters sampled over the window, the conntrack entries
that touch the targets and the Services they hit, which kube-proxy datapath programs this netns and the
service map it programs — all by reading, never writing.

Read-only by construction: iptables-legacy-save only for tables /proc/net/ip_tables_names already lists (asking
for another would create it), iptables-nft-save and `nft list` only read, IPVS from /proc/net/ip_vs.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path

from bundle.collect import kubeproxy
from bundle.collect.base import Artifact, Collector, SliceContext, SliceResult
from bundle.models import MediaType, MissingReason, Provenance, SliceStatus, Unavailable
from bundle.models.nat import (
    ConntrackEntry,
    ConntrackSample,
    ConntrackSettings,
    ConntrackTable,
    ConntrackTuple,
    Datapath,
    DatapathCheck,
    EndpointSliceView,
    NatSlice,
    ProxyMode,
    ServiceEntry,
)
from bundle.netlink import ctnetlink

DEFAULT_SAMPLES = 3
DEFAULT_INTERVAL_S = 1.0
DEFAULT_KEEP = 5000
# ~400 bytes an entry in nat.json: 100,000 stay under the reader's 64 MiB document limit.
MAX_KEEP = 100_000
COMMAND_TIMEOUT_S = 10.0
MAX_DUMP = 64 << 20  # bytes of one raw dump kept
_NETFILTER = Path("/proc/sys/net/netfilter")
_STAT = Path("/proc/net/stat/nf_conntrack")


def _read_int(path: Path) -> int | Unavailable:
    try:
        return int(path.read_text().split()[0])
    except FileNotFoundError:
        return Unavailable(unavailable=MissingReason.NOT_SUPPORTED, detail=f"{path} absent: no conntrack here")
    except PermissionError:
        return Unavailable(unavailable=MissingReason.NOT_PERMITTED, detail=f"{path} not readable")
    except (OSError, ValueError, IndexError) as exc:
        return Unavailable(unavailable=MissingReason.ERROR, detail=f"{path}: {exc}")


def settings() -> ConntrackSettings:
    timeouts = {}
    try:
        for p in sorted(_NETFILTER.glob("nf_conntrack_*timeout*")):
            value = _read_int(p)
            if isinstance(value, int):
                timeouts[p.name.removeprefix("nf_conntrack_")] = value
    except OSError:
        pass
    return ConntrackSettings(max=_read_int(_NETFILTER / "nf_conntrack_max"),
                             buckets=_read_int(_NETFILTER / "nf_conntrack_buckets"), timeouts=timeouts)


def sample() -> ConntrackSample:
    """Count and per-CPU statistics now. /proc/net/stat/nf_conntrack is per netns: one hex row per CPU under
    a header naming the columns (which differ between kernels)."""
    at = time.monotonic_ns()
    count = _read_int(_NETFILTER / "nf_conntrack_count")
    per_cpu: list[dict[str, int]] = []
    try:
        lines = _STAT.read_text().split("\n")
        names = lines[0].split()
        for line in lines[1:]:
            if line.strip():
                per_cpu.append({k: int(v, 16) for k, v in zip(names, line.split()) if k != "entries"})
    except (OSError, ValueError, IndexError):
        pass
    totals: dict[str, int] = {}
    for row in per_cpu:
        for k, v in row.items():
            totals[k] = totals.get(k, 0) + v
    return ConntrackSample(monotonic_ns=at, count=count, totals=totals, per_cpu=per_cpu)


def _entry(e: ctnetlink.Entry) -> ConntrackEntry:
    proto = ctnetlink.PROTOCOLS.get(e.original.proto, str(e.original.proto))

    def tup(t: ctnetlink.Tuple) -> ConntrackTuple:
        return ConntrackTuple(proto=proto, src=t.src, dst=t.dst, sport=t.sport, dport=t.dport)

    return ConntrackEntry(original=tup(e.original), reply=tup(e.reply), tcp_state=e.tcp_state, timeout_s=e.timeout,
                          status=ctnetlink.status_names(e.status), mark=e.mark,
                          dnat=(e.reply.src, e.reply.sport) != (e.original.dst, e.original.dport))


def conntrack_table(watch: list[str], keep: int, budget_s: float) -> ConntrackTable | Unavailable:
    raw = frozenset(ipaddress.ip_address(a).packed for a in watch)
    try:
        table = ctnetlink.dump(lambda addrs: not raw.isdisjoint(addrs), keep, budget_s, watch=raw)
    except ctnetlink.CtnetlinkError as exc:
        reason = MissingReason.NOT_PERMITTED if exc.errno in (1, 13) else MissingReason.ERROR
        return Unavailable(unavailable=reason, detail=str(exc))
    return ConntrackTable(total=table.total, by_protocol=dict(sorted(table.by_protocol.items())),
                          by_tcp_state=dict(sorted(table.by_tcp_state.items())), watched=watch,
                          matched=table.matched, entries=[_entry(e) for e in table.entries],
                          truncated=table.matched > len(table.entries), inconsistent=table.interrupted)


def _run(argv: list[str], budget_s: float) -> tuple[str | None, Unavailable | None]:
    if shutil.which(argv[0]) is None:
        return None, Unavailable(unavailable=MissingReason.NOT_SUPPORTED, detail=f"{argv[0]} is not installed")
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=min(COMMAND_TIMEOUT_S, budget_s), check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        return None, Unavailable(unavailable=MissingReason.TIMEOUT, detail=f"{' '.join(argv)} timed out")
    except OSError as exc:
        return None, Unavailable(unavailable=MissingReason.ERROR, detail=f"{argv[0]}: {exc.strerror}")
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        reason = MissingReason.NOT_PERMITTED if "ermission" in err else MissingReason.ERROR
        return None, Unavailable(unavailable=reason, detail=f"{' '.join(argv)}: exit {proc.returncode}: {err[:300]}")
    return proc.stdout[:MAX_DUMP].decode(errors="replace"), None


def _legacy_tables(family: int = 4) -> list[str] | Unavailable:
    path = Path("/proc/net/ip_tables_names" if family == 4 else "/proc/net/ip6_tables_names")
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []
    except OSError as exc:
        return Unavailable(unavailable=MissingReason.ERROR, detail=str(exc))


def _proxy_mode_reported(budget_s: float) -> str | Unavailable:
    """kube-proxy's own answer, when its metrics port answers on this netns's loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", 10249, timeout=min(1.0, budget_s))
    try:
        conn.request("GET", "/proxyMode")
        resp = conn.getresponse()
        body = resp.read(256).decode(errors="replace").strip()
        if resp.status != 200:
            return Unavailable(unavailable=MissingReason.ERROR, detail=f"/proxyMode answered HTTP {resp.status}")
        return body
    except ConnectionRefusedError:
        return Unavailable(unavailable=MissingReason.NOT_APPLICABLE, detail="nothing listens on 127.0.0.1:10249")
    except (OSError, http.client.HTTPException) as exc:
        return Unavailable(unavailable=MissingReason.ERROR, detail=f"127.0.0.1:10249: {exc}")
    finally:
        conn.close()


def _ipvs_services() -> tuple[list[ServiceEntry], DatapathCheck, str | None]:
    path = Path("/proc/net/ip_vs")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], DatapathCheck(datapath=Datapath.IPVS, command="cat /proc/net/ip_vs", programmed=False,
                                 detail="no IPVS in this kernel or netns"), None
    except OSError as exc:
        return [], DatapathCheck(datapath=Datapath.IPVS, command="cat /proc/net/ip_vs", programmed=None,
                                 unavailable=Unavailable(unavailable=MissingReason.ERROR, detail=str(exc))), None
    services = kubeproxy.services_from_proc_ip_vs(text)
    return services, DatapathCheck(datapath=Datapath.IPVS, command="cat /proc/net/ip_vs", programmed=bool(services),
                                   detail=f"{len(services)} virtual services"), text


# The raw dumps kept beside nat.json, by key: each datapath in each family kube-proxy may program.
RAW_MEMBERS = {"iptables-legacy": ("iptables-legacy-save.txt", MediaType.TEXT),
               "iptables-nft": ("iptables-nft-save.txt", MediaType.TEXT),
               "iptables-legacy-v6": ("ip6tables-legacy-save.txt", MediaType.TEXT),
               "iptables-nft-v6": ("ip6tables-nft-save.txt", MediaType.TEXT),
               "nftables": ("nft-kube-proxy.json", MediaType.JSON),
               "nftables-v6": ("nft-kube-proxy-ip6.json", MediaType.JSON),
               "ipvs": ("proc-net-ip_vs.txt", MediaType.TEXT)}


def proxy_dataplane(budget_s: float, active: bool) -> tuple[ProxyMode, list[ServiceEntry], dict[str, str]]:
    """Look at every datapath kube-proxy could program, for IPv4 and IPv6 (a dual-stack node has both: the same
    proxier writes ip6tables, or `table ip6 kube-proxy`); the service map comes from the ones that are."""
    checks: list[DatapathCheck] = []
    services: list[ServiceEntry] = []
    raw: dict[str, str] = {}
    programmed: set[Datapath] = set()
    deadline = time.monotonic() + budget_s

    for family, tool in ((4, "iptables"), (6, "ip6tables")):
        suffix = "" if family == 4 else "-v6"
        legacy = _legacy_tables(family)
        names_file = "/proc/net/ip_tables_names" if family == 4 else "/proc/net/ip6_tables_names"
        if isinstance(legacy, Unavailable):
            checks.append(DatapathCheck(datapath=Datapath.IPTABLES_LEGACY, command=f"cat {names_file}",
                                        programmed=None, unavailable=legacy))
        elif "nat" not in legacy and family == 4:  # an IPv6 datapath is listed only where it holds something
            checks.append(DatapathCheck(datapath=Datapath.IPTABLES_LEGACY, command=f"cat {names_file}",
                                        programmed=False,
                                        detail=f"no legacy {tool} nat table (not dumped: that would create it)"))
        for datapath, argv, wanted in (
                (Datapath.IPTABLES_LEGACY, [f"{tool}-legacy-save"], isinstance(legacy, list) and "nat" in legacy),
                (Datapath.IPTABLES_NFT, [f"{tool}-nft-save"], True)):
            if not wanted:
                continue
            text, why = _run(argv, max(0.5, deadline - time.monotonic()))
            if text is None:
                if family == 4 or (why is not None and "not installed" not in why.detail):  # said once, for IPv4
                    checks.append(DatapathCheck(datapath=datapath, command=" ".join(argv), programmed=None,
                                                unavailable=why))
                continue
            raw[datapath.value + suffix] = text
            try:
                found, detail = kubeproxy.iptables_programmed(text)
                entries = kubeproxy.services_from_iptables(text, f"{tool}-{datapath.value.split('-')[1]}")
            except kubeproxy.ParseError as exc:
                checks.append(DatapathCheck(datapath=datapath, command=" ".join(argv), programmed=None,
                                            unavailable=Unavailable(unavailable=MissingReason.ERROR, detail=str(exc))))
                continue
            if family == 4 or found or entries:
                checks.append(DatapathCheck(datapath=datapath, command=" ".join(argv), programmed=found,
                                            detail=detail))
            if found:
                programmed.add(datapath)
            if found or any(e.reject for e in entries):
                services += entries
            else:  # kube-proxy elsewhere (nftables, IPVS) or absent: the CNI's hostPorts are still iptables'
                services += [e for e in entries if e.kind == "hostport"]

    for nft_family, suffix in (("ip", ""), ("ip6", "-v6")):
        command = f"nft -j list table {nft_family} kube-proxy"
        text, why = _run(command.split(), max(0.5, deadline - time.monotonic()))
        if text is None and why is not None and "No such file" in why.detail:
            if nft_family == "ip":
                checks.append(DatapathCheck(datapath=Datapath.NFTABLES, command=command, programmed=False,
                                            detail=f"no table {nft_family} kube-proxy"))
            continue
        if text is None:
            if nft_family == "ip" or (why is not None and "not installed" not in why.detail):
                checks.append(DatapathCheck(datapath=Datapath.NFTABLES, command=command, programmed=None,
                                            unavailable=why))
            continue
        raw[Datapath.NFTABLES.value + suffix] = text
        try:
            entries = kubeproxy.services_from_nft(text)
        except kubeproxy.ParseError as exc:
            entries = []
            checks.append(DatapathCheck(datapath=Datapath.NFTABLES, command=command, programmed=None,
                                        unavailable=Unavailable(unavailable=MissingReason.ERROR, detail=str(exc))))
        else:
            checks.append(DatapathCheck(datapath=Datapath.NFTABLES, command=command, programmed=bool(entries),
                                        detail=f"{len(entries)} service map elements"))
        if entries:
            programmed.add(Datapath.NFTABLES)
            services += entries

    ipvs, check, ipvs_text = _ipvs_services()
    checks.append(check)
    if ipvs_text is not None:
        raw[Datapath.IPVS.value] = ipvs_text
    if ipvs:
        programmed.add(Datapath.IPVS)
        services += ipvs

    modes = {Datapath.IPTABLES_LEGACY: "iptables", Datapath.IPTABLES_NFT: "iptables", Datapath.NFTABLES: "nftables",
             Datapath.IPVS: "ipvs"}
    distinct = sorted({modes[d] for d in programmed})
    # one datapath (in one or both families) is a mode; two (legacy and nft iptables, or iptables and IPVS) is not
    mode = distinct[0] if len(distinct) == 1 and len(programmed) == 1 else "ambiguous" if programmed else "none"
    reported: str | Unavailable = _proxy_mode_reported(max(0.2, deadline - time.monotonic())) if active else \
        Unavailable(unavailable=MissingReason.SKIPPED, detail="--passive: 127.0.0.1:10249 not asked")
    backend = next(iter(programmed)) if len(programmed) == 1 else None
    return (ProxyMode(mode=mode, backend=backend, checks=checks, reported=reported), services, raw)


def watched_addresses(targets: list[str], services: list[ServiceEntry],
                      slices: list[EndpointSliceView] | None) -> list[str]:
    """The targets, and for a target that is a Service frontend its endpoints (dataplane and EndpointSlice):
    the addresses a conntrack entry must touch to be kept."""
    out = list(dict.fromkeys(targets))
    for s in services:
        if s.address in targets:
            out += [e.address for e in s.endpoints]
            if slices:
                name = s.service.rsplit(":", 1)[0]
                out += [a for v in slices if v.service == name for ep in v.endpoints for a in ep.addresses]
    valid = []
    for a in dict.fromkeys(out):
        try:
            ipaddress.ip_address(a)
        except ValueError:
            continue
        valid.append(a)
    return valid


class NatCollector(Collector):
    name = "nat"
    description = "conntrack usage, counters and target entries; kube-proxy mode and its service map"

    def collect(self, ctx: SliceContext) -> SliceResult:
        started = time.monotonic()
        reasons: list[str] = []
        samples_wanted = max(1, ctx.options.nat_samples or DEFAULT_SAMPLES)
        interval = max(0.0, DEFAULT_INTERVAL_S if ctx.options.nat_interval is None else ctx.options.nat_interval)
        samples = [sample()]
        conf = settings()
        slices: list[EndpointSliceView] | None = None
        slices_source = ctx.options.endpointslices
        if slices_source:
            try:
                slices = kubeproxy.load_endpoint_slices(Path(slices_source))
            except kubeproxy.ParseError as exc:
                reasons.append(f"EndpointSlices: {exc}")
        proxy, services, raw = proxy_dataplane(min(20.0, ctx.remaining() / 2), active=not ctx.passive)
        watch = watched_addresses([t.address for t in ctx.targets], services, slices)
        table = conntrack_table(watch, min(MAX_KEEP, DEFAULT_KEEP if ctx.options.nat_keep is None else ctx.options.nat_keep), max(1.0, ctx.remaining() / 2))
        if isinstance(table, Unavailable):
            reasons.append(f"conntrack table: {table.detail}")
        ctx.probe_gate()
        more, cut = ctx.trend(started, samples_wanted, interval, sample)
        samples += more
        if cut:
            reasons.append(f"counter trend cut to {len(samples)} samples by the deadline")
        artifacts = []
        members: dict[str, str] = {}
        for key, text in raw.items():
            member, media = RAW_MEMBERS[key]
            members[key] = member
            source = {"iptables-legacy": "iptables-legacy-save", "iptables-nft": "iptables-nft-save",
                      "iptables-legacy-v6": "ip6tables-legacy-save", "iptables-nft-v6": "ip6tables-nft-save",
                      "nftables": "nft -j list table ip kube-proxy",
                      "nftables-v6": "nft -j list table ip6 kube-proxy", "ipvs": "/proc/net/ip_vs"}[key]
            artifacts.append(Artifact(name=member, data=text.encode(), media_type=media,
                                      provenance=Provenance(source=source)))
        # every netfilter rule of this netns as nft prints it: what a node-to-node diff compares, beyond
        # kube-proxy's own tables (a filter that drops DNS, a stray NAT)
        ruleset, why = _run(["nft", "list", "ruleset"], max(0.5, ctx.remaining() - 1))
        if ruleset is not None:
            members["ruleset"] = "nft-ruleset.txt"
            artifacts.append(Artifact(name="nft-ruleset.txt", data=ruleset.encode(), media_type=MediaType.TEXT,
                                      provenance=Provenance(source="nft list ruleset")))
        elif why is not None:
            reasons.append(f"nft list ruleset: {why.detail}")
        doc = NatSlice(settings=conf, samples=samples, table=table, proxy=proxy, services=services,
                       endpoint_slices=slices, endpoint_slices_source=slices_source, raw=members)
        artifacts.insert(0, Artifact.document(
            "nat.json", doc, MediaType.NAT,
            "/proc/sys/net/netfilter, /proc/net/stat/nf_conntrack, ctnetlink dump, iptables-save, nft, /proc/net/ip_vs",
            started))
        status = SliceStatus.PARTIAL if reasons else SliceStatus.COMPLETE
        return SliceResult(status=status, artifacts=artifacts, reason="; ".join(reasons) or None)
