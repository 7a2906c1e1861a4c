"""End to end through the real CLI: collect -> validate -> show -> render, and what goes wrong."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from tests.conftest import fresh, netbundle, sigint_default

pytestmark = pytest.mark.privileged


def test_collect_validate_show_render(tmp_path, mtu_lab):
    out = tmp_path / "incident.tar.zst"
    proc = netbundle("collect", "--target", mtu_lab.targets[0], "--netns", mtu_lab.namespaces["pod"],
                     "--netns", mtu_lab.namespaces["node"], "--ticket", "INC-42", "--note", "checkout slow", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert netbundle("validate", str(out)).returncode == 0
    show = netbundle("show", str(out))
    assert show.returncode == 0
    assert "path MTU 1400" in show.stdout and "INC-42" in show.stdout and "blackhole" in show.stdout
    html = tmp_path / "appendix.html"
    assert netbundle("render", str(out), "-o", str(html)).returncode == 0
    text = html.read_text()
    assert "a path-MTU blackhole" in text and "1372" in text and "INC-42" in text
    m = read_bundle(out).manifest
    assert m.invocation.ticket == "INC-42" and m.invocation.exit_code == 0
    assert [v.entered for v in m.vantages] == [True, True]
    assert all(v.privileges and "CAP_NET_RAW" in v.privileges.capabilities for v in m.vantages)
    assert len({v.netns_inode for v in m.vantages}) == 2
    assert not list(tmp_path.glob(".netbundle-stage-*")) and not list(tmp_path.glob("*.part"))


def test_missing_netns_costs_nothing_else(tmp_path, mtu_lab):
    out = fresh(tmp_path)
    proc = netbundle("collect", "--passive", "--target", "10.244.0.2", "--netns", "nbt-does-not-exist",
                     "--netns", mtu_lab.namespaces["pod"], "-o", str(out))
    assert proc.returncode == 5, proc.stderr
    b = read_bundle(out)
    runs = {s.vantage: s for s in b.manifest.slices}
    assert runs["netns-nbt-does-not-exist"].status.value == "failed"
    assert "not found" in (runs["netns-nbt-does-not-exist"].reason or "")
    assert runs[f"netns-{mtu_lab.namespaces['pod']}"].status.value == "complete"
    assert b.route(f"netns-{mtu_lab.namespaces['pod']}") is not None


def test_unroutable_target_is_recorded(tmp_path, mtu_lab):
    out = fresh(tmp_path)
    # The pod has a default route; the remote node has none toward 10.96.0.0/16.
    proc = netbundle("collect", "--target", "10.96.0.10:53", "--netns", mtu_lab.namespaces["remote"], "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = read_bundle(out).route(f"netns-{mtu_lab.namespaces['remote']}")
    assert doc is not None and not doc.lookups[0].ok and doc.lookups[0].error == "Network is unreachable"
    assert "no usable route" in netbundle("show", str(out)).stdout


@pytest.mark.parametrize("args, fragment", [
    (["collect", "--target", "not_a/name"], "neither an IP address nor a DNS name"),
    (["collect", "--dns-server", "kube-dns"], "not an IP address"),
    (["collect", "--target", "10.0.0.1:99999"], "port must be"),
    (["collect", "--netns", "../etc"], "not a netns name"),
    (["collect", "--timeout", "0"], "--timeout"),
    (["collect", "--socket-rows", "100001"], "--socket-rows 0 to 100000"),
    (["collect", "--conntrack-rows", "100001"], "--conntrack-rows must be 0 to 100000"),
    (["frobnicate"], "invalid choice"),
    (["lab", "up", "nope"], "argument SCENARIO: invalid choice: 'nope'"),
])
def test_bad_input_is_one_line(tmp_path, args, fragment):
    proc = netbundle(*args, cwd=tmp_path)
    assert proc.returncode in (2, 7), proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())


def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    # root ignores modes, so make it really read-only with a read-only bind mount
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=True)
    try:
        proc = netbundle("collect", "--passive", "-o", str(ro / "b.tar.zst"))
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert proc.returncode == 6 and proc.stderr.count("\n") == 1, proc.stderr
    assert "not a writable folder" in proc.stderr or "cannot write" in proc.stderr


def test_sigint_leaves_a_valid_bundle_or_none(tmp_path, mtu_lab):
    """Interrupt at random points of a ~4 s collection: each run leaves a valid bundle or nothing."""
    rng = random.Random(1234)
    outcomes = []
    for i in range(6):
        out = tmp_path / f"b{i}.tar.zst"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bundle", "collect", "--target", mtu_lab.targets[0],
             "--netns", mtu_lab.namespaces["pod"], "--netns", mtu_lab.namespaces["node"], "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, preexec_fn=sigint_default,
        )
        time.sleep(rng.uniform(0.2, 3.5) if i else 0.05)
        proc.send_signal(signal.SIGINT if i % 2 == 0 else signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err
        if out.exists():
            b = read_bundle(out)
            outcomes.append(proc.returncode)
            if proc.returncode == 130:
                assert b.manifest.invocation.exit_code == 130
                assert any("interrupted" in (s.reason or "") for s in b.manifest.slices) or all(
                    s.status.value == "complete" for s in b.manifest.slices)
        else:
            outcomes.append(None)
            # 130 from netbundle, or killed by the signal before Python had installed any handler
            assert proc.returncode in (130, -signal.SIGINT, -signal.SIGTERM), err
        assert not list(tmp_path.glob(".netbundle-stage-*")) and not list(tmp_path.glob(".*.part"))
    assert 130 in outcomes, outcomes  # at least one interruption landed mid-collect and wrote a bundle


@pytest.mark.privileged
def test_kubectl_plugin(tmp_path, healthy_lab):
    """`kubectl netbundle collect …`: kubectl finds the kubectl-netbundle entry point on PATH and runs it."""
    import os
    import shutil

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
    listed = subprocess.run([kubectl, "plugin", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert f"{venv_bin}/kubectl-netbundle" in listed.stdout
    out = fresh(tmp_path)
    proc = subprocess.run([kubectl, "netbundle", "collect", "--passive", "--slice", "route", "--netns",
                           healthy_lab.namespaces["node"], "-o", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run([kubectl, "netbundle", "validate", str(out)], env=env, timeout=60).returncode == 0


def test_an_ipv6_service_target_reads_back_as_itself():
    """A Service's IPv6 ClusterIP port becomes a target written [addr]:port, which parses back to the same
    address and port (fd00:10:96::a:443 read as the address fd00:10:96::a:443)."""
    from bundle.collect.targets import parse_target
    from bundle.models import endpoint_spec

    for address, port in (("fd00:10:96::a", 443), ("10.96.0.10", 53), ("fd00::1", None)):
        spec = endpoint_spec(address, port)
        t = parse_target(spec)
        assert (t.address, t.port) == (address, port), spec
    assert endpoint_spec("fd00:10:96::a", 443) == "[fd00:10:96::a]:443"
