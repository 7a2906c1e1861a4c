"""Faults during a collection: each time the bundle is written and valid, and says what failed and why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.models import MissingReason, Unavailable
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged


def _run(argv: list[str], env: dict[str, str] | None = None, prefix: list[str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "bundle", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_missing_tools_are_named(tmp_path, healthy_lab):
    """iptables-save and nft absent from PATH: the NAT slice still reads conntrack and says which datapath it
    could not look at, and why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "ss", "tcpdump"):  # what else a collect might call; no iptables*, no nft
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    out = tmp_path / "b.tar.zst"
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = _run(["collect", "--passive", "--slice", "nat", "--netns", healthy_lab.namespaces["node"], "-o", str(out)],
                env=env)
    assert proc.returncode in (0, 5), proc.stderr
    b = read_bundle(out)
    doc = b.nat(f"netns-{healthy_lab.namespaces['node']}")
    assert doc is not None and not isinstance(doc.table, Unavailable)
    missing = {c.datapath.value: c.unavailable for c in doc.proxy.checks if c.unavailable is not None}
    assert missing["iptables-nft"].unavailable is MissingReason.NOT_SUPPORTED
    assert "iptables-nft-save is not installed" in missing["iptables-nft"].detail
    assert "nft is not installed" in missing["nftables"].detail


def test_without_net_admin_conntrack_is_not_permitted(tmp_path, healthy_lab):
    out = tmp_path / "b.tar.zst"
    proc = _run(["collect", "--passive", "--slice", "nat", "--netns", healthy_lab.namespaces["node"], "-o", str(out)],
                prefix=["setpriv", "--bounding-set=-net_admin"])
    assert proc.returncode == 5, proc.stderr  # written, one slice partial
    b = read_bundle(out)
    [v] = b.manifest.vantages
    assert "CAP_NET_ADMIN" not in v.privileges.capabilities
    doc = b.nat(v.id)
    assert isinstance(doc.table, Unavailable) and doc.table.unavailable is MissingReason.NOT_PERMITTED
    run = next(s for s in b.manifest.slices if s.slice == "nat")
    assert run.status.value == "partial" and "conntrack table" in run.reason


def test_unprivileged_user_gets_a_bundle_that_says_so():
    """Run as nobody: no netns can be entered, no probe sent; the host netns is read as far as a user can."""
    folder = Path(tempfile.mkdtemp(prefix="nbt-nobody-"))
    try:
        folder.chmod(0o777)
        out = folder / "b.tar.zst"
        proc = _run(["collect", "--passive", "--slice", "route", "--slice", "sockets", "--slice", "nat",
                     "-o", str(out)], prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        assert proc.returncode in (0, 5), proc.stderr
        b = read_bundle(out)
        [v] = b.manifest.vantages
        assert b.manifest.invocation.uid == 65534
        runnable = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "test", "-x",
                                  os.path.realpath(sys.executable)]).returncode == 0
        if not runnable:
            # this machine's interpreter lives under /root: the probe process cannot start as nobody, and the
            # bundle says exactly that for every slice
            assert "Permission denied" in (v.error or "")
            assert all(s.status.value == "failed" and s.reason for s in b.manifest.slices)
            return
        assert v.privileges.uid == 65534 and v.privileges.capabilities == []
        route = b.route(v.id)
        assert route is not None and route.links  # netlink reads need no privilege
        nat = b.nat(v.id)
        assert isinstance(nat.table, Unavailable) and nat.table.unavailable is MissingReason.NOT_PERMITTED
        show = netbundle("show", str(out)).stdout
        assert "uid 65534" in show
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_slice_that_hangs_is_cut_at_the_deadline(tmp_path, healthy_lab):
    """The pod's resolver points at an address that never answers and the DNS wait is long: the overall
    --timeout still holds; the DNS slice is marked as cut, the others are complete."""
    ns = healthy_lab.namespaces["pod"]
    conf = Path("/etc/netns") / ns / "resolv.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    had = conf.read_text() if conf.exists() else None
    conf.write_text("nameserver 10.244.1.250\noptions timeout:30 attempts:5\n")  # inside the lab: no one there
    try:
        out = tmp_path / "b.tar.zst"
        started = time.monotonic()
        proc = _run(["collect", "--netns", ns, "--name", "payments", "--dns-timeout", "30", "--timeout", "6",
                     "--slice", "dns", "--slice", "route", "-o", str(out)])
        took = time.monotonic() - started
    finally:
        if had is None:
            conf.unlink()
        else:
            conf.write_text(had)
    assert proc.returncode == 5, proc.stderr
    assert took < 6 + 8  # the deadline, the grace and writing; never the 150 s the resolver would wait
    b = read_bundle(out)
    runs = {s.slice: s for s in b.manifest.slices}
    assert runs["route"].status.value == "complete"
    assert runs["dns"].status.value in ("partial", "failed")
    assert any(w in (runs["dns"].reason or "") for w in ("deadline", "timeout", "no nameserver answered"))
