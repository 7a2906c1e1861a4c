"""Incident scenarios built from network namespaces, for practice, demos and tests.

Addresses: pods 10.244.1.0/24 on node A, nodes 10.244.0.0/24; all inside
namespaces this module creates, never connected to the machine's interfaces.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError

from bundle.errors import LabError
from bundle.lab.score import Expect
from bundle.lab.topology import (
    LAB_RUN_DIR,
    Topology,
    existing_namespaces,
    remove_namespace,
    restore_machine_sysctls,
)

LISTEN_PORT = 8080
OTHER_PORT = 9090
_LISTENER = "bundle.lab.listener"


@dataclass
class LabInfo:
    scenario: str
    description: str
    namespaces: dict[str, str]
    targets: list[str]
    vantages: list[str]
    verdict: Expect  # what the ladder must conclude (netbundle lab score)
    expect: dict[str, object] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    prefix: str | None = None  # set when built under a prefix other than nb-<scenario>
    watch: list[str] = field(default_factory=list)  # an intermittent fault: scored by `netbundle watch` with these

    def watch_argv(self, out_dir: str) -> list[str]:
        """`netbundle watch` on the scenario's targets and vantages, one bundle into out_dir."""
        return ["netbundle", "watch", *self.collect_argv()[2:], *self.watch, "--max-bundles", "1",
                "--out-dir", out_dir]

    def collect_argv(self) -> list[str]:
        argv = ["netbundle", "collect"]
        for t in self.targets:
            argv += ["--target", t]
        for n in self.names:
            argv += ["--name", n]
        for role in self.vantages:
            argv += ["--netns", self.namespaces[role]]
        if "endpointslices" in self.files:
            argv += ["--endpointslices", self.files["endpointslices"]]
        return argv

    def down_argv(self) -> list[str]:
        return ["netbundle", "lab", "down", self.scenario] + (["--prefix", self.prefix] if self.prefix else [])

    def as_dict(self) -> dict[str, object]:
        return {"scenario": self.scenario, "description": self.description, "namespaces": self.namespaces,
                "targets": self.targets, "names": self.names, "files": self.files, "collect": self.collect_argv(),
                "down": self.down_argv(), "expect": self.expect,
                "watch": self.watch_argv(".") if self.watch else None,
                "verdict": {"row": self.verdict.row, "owner": self.verdict.owner, "causes": list(self.verdict.causes)}}

    def describe(self) -> str:
        lines = [f"lab {self.scenario}: {self.description}", "namespaces:"]
        lines += [f"  {role:<8} {name}" for role, name in self.namespaces.items()]
        lines += ["targets: " + " ".join(self.targets), "collect with:", "  " + " ".join(self.collect_argv()),
                  "remove with:\n  " + " ".join(shlex.quote(a) for a in self.down_argv())]
        return "\n".join(lines) + "\n"


def _two_nodes(t: Topology, *, server_pod: bool, node_link_mtu: int, server_bind: str | None = "0.0.0.0",
               remote_mtu: int | None = None, remote_bind: str = "0.0.0.0") -> None:
    """client pod -> node A (bridge cbr0, forwarding) -> node B ("remote"), optional server pod on node A.

    server_bind: where the server pod listens on 8080 (None: nothing listens there).
    """
    for role in ("pod", "node", "remote"):
        t.add_netns(role)
    t.bridge("node", "cbr0")
    t.address("node", "cbr0", "10.244.1.1/24")
    t.veth("node", "vethpod", "pod", "eth0")
    t.enslave("node", "vethpod", "cbr0")
    t.address("pod", "eth0", "10.244.1.2/24")
    t.route("pod", "0.0.0.0/0", gateway="10.244.1.1")
    t.veth("node", "eth0", "remote", "eth0", mtu=node_link_mtu, mtu_b=remote_mtu)
    t.address("node", "eth0", "10.244.0.1/24")
    t.address("remote", "eth0", "10.244.0.2/24")
    t.route("remote", "10.244.1.0/24", gateway="10.244.0.1")
    t.sysctl("node", "net.ipv4.ip_forward", "1")
    t.python("remote", _LISTENER, "--bind", remote_bind, "--port", str(LISTEN_PORT), "--send", "65536")
    if server_pod:
        t.add_netns("server")
        t.veth("node", "vethsrv", "server", "eth0")
        t.enslave("node", "vethsrv", "cbr0")
        t.address("server", "eth0", "10.244.1.3/24")
        t.route("server", "0.0.0.0/0", gateway="10.244.1.1")
        if server_bind is not None:
            t.python("server", _LISTENER, "--bind", server_bind, "--port", str(LISTEN_PORT), "--send", "1024")
            t.wait_listening("server", LISTEN_PORT)
        else:  # something else runs there, just not on the port the clients use
            t.python("server", _LISTENER, "--port", str(OTHER_PORT), "--send", "16")
            t.wait_listening("server", OTHER_PORT)
    t.wait_listening("remote", LISTEN_PORT)


def _healthy(t: Topology) -> LabInfo:
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    return LabInfo(
        scenario="healthy",
        verdict=Expect(None, None),
        description="client pod -> node -> server pod and a remote node; everything works (the control case)",
        namespaces=dict(t.namespaces),
        targets=[f"10.244.1.3:{LISTEN_PORT}", f"10.244.0.2:{LISTEN_PORT}"],
        vantages=["pod", "node"],
        expect={"path_mtu": {"10.244.0.2": 1500}},
    )


_DROP_FRAG_NEEDED = """
table inet nb_lab {
    chain output { type filter hook output priority 0; icmp type destination-unreachable icmp code frag-needed drop; }
    chain forward { type filter hook forward priority 0; icmp type destination-unreachable icmp code frag-needed drop;
        ip length > 1400 drop; }
}
"""


def _mtu(t: Topology) -> LabInfo:
    # Both ends of the path are 1500 (so TCP's MSS does not avoid the problem); in between, the node's link is
    # 1400 and anything larger is dropped without a word ("ip length > 1400 drop" stands for a narrow link
    # behind a router that filters ICMP; it also catches the remote's GSO super-segments, which a veth would
    # otherwise deliver whole).
    _two_nodes(t, server_pod=False, node_link_mtu=1400, remote_mtu=1500)
    t.nft("node", _DROP_FRAG_NEEDED)
    # An application in the pod downloading 64 KiB from the remote every second: its transfers stall.
    t.python("pod", "bundle.lab.client", "--target", f"10.244.0.2:{LISTEN_PORT}", "--interval", "1", "--read",
             "--max-age", "8", "--max-open", "20")
    return LabInfo(
        scenario="mtu",
        verdict=Expect("10.244.0.2:8080", "route", ("mtu.blackhole",)),
        description="pod -> node -> remote node; the node-to-node link is MTU 1400 and the node drops ICMP "
                    "'fragmentation needed': small pings pass, large DF packets vanish (a PMTU blackhole)",
        namespaces=dict(t.namespaces),
        targets=[f"10.244.0.2:{LISTEN_PORT}"],
        vantages=["pod", "node"],
        expect={"path_mtu": {"10.244.0.2": 1400}, "largest_pass": 1372, "smallest_fail": 1373},
    )


def _no_listener(t: Topology) -> LabInfo:
    _two_nodes(t, server_pod=True, node_link_mtu=1500, server_bind=None)
    return LabInfo(
        scenario="no-listener",
        verdict=Expect("10.244.1.3:8080", "transport", ("transport.no_listener",)),
        description="the server pod runs (on 9090) but nothing listens on 8080, the port clients use: "
                    "their SYNs are answered with RST",
        namespaces=dict(t.namespaces), targets=[f"10.244.1.3:{LISTEN_PORT}"], vantages=["pod", "node", "server"],
        expect={"findings": ["transport.refused", "transport.no_listener"]},
    )


_DROP_SYN = f"""
table inet nb_lab {{
    chain forward {{ type filter hook forward priority 0; tcp dport {LISTEN_PORT} tcp flags & (syn | ack) == syn drop; }}
}}
"""


def _syn_drop(t: Topology) -> LabInfo:
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    t.nft("node", _DROP_SYN)
    # An application in the client pod that keeps trying: its SYN-SENT sockets pile up.
    t.python("pod", "bundle.lab.client", "--target", f"10.244.1.3:{LISTEN_PORT}", "--interval", "0.25")
    return LabInfo(
        scenario="syn-drop",
        verdict=Expect("10.244.1.3:8080", "transport", ("transport.connect_timeout",)),
        description=f"the node drops forwarded SYNs to port {LISTEN_PORT}: the client pod's connections sit in "
                    "SYN-SENT and time out, while the node itself still connects",
        namespaces=dict(t.namespaces), targets=[f"10.244.1.3:{LISTEN_PORT}"], vantages=["pod", "node", "server"],
        expect={"findings": ["transport.connect_timeout", "transport.syn_sent_stuck"]},
    )


# One forwarded SYN in two to the port dropped at random (each SYN and each retransmission drawn anew).
_FLAKY_SYN = f"""
table inet nb_lab {{
    chain forward {{ type filter hook forward priority 0;
        tcp dport {LISTEN_PORT} tcp flags & (syn | ack) == syn numgen random mod 2 == 0 drop; }}
}}
"""


def _flaky(t: Topology) -> LabInfo:
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    t.nft("node", _FLAKY_SYN)
    return LabInfo(
        scenario="flaky",
        verdict=Expect("10.244.1.3:8080", "transport",
                       ("watch.connect_failures", "capture.syn_unanswered", "transport.connect_timeout")),
        description=f"the node drops forwarded SYNs to port {LISTEN_PORT} at random (one in two): a connect from "
                    "the client pod times out when a SYN and its retransmission are both lost (one in four with a "
                    "2.5 s timeout), mostly it just takes a second longer; one collect usually sees a healthy "
                    "network — scored with `netbundle watch`",
        namespaces=dict(t.namespaces), targets=[f"10.244.1.3:{LISTEN_PORT}"], vantages=["pod", "node"],
        watch=["--connect-timeout", "2.5", "--for", "120s"],
    )


def _loopback_listener(t: Topology) -> LabInfo:
    _two_nodes(t, server_pod=True, node_link_mtu=1500, server_bind="127.0.0.1")
    return LabInfo(
        scenario="loopback-listener",
        verdict=Expect("10.244.1.3:8080", "transport", ("transport.loopback_only",)),
        description=f"the server pod listens on 127.0.0.1:{LISTEN_PORT} only: clients in other namespaces are "
                    "refused while a check inside the pod succeeds (the sidecar case)",
        namespaces=dict(t.namespaces), targets=[f"10.244.1.3:{LISTEN_PORT}"], vantages=["pod", "node", "server"],
        expect={"findings": ["transport.refused", "transport.loopback_only"]},
    )


STALE_MAC = "02:00:00:de:ad:01"  # the remote node's NIC before it was replaced


def _stale_neighbor(t: Topology) -> LabInfo:
    _two_nodes(t, server_pod=False, node_link_mtu=1500)
    t.neighbor("node", "eth0", "10.244.0.2", STALE_MAC)
    return LabInfo(
        scenario="stale-neighbor",
        verdict=Expect("10.244.0.2:8080", "route", ("neighbor.stale_mac",)),
        description="the remote node's NIC was replaced (new MAC) but the node keeps a static neighbor entry "
                    f"with the old one ({STALE_MAC}), as an overlay CNI programs for its peers: the node sends "
                    "the remote's frames to a MAC nobody has, so pod and node both time out while routes look "
                    "fine and ARP is never asked again",
        namespaces=dict(t.namespaces), targets=[f"10.244.0.2:{LISTEN_PORT}"], vantages=["pod", "node", "remote"],
        expect={"findings": ["neighbor.stale_mac", "transport.connect_timeout"]},
    )


CLUSTER_DNS = "10.96.0.10"
DNS_POD = "10.244.0.2"  # dnsmasq runs in the remote node's netns, standing in for CoreDNS
POD_RESOLV_CONF = (f"nameserver {CLUSTER_DNS}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n"
                   "options ndots:5 timeout:1 attempts:2\n")
ZONE = {
    "kubernetes.default.svc.cluster.local": "10.96.0.1",
    "payments.default.svc.cluster.local": "10.96.0.20",
    "kube-dns.kube-system.svc.cluster.local": CLUSTER_DNS,
}
_DNS_SERVICE = f"""
table ip nb_lab_nat {{
    chain prerouting {{ type nat hook prerouting priority -100;
        ip daddr {CLUSTER_DNS} udp dport 53 dnat to {DNS_POD}:53
        ip daddr {CLUSTER_DNS} tcp dport 53 dnat to {DNS_POD}:53
    }}
    chain output {{ type nat hook output priority -100;
        ip daddr {CLUSTER_DNS} udp dport 53 dnat to {DNS_POD}:53
        ip daddr {CLUSTER_DNS} tcp dport 53 dnat to {DNS_POD}:53
    }}
}}
"""
_DROP_DNS = f"""
table inet nb_lab {{
    chain forward {{ type filter hook forward priority 0; ip daddr {DNS_POD} udp dport 53 drop; ip daddr {DNS_POD} tcp dport 53 drop; }}
    chain output {{ type filter hook output priority 0; ip daddr {DNS_POD} udp dport 53 drop; ip daddr {DNS_POD} tcp dport 53 drop; }}
}}
"""


def _cluster_dns(t: Topology, *, service_route: bool = True, records: dict[str, str] | None = None) -> Path:
    """Kubernetes resolv.conf in the pod, the node resolving through the cluster DNS too (never through this
    machine's own resolver), the kube-dns ClusterIP DNAT-ed on the node to dnsmasq on the remote node (its
    query log on). Returns the log's path."""
    t.netns_file("pod", "resolv.conf", POD_RESOLV_CONF)
    t.netns_file("node", "resolv.conf", f"nameserver {CLUSTER_DNS}\noptions timeout:1 attempts:2\n")
    if service_route:
        t.route("node", "10.96.0.0/16", dev="eth0")  # the node's route toward Service IPs, as a default route would
    t.nft("node", _DNS_SERVICE)
    run = t.run_dir()
    log = run / "dnsmasq.log"
    t.spawn("remote", ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--listen-address={DNS_POD}",
                       "--bind-interfaces", "--port=53", "--log-queries", f"--log-facility={log}", "--local=/#/",
                       f"--pid-file={run / 'dnsmasq.pid'}", "--user=root", "--group=root",
                       *[f"--host-record={name},{ip}" for name, ip in {**ZONE, **(records or {})}.items()]])
    t.wait_listening("remote", 53)
    return log


def _dns(t: Topology, *, drop: bool) -> LabInfo:
    """pod (Kubernetes resolv.conf, ndots:5) -> node (DNATs the kube-dns ClusterIP) -> dnsmasq on the remote node."""
    _two_nodes(t, server_pod=False, node_link_mtu=1500)
    log = _cluster_dns(t)
    if drop:
        t.nft("node", _DROP_DNS)
    names = ["payments", "doesnotexist", "payments.default.svc.cluster.local."]
    return LabInfo(
        scenario="dns-drop" if drop else "dns-ndots",
        verdict=Expect("payments", "dns", ("dns.timeout",)) if drop else Expect("doesnotexist", "dns", ("dns.nxdomain",)),
        description=("the node drops UDP and TCP 53 toward the cluster DNS: lookups time out (not NXDOMAIN)" if drop
                     else "a pod with Kubernetes' resolv.conf (ndots:5, three search domains) and a cluster DNS "
                          "(dnsmasq, query log on): a missing short name costs 4 candidates x A/AAAA = 8 queries"),
        namespaces=dict(t.namespaces), targets=[f"{CLUSTER_DNS}:53"], vantages=["pod", "node"], names=names,
        files={"dns_log": str(log), "pod_resolv_conf": str(Path("/etc/netns") / t.namespaces["pod"] / "resolv.conf")},
        expect={"findings": ["dns.timeout"] if drop else ["dns.search_amplification"]},
    )


SERVICE_IP = "10.96.0.20"
SERVICE_PORT = 443
GONE_POD = "10.244.2.9"  # the replaced payments pod, once on node B's pod range: nothing has this address now
# What kube-proxy's iptables proxier writes for one ClusterIP Service with one endpoint (chain names are its
# hash-shaped names), loaded with iptables-restore: here the endpoint is the pod that no longer exists.
_KUBE_PROXY_STALE = f"""*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-NBLABPAYMENTS0443 - [0:0]
:KUBE-SEP-NBLABGONEPOD00009 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SERVICES -d {SERVICE_IP}/32 -p tcp -m comment --comment "default/payments:https cluster IP" -m tcp --dport {SERVICE_PORT} -j KUBE-SVC-NBLABPAYMENTS0443
-A KUBE-SVC-NBLABPAYMENTS0443 -m comment --comment "default/payments:https -> {GONE_POD}:{LISTEN_PORT}" -j KUBE-SEP-NBLABGONEPOD00009
-A KUBE-SEP-NBLABGONEPOD00009 -s {GONE_POD}/32 -m comment --comment "default/payments:https" -j KUBE-MARK-MASQ
-A KUBE-SEP-NBLABGONEPOD00009 -p tcp -m comment --comment "default/payments:https" -m tcp -j DNAT --to-destination {GONE_POD}:{LISTEN_PORT}
COMMIT
"""


def _endpoint_slice(*ready: str, service: str = "payments", port_name: str = "https", name: str = "payments-7xk2p",
                    family: str = "IPv4") -> dict[str, object]:
    """A Service's EndpointSlice as the API serves it (discovery.k8s.io/v1): the ready pods on LISTEN_PORT."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "ports": [{"name": port_name, "port": LISTEN_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [pod], "nodeName": "node-a",
                       "conditions": {"ready": True, "serving": True, "terminating": False},
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": f"{service}-pod-{i}"}}
                      for i, pod in enumerate(ready)],
    }


def _write_slices(t: Topology, *slices: dict[str, object]) -> Path:
    """The EndpointSlices as `kubectl get endpointslices -o json` lists them, in the lab's run folder."""
    path = t.run_dir() / "endpointslices.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(slices)}, indent=1))
    return path


_ORDERS = {"service": "orders", "port_name": "http", "name": "orders-k2j4d"}


def _stale_dnat(t: Topology) -> LabInfo:
    """The payments pod was replaced (new IP 10.244.1.3) but the node's kube-proxy rules still DNAT the
    ClusterIP to the old one: connects to the ClusterIP hang, the new pod's IP answers."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    t.route("node", "10.244.2.0/24", gateway="10.244.0.2")  # node B's pod range; B no longer has that pod
    t.route("node", "10.96.0.0/16", gateway="10.244.0.2")  # the node's own route toward Service IPs, as a default route
    _cluster_dns(t, service_route=False)  # the name resolves: payments.default.svc.cluster.local -> 10.96.0.20
    t.iptables_restore("node", _KUBE_PROXY_STALE)
    slices = _write_slices(t, _endpoint_slice("10.244.1.3"))
    # the application in the pod keeps calling the Service: its flows sit in conntrack, translated to the gone pod
    t.python("pod", "bundle.lab.client", "--target", f"{SERVICE_IP}:{SERVICE_PORT}", "--interval", "0.5",
             "--max-age", "20", "--max-open", "20")
    return LabInfo(
        scenario="stale-dnat",
        verdict=Expect(f"{SERVICE_IP}:{SERVICE_PORT}", "service", ("service.stale_dnat",)),
        description=f"kube-proxy-shaped iptables rules on the node still DNAT {SERVICE_IP}:{SERVICE_PORT} to the "
                    f"replaced pod {GONE_POD}; the EndpointSlice names the new pod 10.244.1.3: connects to the "
                    f"ClusterIP hang while the pod IP answers",
        namespaces=dict(t.namespaces), targets=[f"{SERVICE_IP}:{SERVICE_PORT}", f"10.244.1.3:{LISTEN_PORT}"],
        vantages=["pod", "node"], files={"endpointslices": str(slices)},
        expect={"findings": ["service.stale_dnat"]},
    )


# What kube-proxy's nftables proxier writes (pkg/proxy/nftables: `table ip kube-proxy`, the service-ips verdict
# map, one service- chain per Service port choosing an endpoint- chain with numgen, a reject for a Service
# without endpoints), for three Services: payments (one endpoint), orders (two), legacy (none).
_KUBE_PROXY_NFT = f"""
add table ip kube-proxy {{ comment "rules for kube-proxy" ; }}
add chain ip kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain ip kube-proxy nat-output {{ type nat hook output priority -100 ; }}
add chain ip kube-proxy nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain ip kube-proxy filter-output {{ type filter hook output priority -110 ; }}
add chain ip kube-proxy filter-forward {{ type filter hook forward priority -110 ; }}
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add chain ip kube-proxy reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain ip kube-proxy service-NBPAYSVC-default/payments/tcp/https
add chain ip kube-proxy endpoint-NBPAYEP3-default/payments/tcp/https__10.244.1.3/{LISTEN_PORT}
add chain ip kube-proxy service-NBORDSVC-default/orders/tcp/http
add chain ip kube-proxy endpoint-NBORDEP3-default/orders/tcp/http__10.244.1.3/{LISTEN_PORT}
add chain ip kube-proxy endpoint-NBORDEP2-default/orders/tcp/http__10.244.0.2/{LISTEN_PORT}
add map ip kube-proxy service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add map ip kube-proxy no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy service-NBPAYSVC-default/payments/tcp/https ip daddr {SERVICE_IP} tcp dport {SERVICE_PORT} ip saddr != 10.244.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy service-NBPAYSVC-default/payments/tcp/https numgen random mod 1 vmap {{ 0 : goto endpoint-NBPAYEP3-default/payments/tcp/https__10.244.1.3/{LISTEN_PORT} }}
add rule ip kube-proxy endpoint-NBPAYEP3-default/payments/tcp/https__10.244.1.3/{LISTEN_PORT} ip saddr 10.244.1.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-NBPAYEP3-default/payments/tcp/https__10.244.1.3/{LISTEN_PORT} meta l4proto tcp dnat to 10.244.1.3:{LISTEN_PORT}
add element ip kube-proxy service-ips {{ {SERVICE_IP} . tcp . {SERVICE_PORT} : goto service-NBPAYSVC-default/payments/tcp/https }}
add rule ip kube-proxy service-NBORDSVC-default/orders/tcp/http ip daddr 10.96.0.21 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy service-NBORDSVC-default/orders/tcp/http numgen random mod 2 vmap {{ 0 : goto endpoint-NBORDEP3-default/orders/tcp/http__10.244.1.3/{LISTEN_PORT} , 1 : goto endpoint-NBORDEP2-default/orders/tcp/http__10.244.0.2/{LISTEN_PORT} }}
add rule ip kube-proxy endpoint-NBORDEP3-default/orders/tcp/http__10.244.1.3/{LISTEN_PORT} meta l4proto tcp dnat to 10.244.1.3:{LISTEN_PORT}
add rule ip kube-proxy endpoint-NBORDEP2-default/orders/tcp/http__10.244.0.2/{LISTEN_PORT} meta l4proto tcp dnat to 10.244.0.2:{LISTEN_PORT}
add element ip kube-proxy service-ips {{ 10.96.0.21 . tcp . 80 : goto service-NBORDSVC-default/orders/tcp/http }}
add element ip kube-proxy no-endpoint-services {{ 10.96.0.22 . tcp . 80 comment "default/legacy:http" : goto reject-chain }}
"""


def _service_nft(t: Topology) -> LabInfo:
    """Three Services programmed by kube-proxy's nftables proxier on the node, matching their EndpointSlices:
    the ClusterIP answers through the DNAT (the control case for the nftables parser and mode detection)."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    slices = _nft_services(t, node_service_route=True, cluster_ips_check=False)
    return LabInfo(
        scenario="service-nft",
        verdict=Expect(None, None),
        description=f"kube-proxy in nftables mode on the node: {SERVICE_IP}:{SERVICE_PORT} (payments) -> 10.244.1.3, "
                    f"10.96.0.21:80 (orders) -> two endpoints, 10.96.0.22:80 (legacy) rejected for having none; "
                    f"the EndpointSlices agree",
        namespaces=dict(t.namespaces), targets=[f"{SERVICE_IP}:{SERVICE_PORT}"], vantages=["pod", "node"],
        files={"endpointslices": str(slices)}, expect={"findings": []},
    )


CONNTRACK_MAX = 256
_NAT_NODE = """
table ip nb_lab_nat {
    chain postrouting { type nat hook postrouting priority 100; ip saddr 10.244.1.0/24 oifname "eth0" masquerade; }
}
"""


def _conntrack_full(t: Topology) -> LabInfo:
    """The node masquerades pod traffic; nf_conntrack_max is lowered for the scenario (machine-wide: it is only
    writable there; the old value is recorded and put back on teardown). A connection pool in the pod fills
    the node's table with established (assured, so never early-dropped) flows and keeps opening more: new SYNs
    are dropped by conntrack while the established flows carry on."""
    _two_nodes(t, server_pod=False, node_link_mtu=1500)
    t.nft("node", _NAT_NODE)
    t.python("remote", _LISTENER, "--port", str(OTHER_PORT), "--send", "16", "--hold")
    t.wait_listening("remote", OTHER_PORT)
    t.machine_sysctl("net.netfilter.nf_conntrack_max", str(CONNTRACK_MAX))
    t.python("pod", "bundle.lab.client", "--target", f"10.244.0.2:{OTHER_PORT}", "--hold", "--interval", "0.01",
             "--max-age", "2", "--max-open", str(CONNTRACK_MAX + 150))
    return LabInfo(
        scenario="conntrack-full",
        verdict=Expect(f"10.244.0.2:{OTHER_PORT}", "service", ("service.conntrack_dropping", "service.conntrack_near_max")),
        description=f"nf_conntrack_max lowered to {CONNTRACK_MAX} (restored on teardown); a connection pool in "
                    f"the pod fills the node's NAT conntrack table with established flows and keeps opening "
                    f"more: new connections are dropped while established ones survive",
        namespaces=dict(t.namespaces), targets=[f"10.244.0.2:{OTHER_PORT}"], vantages=["pod", "node"],
        expect={"findings": ["service.conntrack_near_max", "service.conntrack_dropping"]},
    )


# kube-proxy's nftables proxier also rejects what reaches a ClusterIP on a port no Service has (a ping, say):
# `filter-forward ct state new jump cluster-ips-check`, `ip daddr @cluster-ips reject` (pkg/proxy/nftables).
_CLUSTER_IPS_CHECK = f"""
add set ip kube-proxy cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add chain ip kube-proxy cluster-ips-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add element ip kube-proxy cluster-ips {{ {SERVICE_IP}, 10.96.0.21, 10.96.0.22 }}
"""


def _nft_services(t: Topology, *, node_service_route: bool, cluster_ips_check: bool = True) -> Path:
    """The nftables proxier's three Services (service-nft) on the node — with the cluster-ips check its recent
    versions add — and their EndpointSlices; returns the slices' file."""
    if node_service_route:
        t.route("node", "10.96.0.0/16", gateway="10.244.0.2")  # the node's own route toward Service IPs
    t.nft("node", _KUBE_PROXY_NFT + (_CLUSTER_IPS_CHECK if cluster_ips_check else ""))
    return _write_slices(t, _endpoint_slice("10.244.1.3"), _endpoint_slice("10.244.1.3", "10.244.0.2", **_ORDERS))


def _k8s_healthy(t: Topology) -> LabInfo:
    """A healthy cluster full of what every cluster does: the pod's ping to a ClusterIP is rejected by
    kube-proxy's cluster-ips check (ICMP port unreachable), ndots:5 turns an external name into four candidates
    answered in milliseconds, and the node, whose resolver has no search list, cannot resolve the short name."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    _cluster_dns(t, service_route=False, records={"api.example.com": "10.244.0.2"})
    slices = _nft_services(t, node_service_route=True)
    return LabInfo(
        scenario="k8s-healthy",
        description="a healthy cluster with Kubernetes-normal red herrings: ICMP to a ClusterIP rejected by "
                    "kube-proxy, ndots:5 search amplification answered fast, a node that cannot resolve a short "
                    "Service name: no layer owns anything",
        namespaces=dict(t.namespaces), targets=[f"payments:{SERVICE_PORT}", f"10.244.1.3:{LISTEN_PORT}"],
        vantages=["pod", "node"], names=["api.example.com"], files={"endpointslices": str(slices)},
        verdict=Expect(None, None),
    )


def _context_only(t: Topology) -> LabInfo:
    """The node has no route toward the Service range (no default route): its own connects to the ClusterIP fail
    at once, while the pod's traffic, DNAT-ed in PREROUTING to the endpoint, never needs that route."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    slices = _nft_services(t, node_service_route=False)
    return LabInfo(
        scenario="context-only",
        description=f"the node has no route to {SERVICE_IP} (a host-side path the pod's traffic never takes): "
                    "the node fails, the client pod reaches the Service: no owner for the client",
        namespaces=dict(t.namespaces), targets=[f"{SERVICE_IP}:{SERVICE_PORT}"], vantages=["pod", "node"],
        files={"endpointslices": str(slices)}, verdict=Expect(None, None),
    )


def _stale_dnat_blackhole(t: Topology) -> LabInfo:
    """stale-dnat, but the gone pod's address falls in a blackhole route on the node (the CNI's route for an
    IPAM block no pod uses any more): the ClusterIP hangs, and the node's own lookup of the old pod address
    fails at route — a symptom of the stale DNAT, which owns it."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    t.route("node", "10.244.2.0/26", kind="blackhole")
    t.route("node", "10.96.0.0/16", gateway="10.244.0.2")
    t.iptables_restore("node", _KUBE_PROXY_STALE)
    slices = _write_slices(t, _endpoint_slice("10.244.1.3"))
    return LabInfo(
        scenario="stale-dnat-blackhole",
        description=f"the node DNATs {SERVICE_IP}:{SERVICE_PORT} to the replaced pod {GONE_POD}, which a blackhole "
                    f"route swallows; the operator also targets the old pod address, which fails at route",
        namespaces=dict(t.namespaces), targets=[f"{SERVICE_IP}:{SERVICE_PORT}", f"{GONE_POD}:{LISTEN_PORT}"],
        vantages=["pod", "node"], files={"endpointslices": str(slices)},
        verdict=Expect(f"{SERVICE_IP}:{SERVICE_PORT}", "service", ("service.stale_dnat",)),
    )


def _rp_filter(t: Topology) -> LabInfo:
    """Two links between node and remote; the remote answers the pod range over the second (asymmetric), and the
    node filters strictly: every SYN-ACK for the pod arrives on eth1 while the route back to the remote is eth0,
    and is dropped (TcpExtIPReversePathFilter counts each). The node's own connects, answered on eth0, work."""
    _two_nodes(t, server_pod=False, node_link_mtu=1500)
    t.veth("node", "eth1", "remote", "eth1")
    t.address("node", "eth1", "10.245.0.1/24")
    t.address("remote", "eth1", "10.245.0.2/24")
    t.route("remote", "10.244.1.0/24", gateway="10.245.0.1", replace=True)
    # the remote asks ARP from the second link's own address (a common setting), so the link itself works
    t.sysctl("remote", "net.ipv4.conf.all.arp_announce", "2")
    t.warm("node", "10.245.0.2")  # the second link in use, as it is on a live node
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth1.rp_filter", "net.ipv4.conf.eth0.rp_filter"):
        t.sysctl("node", key, "1")
    return LabInfo(
        scenario="rp-filter",
        description="asymmetric path (replies to the pod range come back over a second link) under strict "
                    "rp_filter on the node: the pod's SYN-ACKs and echo replies are dropped and counted; the node "
                    "itself connects",
        namespaces=dict(t.namespaces), targets=[f"10.244.0.2:{LISTEN_PORT}"], vantages=["pod", "node"],
        verdict=Expect(f"10.244.0.2:{LISTEN_PORT}", "route", ("counters.rp_filter_drops",)),
    )


def _stale_dns_record(t: Topology) -> LabInfo:
    """The cluster DNS still answers orders.default.svc.cluster.local with a pod address that is gone; the node
    holds a blackhole route for that block (the CNI's, as for an IPAM block it no longer uses). Connects by name
    time out; the route on the node refuses the address. The DNS answer owns it, not the route."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    _cluster_dns(t, service_route=False, records={"orders.default.svc.cluster.local": GONE_POD})
    t.route("node", "10.244.2.0/26", kind="blackhole")
    return LabInfo(
        scenario="stale-dns-record",
        description=f"orders resolves to {GONE_POD}, a pod that is gone (a stale record), and the node blackholes "
                    "that block: connects by name time out",
        namespaces=dict(t.namespaces), targets=[f"orders:{LISTEN_PORT}"], vantages=["pod", "node"],
        verdict=Expect(f"orders:{LISTEN_PORT}", "dns", ("dns.dead_answer",)),
    )


def _name_refused(t: Topology) -> LabInfo:
    """A name target (a headless Service's record: the pod address) whose pod runs but listens elsewhere:
    the connect by name is refused, and the server's missing listener owns it."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500, server_bind=None)
    _cluster_dns(t, records={"inventory.default.svc.cluster.local": "10.244.1.3"})
    return LabInfo(
        scenario="name-refused",
        description="inventory resolves to the server pod 10.244.1.3, which listens on 9090, not 8080: the "
                    "connect by name is refused",
        namespaces=dict(t.namespaces), targets=[f"inventory:{LISTEN_PORT}"], vantages=["pod", "node", "server"],
        verdict=Expect(f"inventory:{LISTEN_PORT}", "transport", ("transport.no_listener",)),
    )


SHOP_IP = "10.96.0.30"
# The shop Service (iptables proxier) translated to the remote node's pod across the narrow link.
_KUBE_PROXY_SHOP = f"""*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-NBLABSHOP00000080 - [0:0]
:KUBE-SEP-NBLABSHOPREMOTE02 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d {SHOP_IP}/32 -p tcp -m comment --comment "default/shop:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-NBLABSHOP00000080
-A KUBE-SVC-NBLABSHOP00000080 -m comment --comment "default/shop:http -> 10.244.0.2:{LISTEN_PORT}" -j KUBE-SEP-NBLABSHOPREMOTE02
-A KUBE-SEP-NBLABSHOPREMOTE02 -p tcp -m comment --comment "default/shop:http" -m tcp -j DNAT --to-destination 10.244.0.2:{LISTEN_PORT}
COMMIT
"""


def _mtu_behind_dnat(t: Topology) -> LabInfo:
    """The mtu scenario's narrow, ICMP-filtering link, reached through a ClusterIP: the client downloads from
    the Service and stalls; the sweep toward the endpoint finds the blackhole that explains it."""
    _two_nodes(t, server_pod=False, node_link_mtu=1400, remote_mtu=1500)
    t.nft("node", _DROP_FRAG_NEEDED)
    t.iptables_restore("node", _KUBE_PROXY_SHOP)
    slices = _write_slices(t, _endpoint_slice("10.244.0.2", service="shop", port_name="http", name="shop-x7f2q"))
    t.python("pod", "bundle.lab.client", "--target", f"{SHOP_IP}:80", "--interval", "1", "--read",
             "--max-age", "8", "--max-open", "20")
    return LabInfo(
        scenario="mtu-behind-dnat",
        description=f"the ClusterIP {SHOP_IP}:80 is DNAT-ed to the remote node's 10.244.0.2:{LISTEN_PORT} across "
                    "the MTU-1400 link whose ICMP 'fragmentation needed' is dropped: downloads through the "
                    "Service stall, the sweep toward the endpoint finds the blackhole",
        namespaces=dict(t.namespaces), targets=[f"{SHOP_IP}:80", f"10.244.0.2:{LISTEN_PORT}"],
        vantages=["pod", "node"], files={"endpointslices": str(slices)},
        verdict=Expect(f"{SHOP_IP}:80", "route", ("mtu.blackhole",)),
    )


CART_IP = "10.96.0.40"
# kube-proxy's iptables proxier REJECTs a Service it believes has no endpoints (filter KUBE-SERVICES, from
# FORWARD and OUTPUT for new connections); here cart's endpoint became ready and kube-proxy has not synced.
_KUBE_PROXY_REJECT = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d {CART_IP}/32 -p tcp -m comment --comment "default/cart:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""


def _reject_with_endpoints(t: Topology) -> LabInfo:
    """The client's connect is refused — it looks like 'nothing listens' — but the refusal is kube-proxy's
    REJECT for a Service it thinks has no endpoints, while the EndpointSlice lists a ready one."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    t.route("node", "10.96.0.0/16", gateway="10.244.0.2")
    t.iptables_restore("node", _KUBE_PROXY_STALE.replace(GONE_POD, "10.244.1.3").replace("GONEPOD", "PAYPOD0"))
    t.iptables_restore("node", _KUBE_PROXY_REJECT)
    slices = _write_slices(t, _endpoint_slice("10.244.1.3"),
                           _endpoint_slice("10.244.1.3", service="cart", port_name="http", name="cart-p9s3d"))
    return LabInfo(
        scenario="reject-with-endpoints",
        description=f"kube-proxy REJECTs {CART_IP}:80 (cart) as having no endpoints while its EndpointSlice lists "
                    "the ready pod 10.244.1.3: the client's connect is refused, a symptom of the unsynced proxy",
        namespaces=dict(t.namespaces), targets=[f"{CART_IP}:80"], vantages=["pod", "node"],
        files={"endpointslices": str(slices)},
        verdict=Expect(f"{CART_IP}:80", "service", ("service.reject_with_endpoints",)),
    )


ROUTERS = ("r1", "r2", "r3")
ROUTED_SERVER = "10.244.13.2"
_DROP_SYN_AT_R2 = f"""
table inet nb_lab {{
    chain forward {{ type filter hook forward priority 0; tcp dport {LISTEN_PORT} tcp flags & (syn | ack) == syn drop; }}
}}
"""


def _routed_path(t: Topology, *, filtered: bool) -> None:
    """pod -> r1 -> r2 -> r3 -> server, one /24 per link (10.244.1/11/12/13), static routes both ways; the
    server listens on 8080 and 9090. filtered: r2 drops forwarded SYNs to 8080 (a firewall between sites)."""
    for role in ("pod", *ROUTERS, "server"):
        t.add_netns(role)
    chain = ["pod", *ROUTERS, "server"]
    for i, (a, b) in enumerate(zip(chain, chain[1:], strict=False)):
        net = (1, 11, 12, 13)[i]
        t.veth(a, "eth1" if a != "pod" else "eth0", b, "eth0")
        t.address(a, "eth1" if a != "pod" else "eth0", f"10.244.{net}.{2 if a == 'pod' else 1}/24")
        t.address(b, "eth0", f"10.244.{net}.{1 if a == 'pod' else 2}/24")
    t.route("pod", "0.0.0.0/0", gateway="10.244.1.1")
    t.route("r1", "10.244.12.0/24", gateway="10.244.11.2")
    t.route("r1", "10.244.13.0/24", gateway="10.244.11.2")
    t.route("r2", "10.244.1.0/24", gateway="10.244.11.1")
    t.route("r2", "10.244.13.0/24", gateway="10.244.12.2")
    t.route("r3", "10.244.1.0/24", gateway="10.244.12.1")
    t.route("r3", "10.244.11.0/24", gateway="10.244.12.1")
    t.route("server", "0.0.0.0/0", gateway="10.244.13.1")
    for r in ROUTERS:
        t.sysctl(r, "net.ipv4.ip_forward", "1")
        # no ICMP rate limit on the lab's routers, so walkers run back to back (ours, traceroute, tracepath)
        # each see every hop; a real router's limit shows as a silent hop, as in traceroute
        t.sysctl(r, "net.ipv4.icmp_ratelimit", "0")
    if filtered:
        t.nft("r2", _DROP_SYN_AT_R2)
    t.python("server", _LISTENER, "--port", str(LISTEN_PORT), "--send", "16")
    t.python("server", _LISTENER, "--port", str(OTHER_PORT), "--send", "16")
    t.wait_listening("server", LISTEN_PORT)
    t.wait_listening("server", OTHER_PORT)


def _filtered_path(t: Topology) -> LabInfo:
    _routed_path(t, filtered=True)
    return LabInfo(
        scenario="filtered-path",
        description=f"pod -> r1 -> r2 -> r3 -> server; r2 drops forwarded SYNs to {LISTEN_PORT} (ICMP and "
                    f"{OTHER_PORT} pass): the TCP walk dies after hop 2 while ICMP reaches the server",
        namespaces=dict(t.namespaces), targets=[f"{ROUTED_SERVER}:{LISTEN_PORT}", f"{ROUTED_SERVER}:{OTHER_PORT}"],
        vantages=["pod"], verdict=Expect(f"{ROUTED_SERVER}:{LISTEN_PORT}", "transport", ("transport.connect_timeout",)),
    )


# IPv6 beside IPv4 (pods fd00:10:244:1::/64 on node A's bridge, nodes fd00:10:244::/64): the same topology,
# dual-stack, duplicate address detection off so addresses are usable at once.
V6_POD, V6_SERVER, V6_REMOTE = "fd00:10:244:1::2", "fd00:10:244:1::3", "fd00:10:244::2"


def _dual_stack(t: Topology, server_pod: bool) -> None:
    links = [("pod", "eth0", f"{V6_POD}/64"), ("node", "cbr0", "fd00:10:244:1::1/64"),
             ("node", "eth0", "fd00:10:244::1/64"), ("remote", "eth0", f"{V6_REMOTE}/64")]
    if server_pod:
        links.append(("server", "eth0", f"{V6_SERVER}/64"))
    for role, ifname, cidr in links:
        t.sysctl(role, f"net.ipv6.conf.{ifname}.accept_dad", "0")
        t.address(role, ifname, cidr)
    t.route("pod", "::/0", gateway="fd00:10:244:1::1")
    if server_pod:
        t.route("server", "::/0", gateway="fd00:10:244:1::1")
    t.route("remote", "fd00:10:244:1::/64", gateway="fd00:10:244::1")
    t.sysctl("node", "net.ipv6.conf.all.forwarding", "1")
    # neighbors known on every link the targets use, as on a live node (a collect's probes must not create them)
    t.warm("pod", "fd00:10:244:1::1")
    t.warm("node", V6_REMOTE)
    if server_pod:
        t.warm("pod", V6_SERVER)
        t.warm("node", V6_SERVER)


def _dualstack_healthy(t: Topology) -> LabInfo:
    _two_nodes(t, server_pod=True, node_link_mtu=1500, server_bind="::", remote_bind="::")
    _dual_stack(t, server_pod=True)
    return LabInfo(
        scenario="dualstack-healthy",
        description="the healthy lab, dual-stack: every pod and node has an IPv4 and an IPv6 address and the "
                    "listeners take both; every target answers in both families",
        namespaces=dict(t.namespaces),
        targets=[f"10.244.1.3:{LISTEN_PORT}", f"[{V6_SERVER}]:{LISTEN_PORT}", f"[{V6_REMOTE}]:{LISTEN_PORT}"],
        vantages=["pod", "node"], verdict=Expect(None, None),
    )


_DROP_TOO_BIG = """
table inet nb_lab {
    chain output { type filter hook output priority 0; icmpv6 type packet-too-big drop; }
    chain forward { type filter hook forward priority 0; icmpv6 type packet-too-big drop;
        meta nfproto ipv6 meta length > 1400 drop; }
}
"""


def _v6_mtu(t: Topology) -> LabInfo:
    """The mtu scenario over IPv6: routers never fragment IPv6, so a narrow link must say 'packet too big';
    the node filters that message and drops what is larger — an IPv6 PMTU blackhole."""
    _two_nodes(t, server_pod=False, node_link_mtu=1400, remote_mtu=1500, remote_bind="::")
    _dual_stack(t, server_pod=False)
    t.nft("node", _DROP_TOO_BIG)
    return LabInfo(
        scenario="v6-mtu",
        description="pod -> node -> remote over IPv6; the node's link is MTU 1400 and it drops ICMPv6 'packet "
                    "too big': small IPv6 packets pass, larger ones vanish",
        namespaces=dict(t.namespaces), targets=[f"[{V6_REMOTE}]:{LISTEN_PORT}"], vantages=["pod", "node"],
        verdict=Expect(f"[{V6_REMOTE}]:{LISTEN_PORT}", "route", ("mtu.blackhole",)),
    )


V6_SERVICE, V6_GONE = "fd00:10:96::14", "fd00:10:244:2::9"
# The nftables proxier's IPv6 table for payments, still sending the IPv6 ClusterIP to a replaced pod.
_KUBE_PROXY_NFT6_STALE = f"""
add table ip6 kube-proxy {{ comment "rules for kube-proxy" ; }}
add chain ip6 kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain ip6 kube-proxy nat-output {{ type nat hook output priority -100 ; }}
add chain ip6 kube-proxy services
add chain ip6 kube-proxy mark-for-masquerade
add chain ip6 kube-proxy service-NBPAY6SV-default/payments/tcp/https
add chain ip6 kube-proxy endpoint-NBGONE6E-default/payments/tcp/https__fd00.10.244.2..9/{LISTEN_PORT}
add map ip6 kube-proxy service-ips {{ type ipv6_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add rule ip6 kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip6 kube-proxy nat-output jump services
add rule ip6 kube-proxy nat-prerouting jump services
add rule ip6 kube-proxy services ip6 daddr . meta l4proto . th dport vmap @service-ips
add rule ip6 kube-proxy service-NBPAY6SV-default/payments/tcp/https numgen random mod 1 vmap {{ 0 : goto endpoint-NBGONE6E-default/payments/tcp/https__fd00.10.244.2..9/{LISTEN_PORT} }}
add rule ip6 kube-proxy endpoint-NBGONE6E-default/payments/tcp/https__fd00.10.244.2..9/{LISTEN_PORT} meta l4proto tcp dnat to [{V6_GONE}]:{LISTEN_PORT}
add element ip6 kube-proxy service-ips {{ {V6_SERVICE} . tcp . {SERVICE_PORT} : goto service-NBPAY6SV-default/payments/tcp/https }}
"""


def _v6_stale_dnat(t: Topology) -> LabInfo:
    """stale-dnat over IPv6 with the nftables proxier: its `table ip6 kube-proxy` still sends the IPv6 ClusterIP
    to a replaced pod; the IPv6 EndpointSlice names the new one."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500, server_bind="::", remote_bind="::")
    _dual_stack(t, server_pod=True)
    t.route("node", "fd00:10:244:2::/64", gateway=V6_REMOTE)  # node B's pod range; B no longer has that pod
    t.nft("node", _KUBE_PROXY_NFT6_STALE)
    slices = _write_slices(t, _endpoint_slice(V6_SERVER, name="payments-v6k2p", family="IPv6"))
    return LabInfo(
        scenario="v6-stale-dnat",
        description=f"the nftables proxier's table ip6 kube-proxy still DNATs [{V6_SERVICE}]:{SERVICE_PORT} to the "
                    f"replaced pod {V6_GONE}; the IPv6 EndpointSlice names {V6_SERVER}",
        namespaces=dict(t.namespaces), targets=[f"[{V6_SERVICE}]:{SERVICE_PORT}", f"[{V6_SERVER}]:{LISTEN_PORT}"],
        vantages=["pod", "node"], files={"endpointslices": str(slices)},
        verdict=Expect(f"[{V6_SERVICE}]:{SERVICE_PORT}", "service", ("service.stale_dnat",)),
    )


# --- NetworkPolicy: the cluster as the API serves it, and an nft drop standing in for the CNI's enforcement ---

CLIENT_POD = "10.244.1.2"
# Calico's shape of a workload's ingress enforcement on its node (the host side of the pod's interface, here
# cbr0): FORWARD -> cali-FORWARD -> the to-workload dispatch -> cali-tw-<iface>, whose policy chain marks what a
# policy allows and whose last rule drops the rest. Only established flows and the frontend range are allowed.
_CALICO_INGRESS = f"""*filter
:FORWARD ACCEPT [0:0]
:cali-FORWARD - [0:0]
:cali-to-wl-dispatch - [0:0]
:cali-tw-cbr0 - [0:0]
:cali-pi-_NBLAB0payments - [0:0]
-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD
-A cali-FORWARD -m comment --comment "cali:vjrMJCRpqwy5oRoX" -j cali-to-wl-dispatch
-A cali-to-wl-dispatch -o cbr0 -m comment --comment "cali:nblab0dispatch" -g cali-tw-cbr0
-A cali-tw-cbr0 -m comment --comment "cali:nblab0ctstate" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-tw-cbr0 -m comment --comment "cali:nblab0clearmk" -j MARK --set-xmark 0x0/0x10000
-A cali-tw-cbr0 -p tcp -m comment --comment "cali:nblab0policy" -j cali-pi-_NBLAB0payments
-A cali-tw-cbr0 -m comment --comment "cali:nblab0pass" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-cbr0 -m comment --comment "cali:nblab0drop Drop if no policies passed packet" -m mark --mark 0x0/0x10000 -j DROP
-A cali-pi-_NBLAB0payments -s 10.244.7.0/24 -p tcp -m comment --comment "cali:nblab0frontend" -m tcp --dport {LISTEN_PORT} -j MARK --set-xmark 0x10000/0x10000
COMMIT
"""
# on the node, where CNIs enforce a pod's egress (the host side of its interface), not inside the pod
_POLICY_EGRESS_DNS_DROP = f"""
table inet nb_lab {{
    chain forward {{ type filter hook forward priority 0; ip saddr {CLIENT_POD} udp dport 53 drop;
        ip saddr {CLIENT_POD} tcp dport 53 drop; }}
}}
"""


def _object_meta(name: str, ns: str | None, labels: dict[str, str] | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "uid": f"00000000-0000-4000-8000-{sum(map(ord, f'{ns}/{name}')):012d}",
                               "resourceVersion": "4242", "creationTimestamp": "2026-11-26T03:00:00Z"}
    if ns is not None:
        meta["namespace"] = ns
    if labels:
        meta["labels"] = labels
    return meta


def _pod_object(ns: str, name: str, ip: str, node: str, labels: dict[str, str],
                ports: list[tuple[str, int, str]]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _object_meta(name, ns, labels),
            "spec": {"nodeName": node, "dnsPolicy": "ClusterFirst",
                     "containers": [{"name": "main", "image": "registry.example/app:1",
                                     "ports": [{"name": n, "containerPort": port, "protocol": proto}
                                               for n, port, proto in ports]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def _service_object(ns: str, name: str, ip: str, ports: list[tuple[str, int, int | str, str]],
                    selector: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _object_meta(name, ns),
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "selector": selector,
                     "ports": [{"name": n, "port": port, "targetPort": target, "protocol": proto}
                               for n, port, target, proto in ports]}}


def _policy_object(name: str, spec: dict[str, object], ns: str = "default") -> dict[str, object]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _object_meta(name, ns),
            "spec": spec}


def _write_cluster(t: Topology, policies: list[dict[str, object]]) -> Path:
    """What the API serves for this lab's cluster (`{"items": [{"resource", "object"}]}`): namespaces, the client
    and payments pods, payments and kube-dns with their EndpointSlices and the CoreDNS pod (dnsmasq on the
    remote node plays it), and the NetworkPolicies. The tests serve it through their loopback API server."""
    dns_slice: dict[str, object] = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "kube-dns-8fz2q", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
        "endpoints": [{"addresses": [DNS_POD], "nodeName": "node-b",
                       "conditions": {"ready": True, "serving": True, "terminating": False},
                       "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "coredns-0"}}]}
    items: list[tuple[str, dict[str, object]]] = [
        ("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                        "metadata": _object_meta(ns, None, {"kubernetes.io/metadata.name": ns})})
        for ns in ("default", "kube-system")]
    items += [
        ("pods", _pod_object("default", "client", CLIENT_POD, "node-a", {"app": "client"}, [])),
        ("pods", _pod_object("default", "payments-0", "10.244.1.3", "node-a", {"app": "payments"},
                             [("https", LISTEN_PORT, "TCP")])),
        ("pods", _pod_object("kube-system", "coredns-0", DNS_POD, "node-b", {"k8s-app": "kube-dns"},
                             [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")])),
        ("services", _service_object("default", "payments", SERVICE_IP, [("https", SERVICE_PORT, "https", "TCP")],
                                     {"app": "payments"})),
        ("services", _service_object("kube-system", "kube-dns", CLUSTER_DNS,
                                     [("dns", 53, 53, "UDP"), ("dns-tcp", 53, 53, "TCP")], {"k8s-app": "kube-dns"})),
        ("endpointslices", _endpoint_slice("10.244.1.3")),
        ("endpointslices", dns_slice),
    ]
    items += [("networkpolicies", pol) for pol in policies]
    path = t.run_dir() / "cluster.json"
    path.write_text(json.dumps({"items": [{"resource": r, "object": o} for r, o in items]}, indent=1))
    return path


_DEFAULT_DENY = _policy_object("default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})


def _policy_base(t: Topology) -> Path:
    """The k8s-healthy cluster's dataplane: a client and a payments pod on node A, kube-proxy's nftables rules,
    the cluster DNS behind its ClusterIP; returns the EndpointSlices' file."""
    _two_nodes(t, server_pod=True, node_link_mtu=1500)
    _cluster_dns(t, service_route=False)
    return _nft_services(t, node_service_route=True)


def _policy_ingress(t: Topology) -> LabInfo:
    slices = _policy_base(t)
    t.iptables_restore("node", _CALICO_INGRESS)
    cluster = _write_cluster(t, [_DEFAULT_DENY, _policy_object("allow-frontend-to-payments", {
        "podSelector": {"matchLabels": {"app": "payments"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}], "ports": [{"port": "https"}]}]})])
    return LabInfo(
        scenario="policy-ingress",
        description="default-deny ingress in the server's namespace and an allow for role=frontend, a label the "
                    "client lacks; the node drops the client's SYNs in Calico-shaped chains as the CNI would. "
                    "Served with its API objects (files: cluster), the ladder names the policy",
        namespaces=dict(t.namespaces), targets=[f"{SERVICE_IP}:{SERVICE_PORT}"], vantages=["pod", "node"],
        files={"endpointslices": str(slices), "cluster": str(cluster)},
        # without the API objects, the drops counted in the node's Calico chain toward the endpoint are the cause
        verdict=Expect(f"{SERVICE_IP}:{SERVICE_PORT}", "transport", ("policy.dataplane_drops",)),
    )


def _policy_dns_egress(t: Topology) -> LabInfo:
    slices = _policy_base(t)
    t.nft("node", _POLICY_EGRESS_DNS_DROP)
    cluster = _write_cluster(t, [_policy_object("client-egress", {
        "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "payments"}}}],
                    "ports": [{"port": LISTEN_PORT, "protocol": "TCP"}]}]})])
    return LabInfo(
        scenario="policy-dns-egress",
        description="the client's egress policy allows payments on 8080 and forgot port 53: its lookups of the "
                    "Service name time out (the node drops them as the CNI would) while the ClusterIP answers",
        namespaces=dict(t.namespaces), targets=[f"payments:{SERVICE_PORT}"], vantages=["pod", "node"],
        files={"endpointslices": str(slices), "cluster": str(cluster)},
        verdict=Expect(f"payments:{SERVICE_PORT}", "dns", ("dns.timeout",)),
    )


def _policy_healthy(t: Topology) -> LabInfo:
    slices = _policy_base(t)
    cluster = _write_cluster(t, [_DEFAULT_DENY, _policy_object("allow-client-to-payments", {
        "podSelector": {"matchLabels": {"app": "payments"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": "https"}]}]}),
        _policy_object("client-egress", {
            "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "payments"}}}],
                        "ports": [{"port": LISTEN_PORT, "protocol": "TCP"}]},
                       {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]})])
    return LabInfo(
        scenario="policy-healthy",
        description="default-deny ingress, an allow for the client on the named port, and a client egress policy "
                    "that remembers DNS: every flow the client needs is allowed and works",
        namespaces=dict(t.namespaces), targets=[f"payments:{SERVICE_PORT}"], vantages=["pod", "node"],
        files={"endpointslices": str(slices), "cluster": str(cluster)}, verdict=Expect(None, None),
    )


SCENARIOS: dict[str, Callable[[Topology], LabInfo]] = {
    "conntrack-full": _conntrack_full,
    "service-nft": _service_nft,
    "stale-dnat": _stale_dnat,
    "dns-ndots": lambda t: _dns(t, drop=False),
    "dns-drop": lambda t: _dns(t, drop=True),
    "healthy": _healthy,
    "mtu": _mtu,
    "no-listener": _no_listener,
    "syn-drop": _syn_drop,
    "flaky": _flaky,
    "loopback-listener": _loopback_listener,
    "stale-neighbor": _stale_neighbor,
    "k8s-healthy": _k8s_healthy,
    "context-only": _context_only,
    "stale-dnat-blackhole": _stale_dnat_blackhole,
    "rp-filter": _rp_filter,
    "stale-dns-record": _stale_dns_record,
    "name-refused": _name_refused,
    "mtu-behind-dnat": _mtu_behind_dnat,
    "reject-with-endpoints": _reject_with_endpoints,
    "filtered-path": _filtered_path,
    "dualstack-healthy": _dualstack_healthy,
    "v6-mtu": _v6_mtu,
    "v6-stale-dnat": _v6_stale_dnat,
    "policy-ingress": _policy_ingress,
    "policy-dns-egress": _policy_dns_egress,
    "policy-healthy": _policy_healthy,
}


def _prefix(scenario: str) -> str:
    return f"nb-{scenario}"


def _check(scenario: str) -> Callable[[Topology], LabInfo]:
    if os.geteuid() != 0:
        raise LabError("the lab builds network namespaces and needs root")
    try:
        return SCENARIOS[scenario]
    except KeyError:
        raise LabError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})") from None


@contextmanager
def running(scenario: str, prefix: str) -> Iterator[LabInfo]:
    """Build a scenario under a prefix and remove it on exit, whatever happens (tests use `nbt-...`)."""
    build = _check(scenario)
    with Topology(prefix) as topo:
        try:
            info = build(topo)
            (topo.run_dir() / "scenario").write_text(scenario + "\n")
            yield info
        except NetlinkError as exc:
            raise LabError(f"netlink: {os.strerror(exc.code)}") from None


def up(scenario: str, prefix: str | None = None) -> LabInfo:
    """Build and leave running; on any failure nothing is left behind."""
    build = _check(scenario)
    topo = Topology(prefix or _prefix(scenario))
    try:
        info = build(topo)
        info.prefix = prefix if prefix and prefix != _prefix(scenario) else None
        (topo.run_dir() / "scenario").write_text(scenario + "\n")  # lab list finds it under any prefix
        return info
    except NetlinkError as exc:
        topo.teardown()
        raise LabError(f"netlink: {os.strerror(exc.code)}") from None
    except BaseException:
        topo.teardown()
        raise


def down(scenario: str, prefix: str | None = None) -> list[str]:
    _check(scenario)
    pre = (prefix or _prefix(scenario)) + "-"
    removed = [n for n in existing_namespaces() if n.startswith(pre)]
    for name in removed:
        remove_namespace(name)
    restore_machine_sysctls(prefix or _prefix(scenario))
    shutil.rmtree(LAB_RUN_DIR / (prefix or _prefix(scenario)), ignore_errors=True)
    return removed


def status(prefix: str | None = None) -> list[tuple[str, str, list[str]]]:
    """(scenario, prefix, its namespaces now) of every lab up — under its default prefix or another one
    (`lab up --prefix` records its scenario in the lab's run folder) — and of each scenario that is down;
    with `prefix`, only labs under that prefix."""
    have = existing_namespaces()
    rows: list[tuple[str, str, list[str]]] = []
    seen: set[str] = set()
    for folder in sorted(LAB_RUN_DIR.glob("*/scenario")) if LAB_RUN_DIR.is_dir() else []:
        pre, scenario = folder.parent.name, folder.read_text().strip()
        ns = [n for n in have if n.startswith(pre + "-")]
        if scenario in SCENARIOS and ns:
            rows.append((scenario, pre, ns))
            seen.add(pre)
    for name in SCENARIOS:
        pre = _prefix(name)
        ns = [n for n in have if n.startswith(pre + "-")]
        if pre not in seen:
            rows.append((name, pre, ns))
    if prefix is not None:
        rows = [r for r in rows if r[1] == prefix]
    return sorted(rows, key=lambda r: (not r[2], r[0], r[1]))
