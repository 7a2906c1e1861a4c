"""Names from the system under diagnosis are data: a netns and interfaces named with shell and HTML syntax
never run, never shape a member path, and reach the page escaped and the suggested commands quoted."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from bundle.archive import read_bundle
from tests.conftest import fresh, netbundle

pytestmark = pytest.mark.privileged

NETNS = "nbt-$(touch pwned)"
IFACE = "v;$(id>pwn)"  # no space, under 16 characters: an interface name may hold all of these
PEER = "<b>x&'"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture
def hostile_netns():
    _ip("netns", "add", NETNS)
    try:
        _ip("-n", NETNS, "link", "add", IFACE, "type", "veth", "peer", "name", PEER)
        for dev in (IFACE, PEER, "lo"):
            _ip("-n", NETNS, "link", "set", dev, "up")
        _ip("-n", NETNS, "addr", "add", "10.244.9.1/24", "dev", IFACE)
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def test_hostile_names_stay_data(tmp_path, hostile_netns):
    out = fresh(tmp_path)
    # every command runs in tmp_path: a name that ran as shell would leave "pwned" or "pwn" there
    run = netbundle("collect", "--netns", hostile_netns, "--target", "10.244.9.77:80", "-o", str(out), cwd=tmp_path)
    assert run.returncode in (0, 5), run.stderr
    b = read_bundle(out)
    # member paths are made of safe characters only
    assert all(re.fullmatch(r"[A-Za-z0-9._/-]+", m.path) for m in b.manifest.members), \
        [m.path for m in b.manifest.members]
    [v] = b.manifest.vantages
    assert v.ref == NETNS and {link.name for link in b.route(v.id).links} >= {IFACE, PEER}
    # every suggested command keeps each hostile name as one literal word
    report = json.loads(netbundle("analyze", "--json", str(out), check=True, cwd=tmp_path).stdout)
    commands = [f["next_command"] for f in report["findings"] if f.get("next_command")]
    assert commands
    for command in commands:
        words = shlex.split(command)
        assert all(w in (NETNS, IFACE, PEER) for w in words if "$(" in w or "<" in w), command
    # the page escapes them; text outputs print them without running anything
    page = tmp_path / "b.html"
    netbundle("render", str(out), "-o", str(page), check=True, cwd=tmp_path)
    html = page.read_text()
    assert PEER not in html and "&lt;b&gt;x&amp;" in html
    for fmt in ("md", "text", "json"):
        netbundle("summary", str(out), "--format", fmt, check=True, cwd=tmp_path)
    netbundle("show", str(out), check=True, cwd=tmp_path)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwn").exists()
