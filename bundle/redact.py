"""`netbundle redact`: a new, valid bundle in which IP addresses, MACs and hostnames are replaced consistently
everywhere — JSON documents, raw text outputs and captures — with one mapping the operator keeps.

Addresses map prefix-preserving (a keyed permutation bit by bit, as Crypto-PAn does, HMAC-SHA256 as the
function): two addresses that share a prefix still share one of the same length, so "same subnet" stays true;
the first octet (IPv4) or 16 bits (IPv6) are kept so private stays private. Loopback, link-local, unspecified,
multicast and the operator's --keep-cidr ranges stay as they are. The key is in the map file, never in the
output: the same map redacts two bundles the same way, so they still compare with `netbundle diff`.
Captures are rewritten packet by packet: addresses in Ethernet, ARP, IPv4/IPv6 headers (IPv4 checksum
recomputed; TCP, UDP and ICMPv6 checksums carried over the address change, so they stay right for the packet as
sent), everything after the transport header dropped (a later IPv4 fragment keeps its IP header only).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import struct
import tempfile
from enum import StrEnum
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from bundle.archive import StagedBundle, read_bundle
from bundle._files import write_private
from bundle.errors import UsageError
from bundle.models import FORMAT_VERSION, Manifest, MediaType, Provenance

# One pass over every address: an IPv6 candidate (hex digits, colons and dots with two colons at least: every
# IPv6 form — compressed, full, v4-mapped — bracketed or zone-suffixed around it) or an IPv4 address (a sentence's
# final dot is not part of it). Each candidate is parsed; what does not parse is left as it is.
_ADDRESS = re.compile(r"(?<![0-9A-Za-z:.])(?=[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:)[0-9A-Fa-f:.]{2,}(?![0-9A-Za-z:])"
                      r"|(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
def _enum_values() -> frozenset[str]:
    """Every value a document's enums take ("host", "link", "local", ...): a hostname equal to one is never
    written over such a value (the document would no longer validate, or say something else)."""
    import bundle.models as models

    return frozenset(str(v.value) for obj in vars(models).values() if isinstance(obj, type)
                     and issubclass(obj, StrEnum) for v in obj)


_ENUM_VALUES = _enum_values()
_MAC = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f:])")
_KEEP = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/32", "224.0.0.0/4",
                                           "255.255.255.255/32", "::1/128", "::/128", "fe80::/10", "ff00::/8")]


@dataclass
class Redactor:
    key: bytes
    keep: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    hostnames: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, keep_cidrs: list[str]) -> Redactor:
        keep = []
        for c in keep_cidrs:
            try:
                keep.append(ipaddress.ip_network(c, strict=False))
            except ValueError:
                raise UsageError(f"--keep-cidr {c!r}: not a CIDR") from None
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                r = cls(bytes.fromhex(data["key"]), keep, dict(data.get("hostnames", {})))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"--map {path}: not a redaction map ({exc})") from None
            return r
        return cls(secrets.token_bytes(32), keep)

    def save(self, path: Path) -> None:
        write_private(path, json.dumps({"key": self.key.hex(), "hostnames": self.hostnames,
                                        "seen": dict(sorted(self.seen.items()))}, indent=1).encode())

    def _bit(self, prefix: str) -> int:
        return hmac.new(self.key, prefix.encode(), hashlib.sha256).digest()[0] & 1

    def address(self, text: str) -> str:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return text
        if any(addr in n for n in _KEEP + self.keep if n.version == addr.version):
            return text
        done = self.seen.get(str(addr))
        if done is not None:
            return done
        bits = 32 if addr.version == 4 else 128
        kept = 8 if addr.version == 4 else 16
        value = int(addr)
        raw = format(value, f"0{bits}b")
        out = list(raw)
        for i in range(kept, bits):
            out[i] = str(int(raw[i]) ^ self._bit(f"{addr.version}:{raw[:i]}"))
        mapped = str(ipaddress.ip_address(int("".join(out), 2)))
        if any(ipaddress.ip_address(mapped) in n for n in _KEEP if n.version == addr.version):
            mapped = text  # would land in a special range: leave it (rare)
        self.seen[str(addr)] = mapped
        return mapped

    def mac(self, text: str) -> str:
        low = text.lower()
        if low in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
            return text
        done = self.seen.get(low)
        if done is None:
            digest = hmac.new(self.key, b"mac:" + low.encode(), hashlib.sha256).digest()
            done = "02:" + ":".join(f"{b:02x}" for b in digest[:5])
            self.seen[low] = done
        return done

    def hostname(self, name: str) -> None:
        if name and name not in self.hostnames and name not in ("localhost",):
            self.hostnames[name] = "host-" + hmac.new(self.key, b"host:" + name.encode(), hashlib.sha256).hexdigest()[:8]

    def text(self, text: str, hostnames: bool = True) -> str:
        """MACs, then addresses in one pass, then (unless told not to) hostnames as whole words."""
        text = _MAC.sub(lambda m: self.mac(m.group(0)), text)
        text = _ADDRESS.sub(self._address_match, text)
        if hostnames and self.hostnames:
            names = "|".join(re.escape(n) for n in sorted(self.hostnames, key=len, reverse=True))
            text = re.sub(rf"(?<![A-Za-z0-9_-])(?:{names})(?![A-Za-z0-9_-])",
                          lambda m: self.hostnames[m.group(0)], text)
        return text

    def json(self, value: Any) -> Any:
        """A JSON document's values through text(); its keys through addresses and MACs only — a hostname that is
        also a key ("dev", "node") must never rename a field."""
        if isinstance(value, dict):
            return {self.text(k, hostnames=False): self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, str):
            return self.text(value, hostnames=value not in _ENUM_VALUES)
        return value

    def _address_match(self, m: re.Match[str]) -> str:
        text = m.group(0)
        core = text.rstrip(".:") if ":" in text else text  # prose: "fd00::1." or "at fd00::1:"
        tail = text[len(core):]
        try:
            addr = ipaddress.ip_address(core)
        except ValueError:
            return text
        if addr.version == 6 and addr.ipv4_mapped is not None:  # keep it mapped, map the IPv4 inside
            return "::ffff:" + self.address(str(addr.ipv4_mapped)) + tail
        return self.address(core) + tail

    def packet(self, linktype: int, data: bytes) -> bytes:
        """One frame with its addresses mapped and everything after the transport header dropped."""
        buf = bytearray(data)
        off = 0
        if linktype == 1 and len(buf) >= 14:
            for at in (0, 6):
                buf[at:at + 6] = _mac_bytes(self.mac(_mac_text(buf[at:at + 6])))
            etype, off = struct.unpack_from("!H", buf, 12)[0], 14
            while etype in (0x8100, 0x88A8) and len(buf) >= off + 4:
                etype, off = struct.unpack_from("!H", buf, off + 2)[0], off + 4
        elif linktype == 113 and len(buf) >= 16:
            n = min(struct.unpack_from("!H", buf, 4)[0], 8)
            if n == 6:
                buf[6:12] = _mac_bytes(self.mac(_mac_text(buf[6:12])))
            etype, off = struct.unpack_from("!H", buf, 14)[0], 16
        elif linktype in (101, 12, 14, 228, 229) and buf:
            etype, off = (0x0800 if buf[0] >> 4 == 4 else 0x86DD), 0
        else:
            return b""  # a link type we cannot rewrite: its bytes are not kept
        if etype == 0x0806 and len(buf) >= off + 28:  # ARP: sender and target hardware and protocol addresses
            for at, size in ((off + 8, 6), (off + 14, 4), (off + 18, 6), (off + 24, 4)):
                if size == 6:
                    buf[at:at + 6] = _mac_bytes(self.mac(_mac_text(buf[at:at + 6])))
                else:
                    buf[at:at + 4] = ipaddress.ip_address(self.address(str(ipaddress.ip_address(bytes(buf[at:at + 4]))))).packed
            return bytes(buf[:off + 28])
        if etype == 0x0800 and len(buf) >= off + 20:
            ihl = (buf[off] & 0x0F) * 4
            old = bytes(buf[off + 12:off + 20])
            for at in (off + 12, off + 16):
                buf[at:at + 4] = ipaddress.ip_address(self.address(str(ipaddress.ip_address(bytes(buf[at:at + 4]))))).packed
            buf[off + 10:off + 12] = b"\0\0"
            buf[off + 10:off + 12] = struct.pack("!H", _checksum(bytes(buf[off:off + ihl])))
            if struct.unpack_from("!H", buf, off + 6)[0] & 0x1FFF:
                return bytes(buf[:off + ihl])  # a later fragment: what follows the header is payload
            _pseudo_checksum(buf, off + ihl, buf[off + 9], old, bytes(buf[off + 12:off + 20]))
            return bytes(buf[:off + ihl + _l4_len(buf, off + ihl, buf[off + 9])])
        if etype == 0x86DD and len(buf) >= off + 40:
            old = bytes(buf[off + 8:off + 40])
            for at in (off + 8, off + 24):
                buf[at:at + 16] = ipaddress.ip_address(self.address(str(ipaddress.ip_address(bytes(buf[at:at + 16]))))).packed
            _pseudo_checksum(buf, off + 40, buf[off + 6], old, bytes(buf[off + 8:off + 40]))
            return bytes(buf[:off + 40 + _l4_len(buf, off + 40, buf[off + 6])])
        return bytes(buf[:off])


def _mac_text(raw: bytes | bytearray) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _l4_len(buf: bytearray, at: int, proto: int) -> int:
    """The transport header's length (TCP data offset, UDP and ICMP 8): what a redacted packet keeps."""
    if proto == 6 and len(buf) >= at + 13:
        return max(20, (buf[at + 12] >> 4) * 4)
    return 8 if proto in (17, 1, 58) else 0


# Where the checksum sits in the transport headers whose checksum covers the IP addresses (pseudo-header).
_PSEUDO_CHECKSUM_AT = {6: 16, 17: 6, 58: 2}


def _pseudo_checksum(buf: bytearray, at: int, proto: int, old: bytes, new: bytes) -> None:
    """Carry the address change into the TCP/UDP/ICMPv6 checksum (RFC 1624 incremental update), so it stays
    right for the packet as sent: the payload it also covers is dropped, not changed."""
    where = _PSEUDO_CHECKSUM_AT.get(proto)
    if where is None or len(buf) < at + where + 2:
        return
    value = struct.unpack_from("!H", buf, at + where)[0]
    if proto == 17 and value == 0:
        return  # UDP over IPv4 without a checksum
    total = ~value & 0xFFFF
    for (m,), (m2,) in zip(struct.iter_unpack("!H", old), struct.iter_unpack("!H", new), strict=True):
        total += (~m & 0xFFFF) + m2
    value = ~_fold(total) & 0xFFFF
    struct.pack_into("!H", buf, at + where, 0xFFFF if proto == 17 and value == 0 else value)


def _fold(total: int) -> int:
    """A one's-complement sum folded to 16 bits."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _checksum(header: bytes) -> int:
    return int(~_fold(sum(struct.unpack(f"!{len(header) // 2}H", header[: len(header) // 2 * 2]))) & 0xFFFF)


def _capture(r: Redactor, data: bytes, description: str, bpf: str) -> bytes:
    """A capture rewritten packet by packet into pcapng (one interface per input interface)."""
    from bundle.pcap import open_capture, pcapng

    with tempfile.NamedTemporaryFile(suffix=".cap") as tmp:
        tmp.write(data)
        tmp.flush()
        reader = open_capture(Path(tmp.name))
        packets = list(reader)
        out = bytearray(pcapng.section_header())
        seen: dict[int, int] = {}
        for p in packets:
            if p.interface not in seen:
                iface = reader.interfaces[p.interface] if p.interface < len(reader.interfaces) else None
                seen[p.interface] = len(seen)
                out += pcapng.interface(p.linktype, iface.snaplen if iface else 262144,
                                        r.text(iface.name or "if") if iface else "if", r.text(description), r.text(bpf))
            out += pcapng.packet(seen[p.interface], p.ts_ns, r.packet(p.linktype, p.data), p.origlen)
        if not packets:
            out += pcapng.interface(1, 262144, "if", r.text(description), r.text(bpf))
        return bytes(out)


def redact_bundle(src: Path, out: Path, r: Redactor, overwrite: bool = False) -> Path:
    """Read (and verify) src, write the redacted copy to out; the map is the caller's to save."""
    with tempfile.TemporaryDirectory() as tmp:
        extracted = Path(tmp)
        bundle = read_bundle(src, extract_to=extracted)
        m = bundle.manifest
        r.hostname(m.host.hostname)
        kube = bundle.kube()
        if kube is not None:
            for n in kube.nodes:
                r.hostname(n.name)
            for p in kube.pods:
                if p.node:
                    r.hostname(p.node)
        staged = StagedBundle(parent=out.parent.resolve())
        try:
            captures = {path: doc for path, doc in bundle.documents.items() if path.endswith("/capture.json")}
            for member in m.members:
                path = member.path
                if path in bundle.documents:
                    doc = r.json(bundle.documents[path].model_dump(mode="json"))
                    data = type(bundle.documents[path]).model_validate_json(json.dumps(doc)).model_dump_json(
                        indent=1).encode()
                elif path in bundle.texts:
                    data = r.text(bundle.texts[path].decode(errors="replace")).encode()
                elif member.media_type in (MediaType.PCAPNG, "application/vnd.tcpdump.pcap"):
                    raw = _extracted(extracted, m.bundle_id, path)
                    run = captures.get(path.rsplit("/", 1)[0] + "/capture.json")
                    bpf = getattr(run, "filter", "") or ""
                    data = _capture(r, raw, path.split("/")[1] if path.startswith("vantages/") else "operator", bpf)
                else:
                    raw = _extracted(extracted, m.bundle_id, path)
                    data = r.text(raw.decode(errors="replace")).encode()
                prov = Provenance.model_validate_json(json.dumps(r.json(member.provenance.model_dump(mode="json"))))
                staged.add_bytes(path, data, member.media_type, prov)
            manifest = Manifest.model_validate_json(json.dumps(r.json(m.model_copy(update={"members": []}).model_dump(
                mode="json"))))
            manifest.members = list(staged.members.values())
            with open(src, "rb") as fh:  # the copy names its original exactly (what a signature would cover)
                manifest.redacted_from = hashlib.file_digest(fh, "sha256").hexdigest()
            manifest.format_version = FORMAT_VERSION  # written, sealed and validated by this netbundle
            return staged.write(manifest, out, overwrite=overwrite)
        finally:
            staged.cleanup()


def _extracted(folder: Path, bundle_id: str, path: str) -> bytes:
    for candidate in (folder / bundle_id / path, folder / path):
        if candidate.is_file():
            return candidate.read_bytes()
    return b""


def redact_set(src: Path, out: Path, r: Redactor, overwrite: bool = False) -> Path:
    """An incident set with one map across all its nodes: each node bundle redacted as any bundle is (so two
    nodes' addresses stay comparable), the node names (host names too) and set.json's text mapped; each node's
    SHA-256 is that of its redacted bundle, and what the node said it wrote is dropped (it named the original)."""
    import tempfile

    from bundle.archive.incidentset import read_set, write_set
    from bundle.models.incidentset import SetManifest

    st = read_set(src)
    for n in st.manifest.nodes:
        r.hostname(n.node)
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".netbundle-redact-set-", dir=out.resolve().parent) as tmp:
        nodes = []
        for i, n in enumerate(st.manifest.nodes):
            node = n.model_copy(update={"node": r.text(n.node), "detail": r.text(n.detail), "remote_sha256": None})
            if n.member and n.node in st.bundles:
                original = Path(tmp) / f"in-{i}.tar.zst"
                _extract_member(src, n.member, original)
                redacted = redact_bundle(original, Path(tmp) / f"node-{i}.tar.zst", r)
                member = f"nodes/node-{i}.tar.zst"
                node = node.model_copy(update={"member": member, "sha256": _sha256_file(redacted),
                                               "bundle_id": r.text(n.bundle_id or "") or None})
                files[member] = redacted
            nodes.append(node)
        m = st.manifest
        manifest = SetManifest.model_validate({**m.model_dump(), "user": r.text(m.user),
                                               "argv": [r.text(a) for a in m.argv], "nodes": [x.model_dump() for x in nodes]})
        return write_set(manifest, files, out, overwrite=overwrite)


def _extract_member(src: Path, member: str, to: Path) -> None:
    import tarfile

    import pyzstd

    with pyzstd.ZstdFile(src) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
        for info in tar:
            if info.name == member:
                to.write_bytes(tar.extractfile(info).read())  # type: ignore[union-attr]
                return
    raise FileNotFoundError(member)


def _sha256_file(path: Path) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
