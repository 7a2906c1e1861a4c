"""Stream packets out of a pcap or pcapng file, bounded, never raising on bad input.

dpkt.pcap.Reader refuses pcapng and dpkt decodes more than we need, so the file formats are walked here
with `struct` (formats: https://www.tcpdump.org/manpages/pcap-savefile.5.html and the pcapng draft,
https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-01.html). Whatever is wrong with a file is
recorded as a Problem with its byte offset, and reading stops there: the packets before it still count.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

MAX_RECORD = 256 * 1024  # larger than any snaplen in use (262144 is libpcap's maximum)
MAX_BLOCK = 16 * 1024 * 1024
_CHUNK = 1 << 20

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),  # microseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1),  # nanoseconds
}
_PCAPNG_SHB = 0x0A0D0D0A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D


class Packet(NamedTuple):
    """A tuple: built once per packet, so it must be cheap (a frozen dataclass costs ~3x more)."""

    ts_ns: int
    linktype: int
    caplen: int
    origlen: int
    data: bytes
    interface: int = 0


@dataclass(frozen=True)
class Problem:
    offset: int
    message: str


@dataclass
class Interface:
    linktype: int
    snaplen: int
    ts_unit_ns: float = 1000.0  # default resolution: microseconds
    name: str | None = None


@dataclass
class CaptureReader:
    """Iterate to get packets; afterwards `problems`, `packets` and `end_offset` say how reading went."""

    path: Path
    format: str = "unknown"
    interfaces: list[Interface] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    packets: int = 0
    end_offset: int = 0

    def __iter__(self) -> Iterator[Packet]:
        try:
            fh = open(self.path, "rb")
        except OSError as exc:
            self.problems.append(Problem(0, f"cannot open: {exc.strerror}"))
            return
        with fh:
            head = fh.read(4)
            if head in _PCAP_MAGICS:
                self.format = "pcap"
                yield from self._pcap(fh, head)
            elif len(head) == 4 and struct.unpack("<I", head)[0] == _PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(fh, head)
            else:
                self.problems.append(Problem(0, "not a pcap or pcapng file"))

    def _pcap(self, fh: BinaryIO, magic: bytes) -> Iterator[Packet]:
        order, unit = _PCAP_MAGICS[magic]
        rest = fh.read(20)
        if len(rest) < 20:
            self.problems.append(Problem(4, "file ends inside the pcap header"))
            return
        _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", rest)
        self.interfaces.append(Interface(linktype=network & 0x0FFFFFFF, snaplen=snaplen, ts_unit_ns=unit))
        rec = struct.Struct(order + "IIII")
        offset = 24
        linktype = network & 0x0FFFFFFF
        # Records are parsed out of 1 MiB reads: two small reads per packet cost more than the parsing.
        buf = b""
        blen = pos = 0
        eof = False
        unpack = rec.unpack_from
        while True:
            if blen - pos < 16 and not eof:
                more = fh.read(_CHUNK)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                blen = len(buf)
            if blen == pos:
                break
            if blen - pos < 16:
                self.problems.append(Problem(offset, "file ends inside a record header (truncated capture)"))
                break
            sec, frac, caplen, origlen = unpack(buf, pos)
            if caplen > MAX_RECORD:
                self.problems.append(Problem(offset, f"record claims {caplen} bytes (corrupt header)"))
                break
            end = pos + 16 + caplen
            while end > blen and not eof:
                more = fh.read(_CHUNK)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                blen, end = len(buf), 16 + caplen
            if end > blen:
                self.problems.append(Problem(offset, f"file ends inside a packet ({blen - pos - 16} of {caplen} bytes)"))
                break
            data = buf[pos + 16:end]
            pos = end
            offset += 16 + caplen
            self.packets += 1
            yield Packet(sec * 1_000_000_000 + frac * unit, linktype, caplen, origlen, data)
        self.end_offset = offset

    def _pcapng(self, fh: BinaryIO, first: bytes) -> Iterator[Packet]:
        offset = 0
        order = "<"
        pending = first
        while True:
            head = pending + fh.read(8 - len(pending))
            pending = b""
            if not head:
                break
            if len(head) < 8:
                self.problems.append(Problem(offset, "file ends inside a block header (truncated capture)"))
                break
            btype = struct.unpack(order + "I", head[:4])[0]
            if btype == _PCAPNG_SHB:
                # A section header fixes the byte order of everything after it.
                magic_raw = fh.read(4)
                if len(magic_raw) < 4:
                    self.problems.append(Problem(offset, "file ends inside a section header"))
                    break
                order = "<" if struct.unpack("<I", magic_raw)[0] == _BYTE_ORDER_MAGIC else ">"
                if struct.unpack(order + "I", magic_raw)[0] != _BYTE_ORDER_MAGIC:
                    self.problems.append(Problem(offset, "bad byte-order magic in a section header"))
                    break
                length = struct.unpack(order + "I", head[4:8])[0]
                body_rest = length - 12
                if length < 28 or length % 4 or length > MAX_BLOCK:
                    self.problems.append(Problem(offset, f"bad section header length {length}"))
                    break
                body = magic_raw + fh.read(body_rest)
                if len(body) < body_rest + 4:
                    self.problems.append(Problem(offset, "file ends inside a section header"))
                    break
                self.interfaces = []  # interface ids restart with each section
                offset += length
                continue
            length = struct.unpack(order + "I", head[4:8])[0]
            if length < 12 or length % 4 or length > MAX_BLOCK:
                self.problems.append(Problem(offset, f"bad block length {length} (block type {btype:#x})"))
                break
            body = fh.read(length - 8)
            if len(body) < length - 8:
                self.problems.append(Problem(offset, f"file ends inside a block (type {btype:#x}, truncated capture)"))
                break
            if struct.unpack(order + "I", body[-4:])[0] != length:
                self.problems.append(Problem(offset, f"block length trailer differs (type {btype:#x})"))
                break
            payload = body[:-4]
            packet = self._block(btype, payload, order, offset)
            offset += length
            self.end_offset = offset
            if packet is not None:
                self.packets += 1
                yield packet
            elif self.problems and self.problems[-1].offset == offset - length:
                break

    def _block(self, btype: int, body: bytes, order: str, offset: int) -> Packet | None:
        if btype == 1:  # interface description
            if len(body) < 8:
                self.problems.append(Problem(offset, "short interface description block"))
                return None
            linktype, _res, snaplen = struct.unpack(order + "HHI", body[:8])
            iface = Interface(linktype=linktype, snaplen=snaplen)
            for code, value in _options(body[8:], order):
                if code == 9 and value:  # if_tsresol
                    v = value[0]
                    iface.ts_unit_ns = 1e9 / (2 ** (v & 0x7F)) if v & 0x80 else 10 ** (9 - v) if v <= 9 else 1e9 / 10**v
                elif code == 2:
                    iface.name = value.decode("utf-8", "replace")
            self.interfaces.append(iface)
            return None
        if btype in (6, 2):  # enhanced packet, obsolete packet
            fmt = order + ("IIIII" if btype == 6 else "HHIIII")
            need = 20
            if len(body) < need:
                self.problems.append(Problem(offset, "short packet block"))
                return None
            if btype == 6:
                iface_id, ts_hi, ts_lo, caplen, origlen = struct.unpack(fmt, body[:20])
            else:
                iface_id, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack(fmt, body[:20])
            if iface_id >= len(self.interfaces):
                self.problems.append(Problem(offset, f"packet for undeclared interface {iface_id}"))
                return None
            if caplen > len(body) - 20 or caplen > MAX_RECORD:
                self.problems.append(Problem(offset, f"packet block claims {caplen} bytes (corrupt)"))
                return None
            iface = self.interfaces[iface_id]
            ts = int(((ts_hi << 32) | ts_lo) * iface.ts_unit_ns)
            return Packet(ts, iface.linktype, caplen, origlen, bytes(body[20:20 + caplen]), iface_id)
        if btype == 3:  # simple packet: interface 0, no timestamp
            if not self.interfaces or len(body) < 4:
                self.problems.append(Problem(offset, "simple packet block without an interface"))
                return None
            origlen = struct.unpack(order + "I", body[:4])[0]
            iface = self.interfaces[0]
            caplen = min(origlen, iface.snaplen or origlen, len(body) - 4)
            return Packet(0, iface.linktype, caplen, origlen, bytes(body[4:4 + caplen]), 0)
        return None  # name resolution, statistics, custom and unknown blocks are skipped


def _options(data: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        code, length = struct.unpack(order + "HH", data[off:off + 4])
        if code == 0:
            return
        value = data[off + 4:off + 4 + length]
        if len(value) < length:
            return
        yield code, value
        off += 4 + ((length + 3) & ~3)


def open_capture(path: str | Path) -> CaptureReader:
    return CaptureReader(Path(path))
