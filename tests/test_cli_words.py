"""What a new user meets first (issue 16): help pages that say what each command and argument is, errors that
name the bad option or file, conflicts refused before anything runs, `lab list` that sees every lab, and a
`show` that speaks words."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from bundle.analyze.nat import _rules_of
from bundle.lab import scenarios
from bundle.models import DataplaneEndpoint, ServiceEntry
from tests.conftest import fresh, netbundle

COMMANDS = ["collect", "validate", "verify", "show", "analyze", "summary", "diff", "redact", "render", "lab"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_says_what_it_does(command):
    out = netbundle(command, "--help", check=True).stdout
    description = out.split("\n\n")[1]
    assert description.strip() and not description.startswith(("positional", "options")), out
    # every positional and option line carries words (argparse prints a lone name when help is missing)
    body = out.split("\n\n", 2)[2]
    bare = [line for line in body.splitlines() if re.fullmatch(r"\s{2}\S+", line)]
    assert bare == [], bare


def test_choices_are_listed():
    page = " ".join(netbundle("collect", "--help", check=True).stdout.split())
    assert "route, sockets, dns, nat, capture, counters" in page
    page = " ".join(netbundle("lab", "up", "--help", check=True).stdout.split())
    assert all(name.split("-")[0] in page for name in scenarios.SCENARIOS)
    assert "stale-dns-record" in page and "conntrack-full" in page


def test_a_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.tar.zst"
    proc = netbundle("show", str(missing))
    assert proc.returncode == 2 and f"argument bundle: no such file: {missing}" in proc.stderr
    proc = netbundle("diff", str(missing), str(missing))
    assert proc.returncode == 2 and "argument failing" in proc.stderr
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(b"not a bundle")
    other = tmp_path / "other.tar.zst"
    other.write_bytes(b"\x28\xb5\x2f\xfdnot a bundle")
    proc = netbundle("diff", str(bad), str(other))
    assert proc.returncode == 3 and f"failing {bad}:" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("argv, words", [
    (["--route-from", "notanip"], "--route-from 'notanip': not an IP address"),
    (["--dns-server", "nope"], "--dns-server 'nope': not an IP address"),
    (["--slice", "route", "--capture-filter", "tcp"], "--capture-filter needs the capture slice"),
    (["--slice", "route", "--capture-seconds", "3"], "--capture-seconds needs the capture slice"),
    (["--passive", "--name", "example.com"], "--passive sends nothing"),
    (["--slice", "nope"], "invalid choice: 'nope'"),
])
def test_bad_options_are_named_before_collecting(tmp_path, argv, words):
    out = fresh(tmp_path)
    proc = netbundle("collect", *argv, "-o", str(out))
    assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists()


@pytest.mark.privileged
def test_capture_iface_is_checked_in_every_vantage_first(tmp_path):
    ns = f"nbt-iface-{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = fresh(tmp_path)
        started = time.monotonic()
        proc = netbundle("collect", "--netns", ns, "--capture-iface", "doesnotexist0", "-o", str(out))
        assert proc.returncode == 2 and f"--capture-iface doesnotexist0: no such interface in {ns}" in proc.stderr
        assert not out.exists() and time.monotonic() - started < 10
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.privileged
def test_lab_list_sees_every_prefix(tmp_path):
    prefix = f"nbt-list{os.getpid() % 100000}"
    try:
        netbundle("lab", "up", "stale-neighbor", "--prefix", prefix, check=True, timeout=60)
        listed = netbundle("lab", "list", check=True).stdout
        assert re.search(rf"^stale-neighbor\s+up under {prefix}: ", listed, flags=re.M), listed
        columns = {len(re.match(r"\S+\s+", line).group(0)) for line in listed.splitlines()}  # type: ignore[union-attr]
        assert len(columns) == 1, listed  # aligned
        only = netbundle("lab", "list", "--prefix", prefix, check=True).stdout.splitlines()
        assert len(only) == 1 and only[0].startswith("stale-neighbor")
    finally:
        netbundle("lab", "down", "stale-neighbor", "--prefix", prefix, timeout=60)


@pytest.mark.privileged
def test_show_speaks_words(tmp_path, mtu_lab):
    out = fresh(tmp_path)
    proc = netbundle(*mtu_lab.collect_argv()[1:], "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    shown = netbundle("show", str(out), check=True).stdout
    assert "None" not in shown and "all_pass" not in shown and "other_slices_done" not in shown
    assert "found a narrower path, path MTU 1400 (largest DF payload passing 1372, smallest failing 1373)" in shown
    summary = netbundle("summary", str(out), check=True).stdout
    assert "| dns | n/a |" in summary  # the DNS slice ran; an IP target has no name: not "not collected"


def test_next_command_fits_the_datapath():
    ep = DataplaneEndpoint(address="10.244.1.3", port=8080, share=1.0,
                           chain="endpoint-X-default/p/tcp/https__10.244.1.3/8080")
    entry = ServiceEntry(service="default/p:https", kind="cluster IP", protocol="tcp", address="10.96.0.20",
                         port=443, endpoints=[ep], source="nft")
    assert _rules_of(entry, "nftables") == "nft list chain ip kube-proxy endpoint-X-default/p/tcp/https__10.244.1.3/8080"
    assert _rules_of(entry, "ipvs") == "ipvsadm -Ln -t 10.96.0.20:443"
    assert _rules_of(entry, "iptables").startswith("iptables-save -t nat | grep -F ")
