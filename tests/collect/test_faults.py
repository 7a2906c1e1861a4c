"""Faults during a collection: each time the bundle is written and valid, and says what failed and why."""

from __future__ import annotations

import ctypes.util
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.models import MissingReason, Unavailable
from tests.conftest import fresh, netbundle

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
    out = fresh(tmp_path)
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
    out = fresh(tmp_path)
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
    """Run as nobody: no netns can be entered, no probe sent; the host netns is read as far as a user can.

    Where the interpreter lives under a folder nobody cannot enter (/root here), the run gets CAP_DAC_READ_SEARCH
    and nothing else, just enough to start Python; the bundle must then say it ran with that one capability."""
    folder = Path(tempfile.mkdtemp(prefix="nbt-nobody-"))
    try:
        folder.chmod(0o777)
        out = folder / "b.tar.zst"
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        runnable = subprocess.run([*nobody, "test", "-x", os.path.realpath(sys.executable)]).returncode == 0 and \
            subprocess.run([*nobody, sys.executable, "-c", "import bundle"], capture_output=True,
                           cwd=folder).returncode == 0
        caps = [] if runnable else ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        proc = _run(["collect", "--passive", "--slice", "route", "--slice", "sockets", "--slice", "nat",
                     "-o", str(out)], prefix=[*nobody, *caps])
        assert proc.returncode in (0, 5), proc.stderr
        b = read_bundle(out)
        [v] = b.manifest.vantages
        assert b.manifest.invocation.uid == 65534
        assert v.privileges.uid == 65534
        assert v.privileges.capabilities == ([] if runnable else ["CAP_DAC_READ_SEARCH"])
        route = b.route(v.id)
        assert route is not None and route.links  # netlink reads need no privilege
        nat = b.nat(v.id)
        assert isinstance(nat.table, Unavailable) and nat.table.unavailable is MissingReason.NOT_PERMITTED
        runs = {s.slice: s for s in b.manifest.slices}
        assert runs["nat"].status.value == "partial" and "conntrack table" in runs["nat"].reason
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
        out = fresh(tmp_path)
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


@contextmanager
def _udp_flood_netns(name: str) -> Iterator[str]:
    """A netns whose loopback carries incompressible UDP to 127.0.0.1:9999 (0.5 MB/s) for a while."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    sender = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        sender = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", _FLOOD])
        yield name
    finally:
        if sender is not None:
            sender.kill()
            sender.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


# Paced, not flat out: the capture's byte limit (1 MB) is reached about 2 s after it starts, whatever the
# machine's speed, so the filler (started once the route slice is staged) acts while it runs.
_FLOOD = """
import os, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start, sent = time.monotonic(), 0
while time.monotonic() - start < 40:
    if sent < 500_000 * (time.monotonic() - start):
        s.sendto(os.urandom(1200), ("127.0.0.1", 9999))
        sent += 1200
    else:
        time.sleep(0.002)
"""


@contextmanager
def _small_disk(tmp_path: Path, megabytes: int = 80) -> Iterator[Path]:
    mnt = tmp_path / "nbt-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "nbt-disk", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_to(folder: Path, leave: int) -> None:
    """Leave about `leave` bytes free (under a page when 0), however much the collect writes meanwhile: one
    fallocate of "free - leave" fails whole with ENOSPC when the collect wrote in between, leaving the disk empty."""
    deadline = time.monotonic() + 10
    with open(folder / "filler", "ab") as fh:
        while time.monotonic() < deadline:
            want = shutil.disk_usage(folder).free - leave
            while want >= 4096:
                try:
                    os.posix_fallocate(fh.fileno(), os.fstat(fh.fileno()).st_size, want)
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    want //= 2
            else:
                return
    raise AssertionError(f"could not fill {folder} to {leave} bytes free")


@contextmanager
def _fill_once_collecting(folder: Path, leave: int) -> Iterator[None]:
    """Another process fills the disk once the route slice's documents are staged, while the capture runs: after
    the collect's free-space check, before the capture is handed over. A filler that failed fails the test."""
    def fill() -> None:
        deadline = time.monotonic() + 30
        while not list(folder.glob(".netbundle-stage-*/**/route.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        _fill_to(folder, leave)

    with ThreadPoolExecutor(1) as pool:
        filled = pool.submit(fill)
        yield
        filled.result()


def _collect_on_small_disk(tmp_path: Path, leave: int):
    with _udp_flood_netns(f"nbt-flood-{os.getpid() % 100000}") as ns, _small_disk(tmp_path) as disk:
        out = disk / "b.tar.zst"
        with _fill_once_collecting(disk, leave):
            # The capture runs while other slices do; the socket samples hold it open for ~4 s.
            proc = _run(["collect", "--netns", ns, "--target", "127.0.0.1:9999", "--slice", "capture", "--slice",
                         "route", "--slice", "sockets", "--socket-samples", "5", "--capture-seconds", "8",
                         "--capture-bytes", "1000000", "--snaplen", "2000", "-o", str(out)])
        assert "Traceback" not in proc.stderr, proc.stderr
        b = read_bundle(out) if out.exists() else None
        left = [p.name for p in disk.iterdir() if p.name not in ("b.tar.zst", "filler")]
        return proc, b, left


def test_disk_fills_during_the_capture(tmp_path):
    """The disk is full by the time the capture is handed over: the capture is not kept and says why; the rest
    of the bundle is written and valid."""
    proc, b, left = _collect_on_small_disk(tmp_path, leave=200_000)
    assert proc.returncode == 5, proc.stderr
    assert b is not None and left == []  # no staging folder or part file left behind
    runs = {s.slice: s for s in b.manifest.slices}
    assert runs["route"].status.value == "complete"
    assert runs["capture"].status.value == "partial"
    assert "capture.pcapng" in runs["capture"].reason and "No space left on device" in runs["capture"].reason
    assert not any(m.path.endswith(".pcapng") for m in b.manifest.members)
    assert b.manifest.invocation.exit_code == 5


def test_bundle_that_does_not_fit_drops_the_capture_first(tmp_path):
    """Room to stage the capture but not to write the archive beside it: the capture goes, the documents stay."""
    proc, b, left = _collect_on_small_disk(tmp_path, leave=1_700_000)
    assert proc.returncode == 5, proc.stderr
    assert b is not None and left == []
    run = next(s for s in b.manifest.slices if s.slice == "capture")
    assert "capture.pcapng dropped: no space left on the device to write the bundle" in run.reason, run.reason
    assert b.capture(b.manifest.vantages[0].id) is not None  # the capture's analysis stayed
    assert not any(m.path.endswith(".pcapng") for m in b.manifest.members)


def test_disk_full_from_the_start_is_one_clear_line(tmp_path):
    """Nothing fits, not even the manifest: exit 6 with one line, and nothing left behind."""
    proc, b, left = _collect_on_small_disk(tmp_path, leave=0)
    assert b is None and left == []
    assert proc.returncode == 6 and proc.stderr.count("\n") == 1 and "No space left on device" in proc.stderr, \
        proc.stderr


def test_libpcap_missing_costs_only_the_capture(tmp_path, healthy_lab):
    """libpcap hidden (a private mount namespace binds /dev/null over it): the capture says why; the rest runs."""
    name = ctypes.util.find_library("pcap")  # e.g. libpcap.so.0.8, found through the ldconfig cache
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    lib = next((os.path.realpath(line.split("=>")[1].strip()) for line in listing.splitlines()
                if name and line.strip().startswith(name) and "=>" in line), "")
    assert os.path.exists(lib), "libpcap not found (make test installs it)"
    out = fresh(tmp_path)
    pod = healthy_lab.namespaces["pod"]
    script = (f"mount --bind /dev/null {lib} && exec {sys.executable} -m bundle collect --netns {pod} "
              f"--target {healthy_lab.targets[0]} --socket-samples 1 --nat-samples 1 -o {out}")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr
    b = read_bundle(out)
    runs = {s.slice: s for s in b.manifest.slices}
    assert runs["capture"].status.value == "failed" and "libpcap is not installed" in runs["capture"].reason
    assert all(runs[s].status.value == "complete" for s in ("route", "sockets", "dns", "nat"))


def test_netns_removed_mid_collect(tmp_path):
    """A pod deleted while we look: its link and netns go away mid-capture. The capture keeps what it had and
    says why; the vantage says its netns was removed, so later evidence is read as teardown."""
    a, b_ns = f"nbt-gone-{os.getpid() % 100000}", f"nbt-peer-{os.getpid() % 100000}"
    for ns in (a, b_ns):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", "nbtgone0", "netns", a, "type", "veth", "peer", "name", "nbtpeer0",
                        "netns", b_ns], check=True)
        for ns, dev, addr in ((a, "nbtgone0", "10.244.7.1/24"), (b_ns, "nbtpeer0", "10.244.7.2/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        folder = tmp_path / "out"
        folder.mkdir()

        def capturing() -> bool:
            """A packet socket is open in the pod's netns: the capture is running (not a guess by the clock)."""
            listing = subprocess.run(["ip", "netns", "exec", a, "cat", "/proc/net/packet"], capture_output=True,
                                     text=True).stdout
            return len(listing.splitlines()) > 1

        def remove() -> None:
            deadline = time.monotonic() + 30
            while not capturing() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            subprocess.run(["ip", "-n", b_ns, "link", "del", "nbtpeer0"], check=False)
            subprocess.run(["ip", "netns", "del", a], check=False)

        remover = threading.Thread(target=remove, daemon=True)
        remover.start()
        out = folder / "b.tar.zst"
        proc = _run(["collect", "--netns", a, "--target", "10.244.7.2:8080", "--capture-seconds", "4",
                     "-o", str(out)])
        remover.join()
    finally:
        for ns in (a, b_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr
    bundle = read_bundle(out)
    [v] = bundle.manifest.vantages
    assert v.entered and "was removed during the collection" in (v.lost or "")
    run = next(s for s in bundle.manifest.slices if s.slice == "capture")
    assert run.status.value == "partial" and "went down or away during the capture" in run.reason, run
    cap = bundle.capture(v.id)
    assert cap.stopped_by.value == "interface_gone" and cap.interface_error
    assert bundle.member(f"vantages/{v.id}/capture.pcapng") is not None  # what was captured before is kept
    assert "lost: " in netbundle("show", str(out)).stdout
