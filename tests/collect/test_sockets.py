"""The sockets slice against the real kernel: equal to `ss -tanpH` / `ss -uanpH` in the same netns."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest
from pyroute2 import IPRoute, netns

from bundle.archive import read_bundle
from bundle.collect.sockets import bind_scope
from bundle.lab import socketfarm
from bundle.models import BindScope, ConnectOutcome, SocketsSlice, SocketTable
from tests.conftest import fresh, netbundle

pytestmark = pytest.mark.privileged

_USERS = re.compile(r"pid=(\d+)")


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]").split("%")[0]
    if host in ("*", "0.0.0.0", "::"):
        host = "*"
    return host, 0 if port == "*" else int(port)


def _norm(addr: str) -> str:
    return "*" if addr in ("0.0.0.0", "::", "*") else addr


def ss_rows(ns: str, *family: str) -> Counter[tuple[object, ...]]:
    """`ss` in the netns; family "-4" or "-6" to ask ss for one family (its own filter, not ours)."""
    rows: Counter[tuple[object, ...]] = Counter()
    for proto, flag in (("tcp", "-tanpH"), ("udp", "-uanpH")):
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", *family, flag], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            state, local, peer = parts[0], parts[3], parts[4]
            pids = frozenset(int(p) for p in _USERS.findall(" ".join(parts[5:])))
            rows[(proto, state, *_endpoint(local), *_endpoint(peer), pids)] += 1
    return rows


def our_rows(doc: SocketTable, family: int | None = None) -> Counter[tuple[object, ...]]:
    return Counter((s.protocol, s.state, _norm(s.local), s.lport, _norm(s.remote), s.rport,
                    frozenset(o.pid for o in s.owners)) for s in doc.sockets if family in (None, s.family))


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A netns holding a few thousand sockets in mixed states, held by one process."""
    name = f"nbt-farm-{id(tmp_path_factory) % 10000}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with socketfarm.running(name, 3000, lifetime=300) as pid:
            yield name, pid
    finally:
        netns.remove(name)


def _collect(tmp_path, ns: str, *extra: str) -> tuple[SocketsSlice, SocketTable]:
    """The summary document and the full row table of one collect."""
    out = fresh(tmp_path)
    proc = netbundle("collect", "--slice", "sockets", "--netns", ns, "-o", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    b = read_bundle(out)
    doc, table = b.sockets(f"netns-{ns}"), b.socket_table(f"netns-{ns}")
    assert doc is not None and table is not None and doc.table == f"vantages/netns-{ns}/socket-table.json"
    return doc, table


def test_socket_table_equals_ss(tmp_path, farm):
    ns, _ = farm
    for _ in range(3):  # sockets change state on their own (FIN-WAIT-2 and TIME-WAIT expire): retry a race
        doc, table = _collect(tmp_path, ns, "--passive", "--socket-samples", "1")
        theirs, theirs6 = ss_rows(ns), ss_rows(ns, "-6")
        ours, ours6 = our_rows(table), our_rows(table, 6)
        if ours == theirs and ours6 == theirs6:
            break
    assert ours == theirs, (ours - theirs, theirs - ours)
    # `ss -6`: the AF_INET6 sockets alone, v4-mapped peers of the dual-stack listener included
    assert ours6 == theirs6, (ours6 - theirs6, theirs6 - ours6)
    six = [s for s in table.sockets if s.family == 6]
    assert {(s.protocol, s.state) for s in six} >= {("tcp", "LISTEN"), ("tcp", "ESTAB"), ("tcp", "TIME-WAIT"),
                                                    ("tcp", "CLOSE-WAIT"), ("udp", "UNCONN"), ("udp", "ESTAB")}
    assert any(s.remote == "::ffff:127.0.0.1" and s.state == "ESTAB" for s in six)
    assert any(s.local == "::1" and s.remote == "::1" for s in six)
    states = Counter(s.state for s in table.sockets)
    assert {"ESTAB", "TIME-WAIT", "CLOSE-WAIT", "FIN-WAIT-2", "LISTEN", "UNCONN"} <= set(states)
    assert doc.total == doc.kept == sum(states.values()) > 2000 and doc.dropped == 0
    # every socket with an inode is held by the farm (the scan may still meet an unreadable process elsewhere)
    assert all(s.owners for s in table.sockets if s.inode)
    # the summary keeps the rows in states that point at a fault, and counts owners over the whole table
    assert Counter(s.state for s in doc.sockets) == {st: n for st, n in states.items()
                                                       if st in ("SYN-SENT", "SYN-RECV", "CLOSE-WAIT", "LAST-ACK",
                                                                 "FIN-WAIT-1", "CLOSING")}
    assert sum(doc.close_wait_owners.values()) == sum(len(s.owners) for s in table.sockets if s.state == "CLOSE-WAIT")
    assert doc.owners_hidden == 0


def test_row_limit_keeps_counts_exact_and_target_rows(tmp_path, farm):
    ns, _ = farm
    doc, table = _collect(tmp_path, ns, "--passive", "--socket-samples", "1", "--socket-rows", "100",
                          "--target", "127.0.0.1:20003")
    assert doc.total > 2000 and doc.kept == len(table.sockets) >= 100 and doc.dropped == doc.total - doc.kept
    assert sum(doc.counts.values()) == doc.total
    to_target = [s for s in table.sockets if s.lport == 20003 or (s.remote == "127.0.0.1" and s.rport == 20003)]
    assert len(to_target) > 50  # every row of the target is kept
    assert doc.kept == max(100, len(to_target))
    assert doc.sockets[:len(to_target)] == to_target  # the summary's rows start with the target's
    _, full = _collect(tmp_path, ns, "--passive", "--socket-samples", "1", "--target", "127.0.0.1:20003")
    # the same rows in the unlimited table (UDP sockets connected to [::1]:20003 are another target's)
    assert len([s for s in full.sockets if s.lport == 20003 or (s.remote == "127.0.0.1" and s.rport == 20003)]) \
        == len(to_target)


def test_owners_and_tcp_info(tmp_path, farm):
    ns, pid = farm
    doc, table = _collect(tmp_path, ns, "--passive", "--socket-samples", "1")
    estab = [s for s in table.sockets if s.state == "ESTAB" and s.protocol == "tcp"]
    assert estab and all(s.tcp is not None and s.tcp.snd_mss > 0 for s in estab)
    tw = [s for s in table.sockets if s.state == "TIME-WAIT"]
    assert tw and all(s.owner_unknown and s.owner_unknown.unavailable.value == "not_applicable" for s in tw)
    listeners = {(l.local, l.lport): l for l in doc.listeners}
    assert listeners[("127.0.0.1", 20000)].scope is BindScope.LOOPBACK
    assert listeners[("::1", 20004)].scope is BindScope.LOOPBACK
    assert all(l.owners for l in doc.listeners if l.protocol == "tcp")


def test_bind_scope():
    assert bind_scope("0.0.0.0") is BindScope.WILDCARD and bind_scope("::") is BindScope.WILDCARD
    assert bind_scope("127.0.0.53") is BindScope.LOOPBACK and bind_scope("::ffff:127.0.0.1") is BindScope.LOOPBACK
    assert bind_scope("10.244.1.3") is BindScope.SPECIFIC


def test_connect_probe_outcomes(tmp_path, healthy_lab):
    pod = healthy_lab.namespaces["pod"]
    out = fresh(tmp_path)
    proc = netbundle("collect", "--slice", "sockets", "--netns", pod, "--target", "10.244.1.3:8080",
                     "--target", "10.244.1.3:9", "--target", "10.244.1.77:8080", "--target", "10.96.5.5:80",
                     "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = read_bundle(out).document(f"vantages/netns-{pod}/sockets.json", SocketsSlice)
    by = {p.target: p for p in doc.probes}
    assert by["10.244.1.3:8080"].outcome is ConnectOutcome.CONNECTED
    assert by["10.244.1.3:9"].outcome is ConnectOutcome.REFUSED and len(by["10.244.1.3:9"].attempts) == 1
    # on-link but absent: ARP fails -> host unreachable; off-link via a node that has no route -> ICMP or timeout
    assert by["10.244.1.77:8080"].outcome in (ConnectOutcome.UNREACHABLE, ConnectOutcome.TIMEOUT)
    assert by["10.96.5.5:80"].outcome in (ConnectOutcome.UNREACHABLE, ConnectOutcome.TIMEOUT)
    assert all(a.latency_ms <= 2100 for p in doc.probes for a in p.attempts)


def test_non_root_still_completes_and_names_hidden_owners(tmp_path, lab):
    """As uid 65534 (with only CAP_DAC_READ_SEARCH, so it can run the interpreter under /root):
    every row is there, and owners it could not read are marked not_permitted, never empty."""
    info = lab("healthy")
    folder = tmp_path / "out"
    folder.mkdir()
    folder.chmod(0o777)
    out = folder / "b.tar.zst"
    proc = subprocess.run(
        ["ip", "netns", "exec", info.namespaces["server"], "setpriv", "--reuid=65534", "--regid=65534",
         "--clear-groups", "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
         sys.executable, "-m", "bundle", "collect", "--slice", "sockets", "--target", info.targets[0], "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    b = read_bundle(out)
    [v] = b.manifest.vantages
    assert v.privileges.uid == 65534 and "CAP_SYS_PTRACE" not in v.privileges.capabilities
    [run] = b.manifest.slices
    assert run.status.value == "complete" and "owners hidden" in (run.reason or "")
    doc = b.sockets(v.id)
    assert doc.owner_scan.denied > 0 and not doc.owner_scan.complete
    [listener] = [l for l in doc.listeners if l.lport == 8080]
    assert listener.owners == [] and listener.owner_unknown.unavailable.value == "not_permitted"
    assert "not permitted" in listener.owner_unknown.detail
    show = netbundle("show", str(out)).stdout
    assert "transport.owners_hidden" not in show and "owners of 1 sockets are hidden" in show


_MAPPED_CLIENT = """
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 9931)); srv.listen()
cli = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # a dual-stack client (a JVM's), dialing IPv4 mapped
cli.connect(("::ffff:127.0.0.1", 9931))
conn, _ = srv.accept()
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.privileged
def test_a_v4_mapped_row_is_the_ipv4_targets(tmp_path):
    """A socket row whose peer is ::ffff:127.0.0.1 belongs to the target 127.0.0.1: kept as a target row and
    counted in the target's state trend (it was neither)."""
    ns = f"nbt-mapped-{__import__('os').getpid() % 100000}"
    netns.create(ns)
    proc = None
    try:
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _MAPPED_CLIENT],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        out = fresh(tmp_path)
        assert netbundle("collect", "--passive", "--slice", "sockets", "--netns", ns, "--target", "127.0.0.1:9931",
                         "--socket-samples", "1", "-o", str(out)).returncode == 0
        doc = read_bundle(out).sockets(f"netns-{ns}")
        assert doc is not None
        mapped = [s for s in doc.sockets if s.remote == "::ffff:127.0.0.1" and s.rport == 9931]
        assert len(mapped) == 1 and mapped[0].state == "ESTAB"
        assert doc.samples[0].to_targets["127.0.0.1:9931"] == {"ESTAB": 1}
    finally:
        if proc is not None:
            proc.kill()
            proc.communicate()
        netns.remove(ns)
