"""`netbundle fleet collect` over real OpenSSH: each node is a lab netns running Debian's sshd (started here on
its own port, with a throwaway host key, client key and config; removed after), and each node runs the real
`netbundle collect`. Nodes that cannot give a bundle — netbundle missing, hanging, unreachable — end within the
node timeout, are named, and the set is written with what arrived."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.archive.incidentset import read_set
from bundle.lab.sshnodes import SshNode, start_ssh_nodes
from bundle.lab.topology import Topology
from tests.conftest import sigint_default

pytestmark = pytest.mark.privileged

VENV_BIN = str(Path(sys.executable).parent)
NODES = {"node-a": 11, "node-b": 12, "node-c": 13, "node-d": 14}  # c: no netbundle on PATH; d: hangs
SUDO_NODE, SUDO_USER = ("node-f", 16), "nbt-fleet"  # logs in as an account that is not root and has no sudo


@pytest.fixture(scope="module")
def fleet_lab(tmp_path_factory):
    created_run_sshd = not Path("/run/sshd").exists()
    if created_run_sshd:
        Path("/run/sshd").mkdir(mode=0o755)  # sshd's privilege-separation folder; removed after if made here
    t = Topology(f"nbt-fleet-{os.getpid() % 100000}")
    # A machine-wide change, undone below whatever happens: a system account for the sudo-refused node.
    # password "*": no password works, yet the account is not locked ("!"), which sshd would refuse outright
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", "--password", "*", SUDO_USER],
                   check=True)
    try:
        ssh_config = start_ssh_nodes(t, [
            SshNode(name, last, on_path=name != "node-c", force_command="sleep 600" if name == "node-d" else None)
            for name, last in NODES.items()] + [SshNode(*SUDO_NODE, user=SUDO_USER)],
            extra_hosts={"node-e": "10.244.60.99"})  # nothing listens there: unreachable
        t.python("node-b", "bundle.lab.listener", "--port", "8080", "--send", "64")
        t.wait_listening("node-b", 8080)
        yield t, ssh_config
    finally:
        t.teardown()
        subprocess.run(["userdel", SUDO_USER], check=False)
        if created_run_sshd:
            Path("/run/sshd").rmdir()


def _fleet(t: Topology, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", t.namespaces["ctl"], sys.executable, "-m", "bundle", "fleet",
                           "collect", *args], capture_output=True, text=True, timeout=timeout)


def test_a_set_from_real_ssh_nodes_with_every_failure_named(fleet_lab, tmp_path):
    t, ssh_config = fleet_lab
    out = tmp_path / "set.tar.zst"
    proc = _fleet(t, "--ssh", "node-a,node-b", "--ssh", "node-c,node-d,node-e,node-f", "--ssh-config", str(ssh_config),
                  "--node-timeout", "12", "--start-in", "2", "-o", str(out),
                  "--", "--passive", "--slice", "route", "--slice", "sockets", "--timeout", "15")
    assert proc.returncode == 5, proc.stderr  # written, with nodes missing
    assert proc.stdout.strip() == str(out)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("collected 2 of 6; ")
    for words in ("node node-c: netbundle_missing", "node node-d: timeout (no answer within 14 s: stopped)",
                  "node node-e: unreachable", "node node-f: sudo_refused (sh: "):
        assert words in last, last
    assert "sudo: not found)" in last  # this machine has no sudo: what the node's shell said is the reason
    st = read_set(out)
    outcomes = {n.node: n for n in st.manifest.nodes}
    assert {n: o.outcome for n, o in outcomes.items()} == {
        "node-a": "collected", "node-b": "collected", "node-c": "netbundle_missing", "node-d": "timeout",
        "node-e": "unreachable", "node-f": "sudo_refused"}
    assert all(o.duration_s < 16 for o in outcomes.values())
    # each node's bundle arrived as the node wrote it, and is a bundle of that node's own netns
    for name in ("node-a", "node-b"):
        o = outcomes[name]
        assert o.sha256 == o.remote_sha256 and o.member == f"nodes/{name}.tar.zst"
        b = st.bundles[name]
        assert b.manifest.bundle_id == o.bundle_id
        addresses = {a.address for a in b.route("host").addresses}
        assert f"10.244.60.{NODES[name]}" in addresses
        assert "--start-at" in b.manifest.invocation.argv
    # the shared start: both nodes' collections began together, after the start the set gave them
    starts = [st.bundles[n].manifest.created for n in ("node-a", "node-b")]
    assert abs((starts[0] - starts[1]).total_seconds()) < 1.0
    assert all(s >= st.manifest.start_at.replace(microsecond=0) for s in starts)
    # validate and show read the set
    val = subprocess.run([sys.executable, "-m", "bundle", "validate", str(out)], capture_output=True, text=True)
    assert val.returncode == 0 and "valid netbundle set 1.0, 2 of 6 node bundles verified" in val.stdout
    show = subprocess.run([sys.executable, "-m", "bundle", "show", str(out)], capture_output=True, text=True)
    assert show.returncode == 0 and "== node node-a" in show.stdout and "netbundle_missing" in show.stdout


def test_a_flipped_bit_in_a_set_is_caught(fleet_lab, tmp_path):
    t, ssh_config = fleet_lab
    out = tmp_path / "set.tar.zst"
    proc = _fleet(t, "--ssh", "node-a", "--ssh-config", str(ssh_config), "--start-in", "0", "-o", str(out),
                  "--", "--passive", "--slice", "route", "--timeout", "15")
    assert proc.returncode == 0, proc.stderr
    data = bytearray(out.read_bytes())
    for offset in (len(data) // 3, len(data) // 2, len(data) - 60):
        flipped = tmp_path / f"flip-{offset}.tar.zst"
        copy = bytearray(data)
        copy[offset] ^= 0x10
        flipped.write_bytes(bytes(copy))
        val = subprocess.run([sys.executable, "-m", "bundle", "validate", str(flipped)], capture_output=True, text=True)
        assert val.returncode != 0 and val.stderr.count("\n") == 1, (offset, val.stderr)


def test_options_are_checked_before_any_node_is_asked(fleet_lab, tmp_path):
    t, ssh_config = fleet_lab
    for extra, words in ((["--", "--socket-sampels", "3"], "unrecognized arguments"),
                         (["--", "-o", "x.tar.zst"], "the fleet sets these for every node")):
        proc = _fleet(t, "--ssh", "node-a", "--ssh-config", str(ssh_config), "-o", str(tmp_path / "s.tar.zst"), *extra)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert not (tmp_path / "s.tar.zst").exists()


def test_ctrl_c_writes_what_arrived_and_stops_the_rest(fleet_lab, tmp_path):
    """SIGINT while a node hangs: the ssh processes are stopped, the set is written with the node that answered
    and the hanging one marked interrupted, exit 130."""
    import signal
    import time

    t, ssh_config = fleet_lab
    out = tmp_path / "set.tar.zst"
    proc = subprocess.Popen(["ip", "netns", "exec", t.namespaces["ctl"], sys.executable, "-m", "bundle", "fleet",
                             "collect", "--ssh", "node-a,node-d", "--ssh-config", str(ssh_config), "--start-in", "0",
                             "--node-timeout", "60", "-o", str(out), "--", "--passive", "--slice", "route",
                             "--timeout", "15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    time.sleep(10)  # node-a's route-only collect takes about two seconds; node-d hangs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    st = read_set(out)
    outcomes = {n.node: n.outcome for n in st.manifest.nodes}
    assert outcomes["node-d"] == "failed" and "interrupted" in {n.detail for n in st.manifest.nodes}
    assert outcomes["node-a"] == "collected" and "node-a" in st.bundles
    leftover = subprocess.run(["pgrep", "-f", f"-F {ssh_config}"], capture_output=True, text=True).stdout
    assert leftover.strip() == ""


_BETWEEN = """
table bridge nbt_between {
    chain forward {
        type filter hook forward priority 0;
        ip saddr 10.244.60.11 ip daddr 10.244.60.12 tcp dport 8080 drop
    }
}
"""
_AT_SERVER = """
table inet nbt_server {
    chain input {
        type filter hook input priority 0;
        ip saddr 10.244.60.11 tcp dport 8080 drop
    }
}
"""


@pytest.mark.parametrize("where, role, table, fid", [
    # lost between the nodes: test_endpoint_nodes_that_answer_and_one_that_does_not_are_diffed
    ("at the server", "node-b", "inet nbt_server", "fleet.dropped_at_server"),
])
def test_a_lost_handshake_is_followed_across_the_nodes(fleet_lab, tmp_path, where, role, table, fid):
    """node-a connects to node-b:8080 while the SYNs are dropped between them (a bridge filter in the network)
    or at node-b's input. Both nodes capture in the same window; `show` of the set follows node-a's unanswered
    handshake to node-b: lost between the nodes (node-b's capture, running then, holds none of the SYNs), or
    dropped at the server (node-b's capture holds them, it sent nothing back). A clock offset is estimated
    where both ends saw the same SYN."""
    t, ssh_config = fleet_lab
    t.nft(role, _BETWEEN if role == "ctl" else _AT_SERVER)
    try:
        out = tmp_path / "set.tar.zst"
        proc = _fleet(t, "--ssh", "node-a,node-b", "--ssh-config", str(ssh_config), "--start-in", "2", "--window", "6",
                      "-o", str(out), "--", "--target", "10.244.60.12:8080", "--target", "10.244.60.11", "--slice", "route",
                      "--slice", "sockets", "--slice", "capture", "--timeout", "25")
        assert proc.returncode in (0, 5), proc.stderr
    finally:
        subprocess.run(["ip", "netns", "exec", t.namespaces[role], "nft", "delete", "table", *table.split()],
                       check=True)
    from bundle.render.text import set_findings

    st = read_set(out)
    found, offsets = set_findings(st)
    assert [f.id for f in found] == [fid], (where, [(f.id, f.summary) for f in found])
    f = found[0]
    assert f.target.address == "10.244.60.12" and f.target.port == 8080 and f.vantage.startswith("node-a/")
    assert {e.member for e in f.evidence} == {"nodes/node-a.tar.zst", "nodes/node-b.tar.zst"}
    if fid == "fleet.dropped_at_server":
        assert offsets and all(abs(o.offset_s) < 1.0 for o in offsets)  # one machine: one clock
    show = subprocess.run([sys.executable, "-m", "bundle", "show", str(out)], capture_output=True, text=True)
    assert "Across the nodes:" in show.stdout and fid in show.stdout
    # one ladder across the nodes: the cross-node finding owns the target over node-a's "unanswered"
    from bundle.render.view import set_view

    [lad] = [x for x in set_view(st).report.ladders if x.target == "10.244.60.12:8080"]
    assert lad.cause is not None and lad.cause.id == fid and lad.decided_by == "across the nodes"
    assert lad.owner.value == ("route" if fid == "fleet.lost_between" else "transport")
    assert {r.node: r.role for r in lad.rows}["node-b"] == "server"
    _check_set_page(out, tmp_path, fid, ["node-a", "node-b"])


def _check_set_page(out: Path, tmp_path: Path, fid: str, nodes: list[str]) -> None:
    """`render` of a set: one page, the verdicts across the nodes first, then each node's own sections, every
    id unique (each node's anchors prefixed), the cross-node evidence linking into the node's capture section."""
    import re

    page = tmp_path / "set.html"
    proc = subprocess.run([sys.executable, "-m", "bundle", "render", str(out), "-o", str(page)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    ids = re.findall(r' id="([^"]+)"', html)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert html.index("Across the nodes: what failed first") < html.index("Node node-a — Network incident evidence")
    for i, _node in enumerate(nodes):
        assert f'id="n{i}-ladder"' in html or f'id="n{i}-findings"' in html
    assert fid in html
    for href in re.findall(r'href="#([^"]+)"', html):
        assert href in ids, href
    assert 'href="#n0-capture-' in html  # node-a's SYNs, in node-a's capture section


def test_a_set_redacts_with_one_map_and_summarises(fleet_lab, tmp_path):
    """`redact` of a set: every node bundle redacted with one map (no node address left in any member of any
    node's bundle, text or packed), node names mapped, the copy a valid set; `summary` of a set gives the set's
    lines, then each node's ticket summary."""
    import ipaddress
    import tarfile

    import pyzstd

    from tests.test_redact import _members

    t, ssh_config = fleet_lab
    out = tmp_path / "set.tar.zst"
    proc = _fleet(t, "--ssh", "node-a,node-b", "--ssh-config", str(ssh_config), "--start-in", "0", "--window", "2",
                  "-o", str(out), "--", "--target", "10.244.60.12:8080", "--slice", "route", "--slice", "capture",
                  "--timeout", "20")
    assert proc.returncode == 0, proc.stderr
    summary = subprocess.run([sys.executable, "-m", "bundle", "summary", str(out)], capture_output=True, text=True)
    assert summary.returncode == 0 and "== node node-a" in summary.stdout and "== node node-b" in summary.stdout
    red = tmp_path / "red.tar.zst"
    proc = subprocess.run([sys.executable, "-m", "bundle", "redact", str(out), "-o", str(red)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    st = read_set(red)
    assert len(st.bundles) == 2 and not {"node-a", "node-b"} & {n.node for n in st.manifest.nodes}
    needles = set()
    for last in (11, 12):
        addr = ipaddress.ip_address(f"10.244.60.{last}")
        needles |= {str(addr).encode(), addr.packed}
    leaks = []
    with pyzstd.ZstdFile(red) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
        for info in tar:
            data = tar.extractfile(info).read()
            if info.name == "set.json":
                assert b"node-a" not in data and b"10.244.60." not in data
                continue
            node = tmp_path / info.name.replace("/", "_")
            node.write_bytes(data)
            leaks += [(info.name, path) for path, member in _members(node).items() for n in needles if n in member]
    assert leaks == []


# --- the Kubernetes engine ------------------------------------------------------------------------------------
# Against the loopback API server (tests/kubeapi.py) with tests/kubelet.py playing the Job controller and the
# kubelet: a SIMULATOR that runs each Job's container command in the lab netns of its node. The API calls, the
# Job manifests (checked against the kubernetes client's models) and the log-stream framing are the real ones.

def _kube_api():
    from tests import kubeapi

    api = kubeapi.FakeApi()
    for name, last in NODES.items():
        api.add("nodes", kubeapi.node(name, f"10.244.60.{last}", f"10.244.{last}.0/24"))
    return api


def _kube_fleet(kubeconfig, *args, timeout=90, **kw):
    return subprocess.Popen([sys.executable, "-m", "bundle", "fleet", "collect", "--kubeconfig", str(kubeconfig),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_kubernetes_engine_makes_a_job_per_node_and_names_each_failure(fleet_lab, tmp_path):
    """Five nodes: two collect; node-c's image pull backs off, node-d's pod is evicted, node-e has no kubelet
    (its pod stays Pending). The Jobs carry one shared start, the bundles come back over the log stream and are
    verified, each failure ends within the node timeout and is named, and every Job (and pod) is deleted."""
    from tests import kubeapi
    from tests.kubelet import Kubelet
    from tests.test_deploy import _check, _docs, _grants

    t, _ = fleet_lab
    api = _kube_api()
    out = tmp_path / "set.tar.zst"
    path = f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
    netns = {n: t.namespaces[n] for n in ("node-a", "node-b", "node-c", "node-d")}
    with kubeapi.serve(api), Kubelet(api, netns, path, pull_fails={"node-c"}, evict={"node-d"}) as kubelet:
        proc = _kube_fleet(api.kubeconfig(tmp_path), "--nodes", "node-a,node-b,node-c", "--nodes", "node-d,node-e",
                           "--node-timeout", "12", "--start-in", "3", "--image-pull-grace", "2", "-o", str(out),
                           "--", "--passive", "--slice", "route", "--slice", "sockets", "--timeout", "15")
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 5, err
        assert api.of("jobs") == [] and api.of("pods") == [] and kubelet.running() == []  # nothing left behind
        jobs = kubelet.jobs_seen
    last = err.strip().splitlines()[-1]
    assert last.startswith("collected 2 of 5; "), last
    for words in ("node node-c: not_started (ImagePullBackOff", "node node-d: evicted (Evicted: The node was low",
                  "node node-e: timeout (not started within 15 s (Pending: no container started"):
        assert words in last, last
    st = read_set(out)
    assert st.manifest.engine == "kubernetes"
    outcomes = {n.node: n for n in st.manifest.nodes}
    assert {n: o.outcome for n, o in outcomes.items()} == {
        "node-a": "collected", "node-b": "collected", "node-c": "not_started", "node-d": "evicted",
        "node-e": "timeout"}
    assert all(o.duration_s < 17 for o in outcomes.values())
    for name in ("node-a", "node-b"):
        o = outcomes[name]
        assert o.sha256 == o.remote_sha256 and st.bundles[name].manifest.bundle_id == o.bundle_id
        assert f"10.244.60.{NODES[name]}" in {a.address for a in st.bundles[name].route("host").addresses}
    starts = [st.bundles[n].manifest.created for n in ("node-a", "node-b")]
    assert abs((starts[0] - starts[1]).total_seconds()) < 1.0
    # the Jobs as the API received them: valid against the client's models, one per node, the right spec
    assert sorted(j["spec"]["template"]["spec"]["nodeName"] for j in jobs) == sorted(NODES) + ["node-e"]
    start_ats = set()
    for job in jobs:
        errors: list[str] = []
        _check({k: v for k, v in job.items() if k != "status"}, "V1Job", "Job", errors)
        assert not errors, errors
        spec = job["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert spec["hostNetwork"] and spec["hostPID"] and spec["restartPolicy"] == "Never"
        assert c["securityContext"]["capabilities"] == {
            "drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]}
        assert c["image"] == "localhost/netbundle:0.1.0" and spec["serviceAccountName"] == "netbundle"
        assert job["spec"]["activeDeadlineSeconds"] >= 15 and job["spec"]["ttlSecondsAfterFinished"] > 0
        assert job["metadata"]["namespace"] == "netbundle"
        assert job["metadata"]["labels"]["netbundle.io/run"] in st.manifest.set_id
        start_ats.add(c["args"][c["args"].index("--start-at") + 1])
    assert len(start_ats) == 1  # one shared start
    # every call the coordinator made is granted by docs/deploy/fleet-rbac.yaml, and every rule there is used
    grants = _grants([(n, d) for n, d in _docs() if n == "fleet-rbac.yaml"])
    used = {(verb, res, ns) for verb, res, ns in api.verbs if res != "nodes"}
    assert used <= grants, used - grants
    assert grants == used, grants - used


def test_kubernetes_engine_ctrl_c_deletes_its_jobs(fleet_lab, tmp_path):
    """SIGINT while the nodes capture: the set is written (nodes marked interrupted), exit 130, and every Job the
    run made is deleted, its container stopped."""
    import signal
    import time

    from tests import kubeapi
    from tests.kubelet import Kubelet

    t, _ = fleet_lab
    api = _kube_api()
    out = tmp_path / "set.tar.zst"
    netns = {n: t.namespaces[n] for n in ("node-a", "node-b")}
    with kubeapi.serve(api), Kubelet(api, netns, f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin") as kubelet:
        proc = _kube_fleet(api.kubeconfig(tmp_path), "--nodes", "node-a,node-b", "--node-timeout", "60",
                           "--start-in", "0", "--window", "40", "-o", str(out),
                           "--", "--passive", "--slice", "capture", "--capture-seconds", "50", "--timeout", "60",
                           preexec_fn=sigint_default)
        deadline = time.monotonic() + 20
        while len(kubelet.running()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(kubelet.running()) == 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        time.sleep(0.5)  # the simulator's loop notices a deleted Job within 0.1 s
        assert api.of("jobs") == [] and kubelet.running() == []
    st = read_set(out)
    assert {n.outcome for n in st.manifest.nodes} == {"failed"} and {n.detail for n in st.manifest.nodes} == {"interrupted"}


def test_nodes_of_a_service_and_a_pod(tmp_path):
    """--kube without --nodes: the nodes holding the Service's ready endpoints (not the unready one's), then the
    client pod's node; what cannot be resolved is said."""
    from bundle.collect.kube import api_client
    from bundle.collect.kubefleet import select_nodes
    from tests import kubeapi

    api = kubeapi.FakeApi()
    api.add("endpointslices", kubeapi.endpoint_slice("default", "payments", [
        ("10.244.2.5", True, "node-b"), ("10.244.3.5", False, "node-c"), ("10.244.4.5", True, "node-d"),
        ("10.244.2.6", True, "node-b")], [("http", 8080, "TCP")]))
    api.add("pods", kubeapi.pod("default", "client", "10.244.1.5", "node-a", {"app": "client"}, [], uid="u-1"))
    with kubeapi.serve(api):
        client, _, _ = api_client(str(api.kubeconfig(tmp_path)), None)
        nodes, notes = select_nodes(client, [("default", "payments"), ("default", "nothing")],
                                    [("default", "client"), ("default", "gone")])
    assert nodes == ["node-b", "node-d", "node-a"]
    assert notes == ["service default/nothing: no ready endpoint with a node", "pod default/gone: not read (404 Not Found)"]


def test_endpoint_nodes_that_answer_and_one_that_does_not_are_diffed(fleet_lab, tmp_path):
    """Kubernetes engine (the kubelet simulator), capturing: node-a connects to 8080 on node-b and node-c, the
    SYNs to node-c are dropped between the nodes. The set names the loss between node-a and node-c, finds the
    split (port 8080 answered on node-b, never on node-c) and diffs node-c against node-b; `diff` takes the
    set's two nodes; `render` makes one page."""
    from bundle.render.view import set_view
    from tests import kubeapi
    from tests.kubelet import Kubelet

    t, _ = fleet_lab
    t.python("node-c", "bundle.lab.listener", "--port", "8080", "--send", "64")
    t.wait_listening("node-c", 8080)
    t.nft("ctl", _BETWEEN.replace("10.244.60.12", "10.244.60.13"))
    api = _kube_api()
    out = tmp_path / "set.tar.zst"
    netns = {n: t.namespaces[n] for n in ("node-a", "node-b", "node-c")}
    try:
        with kubeapi.serve(api), Kubelet(api, netns, f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"):
            proc = _kube_fleet(api.kubeconfig(tmp_path), "--nodes", "node-a,node-b,node-c", "--start-in", "3",
                               "--window", "6", "-o", str(out), "--", "--target", "10.244.60.12:8080",
                               "--target", "10.244.60.13:8080", "--slice", "route", "--slice", "sockets",
                               "--slice", "capture", "--timeout", "25")
            _, err = proc.communicate(timeout=120)
    finally:
        subprocess.run(["ip", "netns", "exec", t.namespaces["ctl"], "nft", "delete", "table", "bridge", "nbt_between"],
                       check=True)
    assert proc.returncode in (0, 5), err
    st = read_set(out)
    assert set(st.bundles) == {"node-a", "node-b", "node-c"}
    rep = set_view(st).report
    lost = [f for f in rep.findings if f.id == "fleet.lost_between"]
    assert [f.target.address for f in lost] == ["10.244.60.13"], [(f.id, f.summary) for f in rep.findings]
    [split] = rep.splits
    assert (split.client_node, split.port, split.pair) == ("node-a", 8080, ("node-c", "node-b"))
    assert split.failing == {"node-c": ["10.244.60.13"]} and split.working == {"node-b": ["10.244.60.12"]}
    show = subprocess.run([sys.executable, "-m", "bundle", "show", str(out)], capture_output=True, text=True)
    assert "Port 8080 from node-a: answered on node-b, never on node-c; node-c against node-b:" in show.stdout
    d = subprocess.run([sys.executable, "-m", "bundle", "diff", str(out), "--failing-node", "node-c",
                        "--healthy-node", "node-b"], capture_output=True, text=True)
    assert d.returncode == 0 and "set.tar.zst node node-c (failing) vs set.tar.zst node node-b (healthy)" in d.stdout
    bad = subprocess.run([sys.executable, "-m", "bundle", "diff", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--failing-node" in bad.stderr and bad.stderr.count("\n") == 1
    _check_set_page(out, tmp_path, "fleet.lost_between", ["node-a", "node-b", "node-c"])
