"""Say what you could not see: with a capability dropped, the bundle is written and says why."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import fresh

from bundle._netns import effective_caps
from bundle.archive import read_bundle
from bundle.models import MissingReason

pytestmark = pytest.mark.privileged


def _collect_without(cap: str, out, lab) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--bounding-set=-{cap}", sys.executable, "-m", "bundle", "collect", "--target",
         lab.targets[0], "--netns", lab.namespaces["pod"], "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )


def test_without_net_raw_probes_are_not_permitted(tmp_path, mtu_lab):
    out = fresh(tmp_path)
    proc = _collect_without("net_raw", out, mtu_lab)
    assert proc.returncode == 5, proc.stderr
    b = read_bundle(out)
    [v] = b.manifest.vantages
    assert v.entered and v.privileges and "CAP_NET_RAW" not in v.privileges.capabilities
    run = next(s for s in b.manifest.slices if s.slice == "route")
    assert run.status.value == "partial" and "not permitted" in (run.reason or "")
    doc = b.route(v.id)
    assert doc and doc.links and doc.lookups[0].ok  # the passive evidence is all there
    assert doc.pings[0].unavailable and doc.pings[0].unavailable.unavailable is MissingReason.NOT_PERMITTED
    show = subprocess.run([sys.executable, "-m", "bundle", "show", str(out)], capture_output=True, text=True).stdout
    assert "without CAP_NET_RAW" in show


def test_without_sys_admin_the_netns_cannot_be_entered(tmp_path, mtu_lab):
    out = fresh(tmp_path)
    proc = _collect_without("sys_admin", out, mtu_lab)
    assert proc.returncode == 5, proc.stderr
    b = read_bundle(out)
    [v] = b.manifest.vantages
    assert not v.entered and "Operation not permitted" in (v.error or "")
    assert {s.status.value for s in b.manifest.slices} == {"failed"}
    assert b.route(v.id) is None


def test_json_outcome(tmp_path, mtu_lab):
    out = fresh(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "bundle", "collect", "--passive", "--json", "--netns",
                           mtu_lab.namespaces["node"], "-o", str(out)], capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    assert doc["bundle"] == str(out) and doc["exit_code"] == 0
    assert {s["slice"]: s["status"] for s in doc["slices"]} == {"route": "complete", "sockets": "complete",
                                                                 "dns": "complete", "nat": "complete",
                                                                 "capture": "skipped", "counters": "complete"}
    capture = next(s for s in doc["slices"] if s["slice"] == "capture")
    assert "no target" in capture["reason"]  # nothing to filter on: not captured, and it says so


def _bounding_set() -> list[str]:
    """The capabilities this test process may drop: its bounding set, by name."""
    names = [name.removeprefix("CAP_").lower() for name in effective_caps("CapBnd")[1]]
    return [n for n in names if not n.isdigit()]  # a bit newer than our name table has no name setpriv knows


# What losing a capability costs, where it costs anything: (slice, status, a fragment of its reason).
CAP_EFFECTS = {
    "net_admin": ("nat", "partial", "conntrack table"),
    "net_raw": ("capture", "skipped", "CAP_NET_RAW"),
    "sys_admin": ("route", "failed", "cannot enter netns"),
    "sys_ptrace": ("sockets", "complete", "owners hidden"),
}


@pytest.mark.parametrize("cap", _bounding_set())
def test_each_capability_dropped(tmp_path, healthy_lab, cap):
    """Every capability of the bounding set dropped in turn: the bundle is written and valid, each vantage
    records that it ran without it, and the slices it costs say so; without a known use, nothing is lost."""
    out = fresh(tmp_path)
    server, pod = healthy_lab.namespaces["server"], healthy_lab.namespaces["pod"]
    proc = subprocess.run(
        ["setpriv", f"--bounding-set=-{cap}", sys.executable, "-m", "bundle", "collect", "--target",
         healthy_lab.targets[0], "--netns", pod, "--netns", server, "--socket-samples", "1", "--nat-samples", "1",
         "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 5), proc.stderr
    b = read_bundle(out)
    name = f"CAP_{cap.upper()}"
    for v in b.manifest.vantages:
        assert v.entered is False or name not in v.privileges.capabilities, v
    assert all(s.reason for s in b.manifest.slices if s.status.value != "complete")
    assert b.findings() is not None
    if cap not in CAP_EFFECTS:
        assert proc.returncode == 0, [(s.vantage, s.slice, s.reason) for s in b.manifest.slices]
        return
    slice_name, status, fragment = CAP_EFFECTS[cap]
    run = next(s for s in b.manifest.slices if s.slice == slice_name and s.vantage == f"netns-{server}")
    assert run.status.value == status and fragment in (run.reason or ""), run
    if cap == "sys_ptrace":
        [listener] = [lst for lst in b.sockets(f"netns-{server}").listeners if lst.lport == 8080]
        assert listener.owners == [] and listener.owner_unknown.unavailable.value == "not_permitted"
