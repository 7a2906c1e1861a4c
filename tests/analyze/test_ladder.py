"""The ladder on every lab scenario from a fresh collect: the right owner layer and finding for the target at
fault; the healthy lab all-pass. findings.json, written at collect time, equals `netbundle analyze`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.lab import scenarios
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged

# scenario -> (ladder row, owner layer, a finding the owner layer must cite)
EXPECTED = {
    "mtu": ("10.244.0.2:8080", "route", "mtu.blackhole"),
    "no-listener": ("10.244.1.3:8080", "transport", "transport.refused"),
    "syn-drop": ("10.244.1.3:8080", "transport", "transport.connect_timeout"),
    "loopback-listener": ("10.244.1.3:8080", "transport", "transport.loopback_only"),
    "dns-ndots": ("doesnotexist", "dns", "dns.search_amplification"),
    "dns-drop": ("payments", "dns", "dns.timeout"),
    "stale-dnat": ("10.96.0.20:443", "service", "service.stale_dnat"),
    "stale-neighbor": ("10.244.0.2:8080", "route", "neighbor.stale_mac"),
}


def _collect(tmp_path: Path, info) -> Path:
    out = tmp_path / f"{info.scenario}.tar.zst"
    proc = netbundle(*info.collect_argv()[1:], "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    return out


def _check_report(out: Path):
    b = read_bundle(out)
    stored = b.findings()
    assert stored is not None, "findings.json is written at collect time"
    recomputed = json.loads(netbundle("analyze", "--json", str(out), check=True).stdout)
    assert recomputed == json.loads(stored.model_dump_json())  # the same result, recomputed
    return stored


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_scenario_owner(lab, tmp_path, scenario):
    row, layer, finding = EXPECTED[scenario]
    out = _collect(tmp_path, lab(scenario))
    report = _check_report(out)
    ladder = {lad.target: lad for lad in report.ladders}[row]
    assert ladder.owner == layer, [(lv.layer, lv.verdict.value, lv.finding_ids) for lv in ladder.layers]
    owner = next(lv for lv in ladder.layers if lv.layer == layer)
    assert finding in owner.finding_ids and owner.evidence
    before = [lv for lv in ladder.layers][: [lv.layer for lv in ladder.layers].index(layer)]
    # an earlier layer may fail only as the owner's symptom (a ClusterIP that hangs because of its DNAT)
    assert all(lv.verdict.value != "fail" or any("symptom" in r for r in lv.reasons) for lv in before)
    assert report.summary and len(report.summary) <= 5 and report.proof
    info = lab(scenario)
    if scenario == "syn-drop":  # the host path fine, the pod path not: the pod's own path is named
        pod, node = f"netns-{info.namespaces['pod']}", f"netns-{info.namespaces['node']}"
        assert any(r.startswith(f"fails from {pod} but works from {node}") for r in owner.reasons), owner.reasons
    elif scenario in ("no-listener", "loopback-listener"):  # refused from everywhere: no path to blame
        assert not any(r.startswith("fails from ") for r in owner.reasons), owner.reasons
    elif scenario == "stale-neighbor":  # the pod has a route but times out too; the remote is the target itself:
        assert not any(r.startswith("fails from ") for r in owner.reasons), owner.reasons  # neither vouches
        [stale] = [f for f in report.findings if f.id == "neighbor.stale_mac"]
        assert stale.vantage == f"netns-{info.namespaces['node']}" and scenarios.STALE_MAC in stale.summary
        assert [e.member for e in stale.evidence] == [f"vantages/netns-{info.namespaces[r]}/route.json"
                                                     for r in ("node", "remote")]
    _browse(out, tmp_path, scenario)


ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "screenshots"


def _browse(out: Path, tmp_path: Path, scenario: str) -> None:
    """The scenario's appendix in headless Chromium: no console message, no request; the top kept as a PNG."""
    import shutil

    from tests.render.test_html import browser_requests

    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (make test installs it)")
    page = tmp_path / f"{scenario}.html"
    netbundle("render", str(out), "-o", str(page), check=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{scenario}.png"
    shot.unlink(missing_ok=True)
    console: list[str] = []
    assert browser_requests(page, tmp_path, screenshot=shot, console=console) == []
    assert console == []
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_conntrack_full_owner(tmp_path):
    """Its own lab: it lowers the machine-wide nf_conntrack_max (put back on teardown)."""
    with scenarios.running("conntrack-full", f"nbt-ladcf-{os.getpid() % 100000}") as info:
        out = _collect(tmp_path, info)
    report = _check_report(out)
    _browse(out, tmp_path, "conntrack-full")
    [ladder] = [lad for lad in report.ladders if lad.target == "10.244.0.2:9090"]
    assert ladder.owner == "service"
    service = ladder.layers[3]
    assert {"service.conntrack_near_max", "service.conntrack_dropping"} & set(service.finding_ids)


def test_healthy_is_all_pass(healthy_lab, tmp_path):
    out = _collect(tmp_path, healthy_lab)
    report = _check_report(out)
    _browse(out, tmp_path, "healthy")
    assert report.ladders
    for lad in report.ladders:
        assert lad.owner is None
        assert {lv.verdict.value for lv in lad.layers} <= {"pass", "not collected"}, lad
        assert [lv.verdict.value for lv in lad.layers[:2]] == ["pass", "pass"]
    assert "No layer fails" in report.summary[1]


def test_summary_formats(healthy_lab, tmp_path):
    out = _collect(tmp_path, healthy_lab)
    md = netbundle("summary", str(out), check=True).stdout
    text = netbundle("summary", str(out), "--format", "text", check=True).stdout
    js = json.loads(netbundle("summary", str(out), "--format", "json", check=True).stdout)
    import hashlib
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert sha in md and sha in text and js["sha256"] == sha and js["bundle"] == out.name
    assert "| route | pass |" in md and js["ladders"]
