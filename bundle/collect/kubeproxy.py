"""kube-proxy's dataplane read back into a service map, and EndpointSlices read from a file.

Parsers of read-only dumps: `iptables-save` (the KUBE-SERVICES -> KUBE-SVC/KUBE-EXT/KUBE-FW -> KUBE-SEP chains
kube-proxy's iptables proxier writes, comments naming each Service port), `nft -j list table ip kube-proxy`
(the nftables proxier's service-ips / service-nodeports maps, service and endpoint chains) and `ipvsadm -Ln`.
Each yields ServiceEntry models: frontend -> endpoints with the share of new connections each receives.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from pathlib import Path
from typing import Any

from bundle.models.nat import (
    DataplaneEndpoint,
    EndpointSliceView,
    ServiceEntry,
    SliceEndpoint,
    SlicePort,
)

MAX_RULES = 200_000
_KINDS = ("cluster IP", "external IP", "loadbalancer IP")
_SERVICE_CHAINS = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")


class ParseError(ValueError):
    """The input is not the format it claims to be."""


def _options(tokens: list[str]) -> dict[str, str]:
    """iptables-save rule options as a flat dict; a negated option is stored as '!<option>'."""
    out: dict[str, str] = {}
    i, negate = 0, False
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok.startswith("-"):
            value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") else ""
            key = ("!" if negate else "") + tok
            if key == "--comment" and "--comment" in out:
                key = "--comment2"
            out.setdefault(key, value)
            i += 2 if value else 1
        else:
            i += 1
        negate = False
    return out


def iptables_rules(text: str) -> dict[str, dict[str, list[dict[str, str]]]]:
    """table -> chain -> rules (as option dicts), from iptables-save (or iptables-restore input)."""
    tables: dict[str, dict[str, list[dict[str, str]]]] = {}
    table: dict[str, list[dict[str, str]]] | None = None
    count = 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":") and table is not None:
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A ") and table is not None:
            try:
                tokens = shlex.split(line)
            except ValueError as exc:
                raise ParseError(f"unreadable rule {line[:80]!r}: {exc}") from None
            table.setdefault(tokens[1], []).append(_options(tokens[2:]))
            count += 1
            if count > MAX_RULES:
                raise ParseError(f"more than {MAX_RULES} rules")
    return tables


def _service_of(comment: str) -> tuple[str, str | None]:
    """'ns1/svc1:p80 cluster IP' -> ('ns1/svc1:p80', 'cluster IP')."""
    for kind in _KINDS:
        if comment.endswith(" " + kind):
            return comment[: -len(kind) - 1], kind
    return comment.split(" ")[0], None


def _strip(address: str) -> str:
    return address[:-3] if address.endswith("/32") else address[:-4] if address.endswith("/128") else address


def _endpoints(nat: dict[str, list[dict[str, str]]], chain: str, depth: int = 0) -> list[DataplaneEndpoint]:
    """Follow a service chain to its KUBE-SEP DNAT targets; the share of each is what the sequence of
    `statistic --probability` rules leaves it."""
    if depth > 4:
        return []
    rules = nat.get(chain, [])
    # `-m recent --rcheck` rules send a client back to the endpoint it had (sessionAffinity: ClientIP); they are
    # not part of the random split
    jumps = [r for r in rules if r.get("-j", "").startswith("KUBE-SEP-") and "--rcheck" not in r]
    if not jumps:  # KUBE-EXT / KUBE-FW: on to the service chain they hand over to
        for r in rules:
            target = r.get("-j", "")
            if target.startswith(_SERVICE_CHAINS) and target != chain:
                return _endpoints(nat, target, depth + 1)
        return []
    out = []
    left = 1.0
    for r in jumps:
        p = float(r["--probability"]) if "--probability" in r else None
        share = left * (p if p is not None else 1.0)
        left -= share
        sep = r["-j"]
        dest = next((x.get("--to-destination", "") for x in nat.get(sep, []) if x.get("-j") == "DNAT"), "")
        host, _, port = dest.rpartition(":")
        if not host:
            continue
        out.append(DataplaneEndpoint(address=host.strip("[]"), port=int(port), probability=p,
                                     share=round(share, 6), chain=sep))
    return out


def services_from_iptables(text: str, source: str) -> list[ServiceEntry]:
    """The service map an iptables-save dump programs (nat table), with the REJECTs of Services without
    endpoints (filter table)."""
    tables = iptables_rules(text)
    nat = tables.get("nat", {})
    out: list[ServiceEntry] = []
    for chain, nodeport in (("KUBE-SERVICES", False), ("KUBE-NODEPORTS", True)):
        rules = nat.get(chain, [])
        open_ports = {(r.get("-p"), r.get("--dport")) for r in rules if "-d" not in r}
        for r in rules:
            target = r.get("-j", "")
            if not target.startswith(_SERVICE_CHAINS) or "--dport" not in r:
                continue
            if nodeport and "-d" in r and (r.get("-p"), r["--dport"]) in open_ports:
                continue  # the same node port on 127.0.0.0/8 (counted apart with nfacct): one frontend
            service, kind = _service_of(r.get("--comment", ""))
            affinity = next((int(x["--seconds"]) for x in nat.get(target, []) if "--rcheck" in x and "--seconds" in x),
                            None)
            # a KUBE-FW chain (loadBalancerSourceRanges) hands on only the sources it lists; KUBE-PROXY-FIREWALL
            # in the filter table drops the rest
            ranges = [x["-s"] for x in nat.get(target, []) if target.startswith("KUBE-FW-") and "-s" in x
                      and x.get("-j", "").startswith(_SERVICE_CHAINS)]
            out.append(ServiceEntry(
                service=service, kind="nodeport" if nodeport else (kind or "cluster IP"),
                protocol=r.get("-p", "tcp"), address=_strip(r.get("-d", "")) or None,
                port=int(r["--dport"]), endpoints=_endpoints(nat, target), session_affinity_s=affinity,
                source_ranges=ranges, source=f"{source} nat {chain}"))
    out += _hostports(nat, source)
    for table in ("filter", "nat"):
        for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"):
            for r in tables.get(table, {}).get(chain, []):
                comment = r.get("--comment", "")
                if r.get("-j") in ("REJECT", "DROP") and comment.endswith("has no endpoints") and "--dport" in r:
                    out.append(ServiceEntry(
                        service=comment.split(" ")[0], kind="cluster IP" if "-d" in r else "nodeport",
                        protocol=r.get("-p", "tcp"), address=_strip(r["-d"]) if "-d" in r else None,
                        port=int(r["--dport"]), reject=True, source=f"{source} {table} {chain}"))
    return out


def _hostports(nat: dict[str, list[dict[str, str]]], source: str) -> list[ServiceEntry]:
    """The CNI portmap plugin's hostPorts: CNI-HOSTPORT-DNAT hands a port to a CNI-DN-… chain whose DNAT sends it
    to the pod (on the node's every address, or on its hostIP with -d). No socket listens on a hostPort either."""
    out: list[ServiceEntry] = []
    chains = [r.get("-j", "") for r in nat.get("CNI-HOSTPORT-DNAT", []) if r.get("-j", "").startswith("CNI-DN-")]
    for chain in dict.fromkeys(chains):
        for r in nat.get(chain, []):
            dest = r.get("--to-destination", "")
            host, _, port = dest.rpartition(":")
            if r.get("-j") != "DNAT" or not host or not port.isdigit() or not r.get("--dport", "").isdigit():
                continue
            pod = host.strip("[]")
            out.append(ServiceEntry(
                service=f"hostPort {pod}:{port}", kind="hostport", protocol=r.get("-p", "tcp"),
                address=_strip(r["-d"]) if "-d" in r else None, port=int(r["--dport"]),
                endpoints=[DataplaneEndpoint(address=pod, port=int(port), share=1.0, chain=chain)],
                source=f"{source} nat {chain}"))
    return out


def iptables_programmed(text: str) -> tuple[bool, str]:
    """Whether kube-proxy's iptables proxier programs this dump: service chains present, not just the IPVS
    proxier's helper chains (it writes a KUBE-SERVICES too, matching ipsets)."""
    nat = iptables_rules(text).get("nat", {})
    svc = [c for c in nat if c.startswith(("KUBE-SVC-", "KUBE-SEP-"))]
    if svc:
        return True, f"{len([c for c in svc if c.startswith('KUBE-SVC-')])} KUBE-SVC and " \
                     f"{len([c for c in svc if c.startswith('KUBE-SEP-')])} KUBE-SEP chains"
    if "KUBE-SERVICES" in nat:
        return False, "KUBE-SERVICES present without KUBE-SVC chains (the IPVS or nftables proxier's helper rules)"
    return False, "no KUBE-SERVICES chain"


_IPVS_SERVICE = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+):(\d+)\s+(\S+)")
_IPVS_FWMARK = re.compile(r"^FWM\s+")
_IPVS_REAL = re.compile(r"^\s+->\s+(\S+):(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)")


def services_from_ipvsadm(text: str, source: str = "ipvsadm -Ln") -> list[ServiceEntry]:
    """Virtual services and their real servers from `ipvsadm -Ln`; shares from the weights.

    A firewall-mark service (`FWM mark`) has no address or port a flow could be matched to: it and its real
    servers are left out (they once landed on the service listed before it)."""
    out: list[ServiceEntry] = []
    current: ServiceEntry | None = None
    for line in text.splitlines():
        m = _IPVS_SERVICE.match(line)
        if m:
            current = ServiceEntry(service=f"{m[2]}:{m[3]}", kind="virtual server", protocol=m[1].lower(),
                                   address=m[2].strip("[]"), port=int(m[3]), source=source)
            out.append(current)
            continue
        if _IPVS_FWMARK.match(line):
            current = None
            continue
        m = _IPVS_REAL.match(line)
        if m and current is not None:
            current.endpoints.append(DataplaneEndpoint(address=m[1].strip("[]"), port=int(m[2]), weight=int(m[4]),
                                                       share=0.0))
    for entry in out:
        total = sum(e.weight or 0 for e in entry.endpoints)
        for e in entry.endpoints:
            e.share = round((e.weight or 0) / total, 6) if total else 0.0
    return out


def services_from_proc_ip_vs(text: str) -> list[ServiceEntry]:
    """/proc/net/ip_vs prints addresses in hex (0A600014:01BB); turned into ipvsadm -Ln's form and parsed."""
    def conv(field: str) -> str:
        """IPv4 as hex (0A600014:01BB); IPv6 as the kernel's %pI6, bracketed ([fd00:0010:...:000a]:01BB)."""
        if field.startswith("["):
            addr, _, port = field[1:].partition("]:")
            return f"[{ipaddress.IPv6Address(addr)}]:{int(port, 16)}"
        addr, _, port = field.partition(":")
        return f"{ipaddress.IPv4Address(int(addr, 16))}:{int(port, 16)}"

    lines = []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("TCP", "UDP", "SCTP") and len(parts) >= 3:
            lines.append(f"{parts[0]}  {conv(parts[1])} {parts[2]}")
        elif parts and parts[0] == "FWM":
            lines.append("FWM  " + " ".join(parts[1:]))
        elif len(parts) >= 6 and parts[0] == "->" and ":" in parts[1] and parts[1][0] != "R":
            lines.append(f"  -> {conv(parts[1])} {' '.join(parts[2:6])}")
    return services_from_ipvsadm("\n".join(lines), source="/proc/net/ip_vs")


def _nft_rules(doc: Any) -> tuple[dict[str, list[list[Any]]], dict[str, list[Any]]]:
    chains: dict[str, list[list[Any]]] = {}
    maps: dict[str, list[Any]] = {}
    for item in doc.get("nftables", []) if isinstance(doc, dict) else []:
        if "rule" in item:
            chains.setdefault(item["rule"].get("chain", ""), []).append(item["rule"].get("expr", []))
        elif "chain" in item:
            chains.setdefault(item["chain"].get("name", ""), [])
        elif "map" in item:
            maps[item["map"].get("name", "")] = item["map"].get("elem", []) or []
    return chains, maps


def _walk(node: Any) -> list[Any]:
    """Every dict and list inside a JSON value, depth first (nft expressions nest freely)."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n)
        if isinstance(n, dict):
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def _gotos(chains: dict[str, list[list[Any]]], chain: str) -> list[str]:
    out: list[str] = []
    for expr in chains.get(chain, []):
        for n in _walk(expr):
            if isinstance(n, dict) and isinstance(n.get("goto"), dict):
                name = str(n["goto"].get("target", ""))
                if name not in out:
                    out.append(name)
    return out


def _nft_endpoints(chains: dict[str, list[list[Any]]], chain: str) -> list[DataplaneEndpoint]:
    """A service chain's `numgen random mod N vmap { i : goto endpoint-… }` and each endpoint chain's dnat;
    an external- chain hands over to its service- chain first."""
    targets = [t for t in _gotos(chains, chain) if t.startswith("endpoint-")]
    if not targets:
        service = next((t for t in _gotos(chains, chain) if t.startswith("service-")), None)
        if service is not None and chain.startswith("external-"):
            return _nft_endpoints(chains, service)
    out = []
    for name in targets:
        for expr in chains.get(name, []):
            for n in _walk(expr):
                if isinstance(n, dict) and isinstance(n.get("dnat"), dict):
                    d = n["dnat"]
                    out.append(DataplaneEndpoint(address=str(d.get("addr", "")), port=int(d.get("port", 0)),
                                                 share=round(1 / len(targets), 6), chain=name))
    return out


def _service_name(chain: str) -> str:
    """service-ULMVA6XW-ns1/svc1/tcp/p80 (or external-…) -> ns1/svc1:p80."""
    bits = chain.split("-", 2)[-1].split("/")
    return f"{bits[0]}/{bits[1]}:{bits[3]}" if len(bits) >= 4 else chain


def services_from_nft(text: str, source: str = "nft table ip kube-proxy") -> list[ServiceEntry]:
    """The nftables proxier's maps: service-ips (ClusterIP, external and load-balancer IPs . proto . port :
    goto service-… or external-…), service-nodeports, and no-endpoint-services / -nodeports, whose
    `goto reject-chain` elements are the Services without endpoints (their `drop` elements are external
    traffic without local endpoints, which is by design)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not nft JSON: {exc.msg}") from None
    chains, maps = _nft_rules(doc)
    out: list[ServiceEntry] = []
    for map_name, nodeport in (("service-ips", False), ("service-nodeports", True),
                               ("no-endpoint-services", False), ("no-endpoint-nodeports", True)):
        reject = map_name.startswith("no-endpoint")
        for elem in maps.get(map_name, []):
            if not (isinstance(elem, list) and len(elem) == 2):
                continue
            key, verdict = elem
            comment = ""
            if isinstance(key, dict) and isinstance(key.get("elem"), dict):
                comment = str(key["elem"].get("comment", ""))
                key = key["elem"].get("val")
            parts = key.get("concat", []) if isinstance(key, dict) else []
            if nodeport and len(parts) == 2:
                address, proto, port = None, parts[0], parts[1]
            elif not nodeport and len(parts) == 3:
                address, proto, port = parts
            else:
                continue
            target = str(verdict.get("goto", {}).get("target", "")) if isinstance(verdict, dict) else ""
            if reject and target != "reject-chain":
                continue
            kind = "nodeport" if nodeport else "external IP" if target.startswith("external-") else "cluster IP"
            out.append(ServiceEntry(service=comment if reject else _service_name(target), kind=kind,
                                    protocol=str(proto), address=address, port=int(port),
                                    endpoints=[] if reject else _nft_endpoints(chains, target), reject=reject,
                                    source=source))
    return out


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def endpoint_slices(objects: list[Any]) -> list[EndpointSliceView]:
    """EndpointSlice API objects (discovery.k8s.io/v1, or a List of them) as the slice's views."""
    out = []
    stack = list(objects)
    while stack:
        obj = stack.pop(0)
        if not isinstance(obj, dict):
            continue
        if obj.get("kind", "").endswith("List") or ("items" in obj and "kind" not in obj):
            stack[0:0] = obj.get("items") or []
            continue
        if obj.get("kind") != "EndpointSlice":
            continue
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        ports = [SlicePort(name=p.get("name"), port=p.get("port"), protocol=p.get("protocol", "TCP"))
                 for p in obj.get("ports") or [] if isinstance(p, dict)]
        eps = []
        for e in obj.get("endpoints") or []:
            if not isinstance(e, dict):
                continue
            cond = e.get("conditions") or {}
            hints: dict[str, Any] = e["hints"] if isinstance(e.get("hints"), dict) else {}
            eps.append(SliceEndpoint(addresses=[str(a) for a in e.get("addresses") or []], ready=_bool(cond.get("ready")),
                                     serving=_bool(cond.get("serving")), terminating=_bool(cond.get("terminating")),
                                     node=e.get("nodeName") if isinstance(e.get("nodeName"), str) else None,
                                     zone=e.get("zone") if isinstance(e.get("zone"), str) else None,
                                     for_zones=_hint_names(hints.get("forZones")),
                                     for_nodes=_hint_names(hints.get("forNodes"))))
        ns = str(meta.get("namespace", "default"))
        kind = obj.get("addressType")
        out.append(EndpointSliceView(namespace=ns, name=str(meta.get("name", "")),
                                     service=f"{ns}/{labels.get('kubernetes.io/service-name', '')}",
                                     address_type=kind if isinstance(kind, str) else None, ports=ports,
                                     endpoints=eps))
    return out


def _hint_names(value: Any) -> list[str] | None:
    """hints.forZones / forNodes: a list of {name: ...}; None when absent."""
    if not isinstance(value, list):
        return None
    return [str(h["name"]) for h in value if isinstance(h, dict) and isinstance(h.get("name"), str)]


def load_endpoint_slices(path: Path) -> list[EndpointSliceView]:
    """A JSON or YAML file (one object, a List, or several YAML documents)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ParseError(f"cannot read {path}: {exc}") from None
    try:
        docs: list[Any] = [json.loads(text)]
    except json.JSONDecodeError:
        import yaml

        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise ParseError(f"{path} is neither JSON nor YAML: {str(exc).splitlines()[0]}") from None
    views = endpoint_slices(docs)
    if not views:
        raise ParseError(f"{path} holds no EndpointSlice")
    return views
