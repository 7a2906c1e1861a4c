"""`netbundle redact`: no original address, MAC or hostname left anywhere in the output (pcapng included),
the output valid and readable by tshark, the findings unchanged, and one map keeps two bundles comparable."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import tarfile

import pyzstd
import pytest

from bundle.pcap import open_capture
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged
_SPECIAL = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/32", "224.0.0.0/4",
                                              "255.255.255.255/32", "::1/128", "::/128", "fe80::/10", "ff00::/8")]


def _members(path) -> dict[str, bytes]:
    out = {}
    with pyzstd.ZstdFile(path) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
        for info in tar:
            out[info.name.split("/", 1)[1]] = tar.extractfile(info).read()
    return out


def _originals(members: dict[str, bytes], tmp_path) -> set[bytes]:
    """Every non-special IP address and MAC in the input, as text and as packed bytes, found independently of
    the redactor: by regex in every member and by walking every capture's packets."""
    found: set[str] = set()
    for path, data in members.items():
        text = data.decode(errors="replace")
        found |= set(re.findall(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])", text))
        found |= {m.lower() for m in re.findall(r"(?<![0-9a-fA-F:])(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}(?![0-9a-fA-F:])", text)}
        if path.endswith(".pcapng"):
            cap = tmp_path / "in.pcapng"
            cap.write_bytes(data)
            for p in open_capture(cap):
                if p.linktype == 1 and len(p.data) >= 34 and p.data[12:14] == b"\x08\x00":
                    found |= {":".join(f"{b:02x}" for b in p.data[i:i + 6]) for i in (0, 6)}
                    found |= {str(ipaddress.ip_address(p.data[i:i + 4])) for i in (26, 30)}
    needles = set()
    for value in found:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            if value not in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
                needles |= {value.encode(), bytes(int(x, 16) for x in value.split(":"))}
            continue
        if not any(addr in n for n in _SPECIAL if n.version == addr.version):
            needles |= {value.encode(), addr.packed}
    return needles


def test_redacted_bundle_keeps_nothing_and_means_the_same(lab, tmp_path):
    info = lab("stale-dnat")
    original = tmp_path / "in.tar.zst"
    netbundle(*info.collect_argv()[1:], "-o", str(original))
    red = tmp_path / "out.tar.zst"
    mapping = tmp_path / "map.json"
    netbundle("redact", str(original), "-o", str(red), "--map", str(mapping), check=True)
    assert netbundle("validate", str(red)).returncode == 0
    before, after = _members(original), _members(red)
    assert set(before) == set(after)
    needles = _originals(before, tmp_path)
    hostname = json.loads(before["manifest.json"])["host"]["hostname"].encode()
    assert needles and hostname
    leaks = [(path, n) for path, data in after.items() for n in needles | {hostname} if n in data]
    assert leaks == []
    pcap = tmp_path / "red.pcapng"
    pcap.write_bytes(next(d for p, d in after.items() if p.endswith(".pcapng")))
    proc = subprocess.run(["tshark", "-r", str(pcap)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "appears to be damaged" not in proc.stderr
    ids = lambda path: sorted(f["id"] for f in json.loads(netbundle("analyze", "--json", str(path), check=True).stdout)["findings"])  # noqa: E731
    assert ids(red) == ids(original)
    assert "key" in json.loads(mapping.read_text()) and mapping.read_bytes() not in b"".join(after.values())
    import hashlib

    # the copy names its original exactly (issue 16): the SHA-256 a signature over the original covers
    assert json.loads(after["manifest.json"])["redacted_from"] == hashlib.sha256(original.read_bytes()).hexdigest()


def test_one_map_keeps_two_bundles_comparable(lab, tmp_path):
    a, b = tmp_path / "a.tar.zst", tmp_path / "b.tar.zst"
    for out, name in ((a, "stale-dnat"), (b, "service-nft")):
        info = lab(name)
        netbundle(*info.collect_argv()[1:], "--slice", "nat", "--slice", "route", "-o", str(out))
    mapping = tmp_path / "map.json"
    ra, rb = tmp_path / "ra.tar.zst", tmp_path / "rb.tar.zst"
    netbundle("redact", str(a), "-o", str(ra), "--map", str(mapping), check=True)
    netbundle("redact", str(b), "-o", str(rb), "--map", str(mapping), check=True)
    plain = json.loads(netbundle("diff", str(a), str(b), "--format", "json", check=True).stdout)["leads"]
    redacted = json.loads(netbundle("diff", str(ra), str(rb), "--format", "json", check=True).stdout)["leads"]
    from bundle.redact import Redactor

    r = Redactor.load(mapping, [])
    mapped = [{k: (r.text(v) if isinstance(v, str) else v) for k, v in d.items() if k != "pair"} for d in plain]
    assert [{k: v for k, v in d.items() if k != "pair"} for d in redacted] == mapped


def test_mapping_is_prefix_preserving_keyed_and_keeps_what_it_must():
    from bundle.redact import Redactor

    r = Redactor(key=bytes(range(32)), keep=[ipaddress.ip_network("10.96.0.0/16")])
    a, b, c = (ipaddress.ip_address(r.address(x)) for x in ("10.244.1.2", "10.244.1.3", "10.244.2.9"))
    assert len({a, b, c}) == 3 and str(a) != "10.244.1.2"
    # a shared prefix stays shared, to the bit: same /24 for .1.2 and .1.3, same /16 (not /24) with .2.9
    assert int(a) >> 8 == int(b) >> 8 and int(a) >> 16 == int(c) >> 16 and int(a) >> 8 != int(c) >> 8
    assert str(a).startswith("10.")  # the first octet is kept: private stays private
    assert r.address("10.96.0.20") == "10.96.0.20"  # --keep-cidr
    for special in ("127.0.0.1", "169.254.20.10", "fe80::1", "::1", "0.0.0.0", "224.0.0.22"):
        assert r.address(special) == special
    v6 = r.address("fd00:10:244::5")
    assert v6 != "fd00:10:244::5" and v6.startswith("fd00:")
    assert Redactor(key=bytes(range(32))).address("10.244.1.2") == str(a)  # the key decides, not the run
    assert Redactor(key=bytes(32)).address("10.244.1.2") != str(a)
    mac = r.mac("6a:1f:00:ab:cd:ef")
    assert mac.startswith("02:") and r.mac("6A:1F:00:AB:CD:EF") == mac and r.mac("ff:ff:ff:ff:ff:ff") == "ff:ff:ff:ff:ff:ff"
    r.hostname("node-a.example")
    assert r.text("node-a.example 10.244.1.2 6a:1f:00:ab:cd:ef v1.8.9") == \
        f"{r.hostnames['node-a.example']} {a} {mac} v1.8.9"


def _v6_forms(addr: ipaddress.IPv6Address) -> set[bytes]:
    """Every way an IPv6 address can be written, independently of the redactor: compressed, full, upper case,
    bracketed with a port, zone-suffixed; and packed, as the packets carry it."""
    texts = {addr.compressed, addr.exploded, addr.compressed.upper(), f"[{addr.compressed}]:", f"{addr.compressed}%"}
    return {t.encode() for t in texts} | {addr.packed}


@pytest.fixture(scope="module")
def v6_pair(tmp_path_factory):
    """client and server netns joined by a veth, IPv6 only (fd00:10:244:1::/64), a listener on [::]:8080."""
    import os

    from bundle.lab.topology import Topology

    with Topology(f"nbt-red6-{os.getpid() % 100000}") as t:
        t.add_netns("client")
        t.add_netns("server")
        t.veth("client", "eth0", "server", "eth0")
        for role in ("client", "server"):
            t.sysctl(role, "net.ipv6.conf.eth0.accept_dad", "0")
        t.address("client", "eth0", "fd00:10:244:1::2/64")
        t.address("server", "eth0", "fd00:10:244:1::1234/64")
        t.python("server", "bundle.lab.listener", "--bind", "::", "--port", "8080", "--send", "16")
        t.wait_listening("server", 8080)
        out = tmp_path_factory.mktemp("red6") / "in.tar.zst"
        proc = netbundle("collect", "--netns", t.namespaces["client"], "--netns", t.namespaces["server"],
                         "--target", "[fd00:10:244:1::1234]:8080", "-o", str(out))
        assert proc.returncode in (0, 5), proc.stderr
        yield out


def test_no_ipv6_form_survives(v6_pair, tmp_path):
    original = v6_pair
    from bundle.archive import read_bundle

    b = read_bundle(original)
    addresses = {ipaddress.ip_address(a.address) for v in b.manifest.vantages if b.route(v.id)
                 for a in b.route(v.id).addresses} | {ipaddress.ip_address("fd00:10:244:1::1234")}
    v6 = {a for a in addresses if a.version == 6 and not any(a in n for n in _SPECIAL if n.version == 6)}
    assert {ipaddress.ip_address("fd00:10:244:1::2"), ipaddress.ip_address("fd00:10:244:1::1234")} <= v6
    needles = set().union(*(_v6_forms(a) for a in v6))
    before = _members(original)
    assert any(n in data for n in needles for data in before.values())  # the forms are really there
    red = tmp_path / "out.tar.zst"
    netbundle("redact", str(original), "-o", str(red), check=True)
    assert netbundle("validate", str(red)).returncode == 0
    after = _members(red)
    leaks = sorted({(path, n) for path, data in after.items() for n in needles if n in data})
    assert leaks == []
    ids = lambda path: sorted(f["id"] for f in json.loads(netbundle("analyze", "--json", str(path), check=True).stdout)["findings"])  # noqa: E731
    assert ids(red) == ids(original)


def test_a_hostname_that_is_a_key_or_a_word_corrupts_nothing(v6_pair, tmp_path):
    """A host named like a field ("dev"), a value ("link", "host") or a word ("default"): the copy validates,
    every field keeps its name, enum values keep theirs."""
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"key": "00" * 32, "hostnames": {n: f"host-{i:08x}" for i, n in
                                                                   enumerate(("dev", "link", "host", "default"))}}))
    red = tmp_path / "out.tar.zst"
    netbundle("redact", str(v6_pair), "-o", str(red), "--map", str(mapping), check=True)
    assert netbundle("validate", str(red)).returncode == 0
    members = _members(red)
    route = next(json.loads(d) for p, d in members.items() if p.endswith("route.json"))
    assert all("dev" in lk for lk in route["lookups"]) and route["addresses"][0]["scope"] in ("link", "global", "host")
