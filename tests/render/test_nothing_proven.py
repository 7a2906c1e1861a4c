"""Bundles where nothing was proven never read as all clear: every slice failed (a typo in --netns), an
interrupted collect, and a name that does not resolve as the only target (a client that cannot learn the address
it must dial has a failing DNS layer). Through `summary` (all three formats) and the appendix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from tests.conftest import netbundle, sigint_default

pytestmark = pytest.mark.privileged
ALL_CLEAR = "No layer fails"


def _outputs(out: Path, tmp_path: Path) -> tuple[str, str, dict[str, object], str]:
    md = netbundle("summary", str(out), check=True).stdout
    text = netbundle("summary", str(out), "--format", "text", check=True).stdout
    js = json.loads(netbundle("summary", str(out), "--format", "json", check=True).stdout)
    page = tmp_path / "a.html"
    netbundle("render", str(out), "-o", str(page), check=True)
    return md, text, js, page.read_text()


def test_every_slice_failed(tmp_path):
    out = tmp_path / "typo.tar.zst"
    proc = netbundle("collect", "--netns", f"nbt-no-such-netns-{os.getpid()}", "--target", "10.244.0.2:8080",
                     "-o", str(out))
    assert proc.returncode == 5, proc.stderr
    md, text, js, html = _outputs(out, tmp_path)
    for shown in (md, text, html):
        assert ALL_CLEAR not in shown
    assert "Nothing was proven" in text and "nothing proven" in text and "nothing proven" in html
    assert all(not lad["proven"] and lad["owner"] is None for lad in js["ladders"])  # type: ignore[index,union-attr]


def test_interrupted_collect(tmp_path, mtu_lab):
    out = tmp_path / "int.tar.zst"
    proc = subprocess.Popen([sys.executable, "-m", "bundle", "collect", "--netns", mtu_lab.namespaces["node"],
                             "--target", "10.244.0.2:8080", "--capture-seconds", "30", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    time.sleep(1.5)  # the slices are under way (they take ~3 s; the capture would run 30)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    b = read_bundle(out)
    assert b.manifest.invocation.exit_code == 130 and b.findings() is None  # no analysis of a cut collection
    md, text, js, html = _outputs(out, tmp_path)
    for shown in (md, text, html):
        assert ALL_CLEAR not in shown
    assert "interrupted" in text and "interrupted" in html


def test_unresolvable_name_is_a_failing_dns_layer(tmp_path, lab):
    info = lab("dns-ndots")
    out = tmp_path / "nx.tar.zst"
    proc = netbundle("collect", "--netns", info.namespaces["pod"], "--target", "doesnotexist:8080", "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    md, text, js, html = _outputs(out, tmp_path)
    for shown in (md, text, html):
        assert ALL_CLEAR not in shown
    [lad] = js["ladders"]  # type: ignore[misc]
    assert lad["owner"] == "dns" and lad["layers"][2]["verdict"] == "fail"
    assert js["findings"][lad["cause"]]["id"] == "dns.nxdomain"  # type: ignore[index]
    assert "owner dns (dns.nxdomain" in text
