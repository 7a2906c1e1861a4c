"""The struct route decoder against pyroute2's full decode of the same dump, on routes of every shape."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time

import pytest
from pyroute2 import IPRoute, netns

from bundle.archive import read_bundle
from bundle.netlink.rtnl import RawRoute, decode_route
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged

NS = "nbt-rtnl"
SETUP = [
    "link add d0 type veth peer name p0", "link set p0 up", "link set d0 up",
    "link add d1 type veth peer name p1", "link set p1 up", "link set d1 up",
    "addr add 10.244.40.1/24 dev d0", "addr add 10.244.41.1/24 dev d1",
    "-6 addr add fd00:40::1/64 dev d0 nodad", "-6 addr add fd00:41::1/64 dev d1 nodad",
    "route add 10.96.0.0/16 via 10.244.40.2 metric 7 mtu lock 1400",
    "route add 10.97.0.0/16 src 10.244.40.1 dev d0 proto static scope link",
    "route add blackhole 10.98.0.0/16", "route add unreachable 10.99.0.0/16 table 100",
    "route add prohibit 10.100.0.0/16 table 4000000",
    "route add 10.101.0.0/16 nexthop via 10.244.40.2 weight 3 nexthop via 10.244.41.2 weight 1",
    "-6 route add fd00:96::/64 via fd00:40::2 metric 9",
    "-6 route add fd00:97::/64 nexthop via fd00:40::2 weight 2 nexthop via fd00:41::2",
    "route add 10.102.0.0/16 via inet6 fd00:40::2 dev d0",
    "route add default via 10.244.40.2 table 200",
]


def _reference(msg) -> tuple:
    """The same fields, as pyroute2 decodes them."""
    metrics = msg.get_attr("RTA_METRICS")
    via = msg.get_attr("RTA_VIA")
    hops = []
    for hop in msg.get_attr("RTA_MULTIPATH") or []:
        hop_via = hop.get_attr("RTA_VIA")
        hops.append((hop.get_attr("RTA_GATEWAY") or (hop_via["addr"] if hop_via else None), hop["oif"], hop["hops"]))
    return (msg["family"], msg["dst_len"], msg.get_attr("RTA_TABLE") or msg["table"], msg["proto"], msg["scope"],
            msg["type"], msg.get_attr("RTA_DST"), msg.get_attr("RTA_GATEWAY") or (via["addr"] if via else None),
            msg.get_attr("RTA_OIF"), msg.get_attr("RTA_PREFSRC"), msg.get_attr("RTA_PRIORITY"),
            metrics.get_attr("RTAX_MTU") if metrics is not None else None, tuple(hops))


@pytest.fixture(scope="module")
def routes_netns():
    netns.create(NS)
    try:
        # no automatic link-local addresses (a lab-netns setting): their routes would appear on their own
        subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1"],
                       check=True)
        for cmd in SETUP:
            subprocess.run(["ip", "-n", NS, *cmd.split()], check=True, capture_output=True)
        with IPRoute(netns=NS) as ipr:
            for i in range(3000):  # more than one receive buffer's worth
                ipr.route("add", dst=f"172.16.{i >> 8}.{i & 255}/32", gateway="10.244.40.2")
        yield NS
    finally:
        netns.remove(NS)


def _ours(ns: str) -> list[RawRoute]:
    """dump_routes() run inside the netns (a child process: the test process stays where it is)."""
    code = ("import json; from bundle.netlink.rtnl import dump_routes; "
            "print(json.dumps([list(r) for r in dump_routes()[0]]))")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return [RawRoute(*r[:-1], tuple(tuple(h) for h in r[-1])) for r in json.loads(out)]


def test_every_route_equals_pyroute2(routes_netns):
    # the two dumps are a moment apart and the kernel may still add a route of its own (IPv6 DAD ending):
    # a difference counts only if it stays
    for _ in range(5):
        ours = _ours(routes_netns)
        with IPRoute(netns=routes_netns) as ipr:
            theirs = [_reference(m) for m in ipr.route("dump") if m["family"] in (2, 10)]
        if sorted(map(tuple, ours), key=repr) == sorted(theirs, key=repr):
            break
        time.sleep(0.5)
    assert sorted(map(tuple, ours), key=repr) == sorted(theirs, key=repr)
    by_dst = {(r.dst, r.dst_len, r.table): r for r in ours}
    # not vacuous: each shape is there, decoded as `ip` shows it
    assert len(ours) > 3000
    assert by_dst[("10.96.0.0", 16, 254)].mtu == 1400 and by_dst[("10.96.0.0", 16, 254)].priority == 7
    assert by_dst[("10.99.0.0", 16, 100)].type == 7 and by_dst[("10.100.0.0", 16, 4000000)].type == 8
    assert [(gw, hops) for gw, _, hops in by_dst[("10.101.0.0", 16, 254)].nexthops] == [
        ("10.244.40.2", 2), ("10.244.41.2", 0)]
    assert by_dst[("10.102.0.0", 16, 254)].gateway == "fd00:40::2"
    assert by_dst[(None, 0, 200)].gateway == "10.244.40.2"
    assert by_dst[("fd00:96::", 64, 254)].priority == 9


def test_keep_bounds_the_rows_and_counts_them_all(routes_netns):
    code = ("import json; from bundle.netlink.rtnl import dump_routes; kept, per, _ = dump_routes(100); "
            "full, _, _ = dump_routes(); print(json.dumps([len(kept), len(full), per]))")
    out = subprocess.run(["ip", "netns", "exec", routes_netns, sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    kept, full, per_table = json.loads(out)
    assert kept == 100 and sum(per_table.values()) == full > 3000
    assert per_table["254"] > 3000 and per_table["100"] == 1 and per_table["4000000"] == 1


def test_decoder_survives_truncated_messages():
    """A message cut anywhere decodes to a shorter route or None, never an exception."""
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 4, 0, 1, 0)
    attr = struct.pack("=HH4s", 8, 1, socket.inet_aton("10.244.40.0")) + struct.pack("=HHI", 8, 4, 2)
    msg = body + attr
    assert decode_route(msg, 0, len(msg)).dst == "10.244.40.0"
    for cut in range(len(msg)):
        route = decode_route(msg, 0, cut)
        assert route is None or route.dst in (None, "10.244.40.0")


def test_route_slice_counts_every_table_and_the_page_summarises(routes_netns, tmp_path):
    """Through the CLI: route.json keeps the routes and exact per-table counts; the appendix shows 300 rows and
    says where the rest are."""
    out = tmp_path / "r.tar.zst"
    netbundle("collect", "--passive", "--slice", "route", "--netns", routes_netns, "-o", str(out), check=True)
    doc = read_bundle(out).route(f"netns-{routes_netns}")
    assert doc.route_limit == 50_000 and sum(doc.routes_per_table.values()) == len(doc.routes) > 3000
    assert doc.routes_per_table["100"] == 1
    page = tmp_path / "r.html"
    netbundle("render", str(out), "-o", str(page), check=True)
    html = page.read_text()
    assert f"<h3>Routes ({len(doc.routes)})</h3>" in html and "the first 300 outside the local table are shown" in html
    assert html.count("172.16.") < 400  # 300 rows, not 3,000


def test_dump_interruption_and_malformed_messages_are_never_silent():
    """The kernel sets NLM_F_DUMP_INTR where a dump raced a change (nl_dump_check_consistent); a message that
    carries it marks the ctnetlink table interrupted (dump() then dumps again, and keeps the mark when every try
    was); a message whose length runs past its buffer ends the dump with an error naming the family — it used
    to end it silently as if complete."""
    import struct

    from bundle.netlink import ctnetlink

    done = struct.pack("=IHHII", 20, ctnetlink.NLMSG_DONE, ctnetlink.NLM_F_DUMP_INTR | 0x2, 1, 0) + b"\0" * 4
    table = ctnetlink.Table()
    assert ctnetlink.walk(done, table, lambda a: True, 10) and table.interrupted
    clean = ctnetlink.Table()
    assert ctnetlink.walk(struct.pack("=IHHII", 20, ctnetlink.NLMSG_DONE, 0x2, 1, 0) + b"\0" * 4, clean,
                          lambda a: True, 10) and not clean.interrupted
    broken = struct.pack("=IHHII", 400, 0x0100, 0x2, 1, 0) + b"\0" * 20  # says 400 bytes, holds 36
    with pytest.raises(ctnetlink.CtnetlinkError, match="malformed ctnetlink message"):
        ctnetlink.walk(broken, ctnetlink.Table(), lambda a: True, 10)


def test_a_table_changing_during_the_dump_is_counted_or_marked(routes_netns):
    """Routes added and removed while we dump (a CNI reprogramming the node): the count is exact up to the route
    that flaps, or the dump says it was interrupted — never a silently short count."""
    flap = subprocess.Popen(["sh", "-c", f"while true; do ip -n {routes_netns} route add 10.250.0.0/24 dev lo; "
                                         f"ip -n {routes_netns} route del 10.250.0.0/24 dev lo; done"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = ("import json; from bundle.netlink.rtnl import dump_routes\n"
                "print(json.dumps([[sum(p.values()), i] for _, p, i in (dump_routes() for _ in range(20))]))")
        runs = json.loads(subprocess.run(["ip", "netns", "exec", routes_netns, sys.executable, "-c", code],
                                         capture_output=True, text=True, check=True).stdout)
    finally:
        flap.kill()
        flap.wait()
    baseline = json.loads(subprocess.run(["ip", "netns", "exec", routes_netns, sys.executable, "-c", code],
                                         capture_output=True, text=True, check=True).stdout)[0][0]
    for total, interrupted in runs:
        assert interrupted or total in (baseline, baseline + 1), (total, baseline)
