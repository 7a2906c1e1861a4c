"""Stream packets out of a pcap or pcapng file, bounded, never raising on bad input.

dpkt.pcap.Reader refuses pcapng and dpkt decodes more than we need, so the file formats are walked here
with `struct` (formats: https://www.tcpdump.org/manpages/pcap-savefile.5.html and the pcapng draft,
https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-01.html). Whatever is wrong with a file is
recorded as a Problem with its byte offset, and reading stops there: the packets before it still count.

The file is read into one reused buffer and records are handed out in batches of offsets into it
(`batches()`): no copy per packet, which is most of the cost of reading a busy capture. `iter()` gives
Packets with their own bytes for callers that keep them.
"""

from __future__ import annotations

import io
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

MAX_RECORD = 256 * 1024  # larger than any snaplen in use (262144 is libpcap's maximum)
MAX_BLOCK = 16 * 1024 * 1024
_BUFFER = 2 << 20

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),  # microseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1),  # nanoseconds
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"  # the same bytes in either byte order
_SHB_TYPE = 0x0A0D0D0A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D

# One record of a batch: (ts_ns, offset of its data in the batch's buffer, caplen, origlen).
Record = tuple[int, int, int, int]


class Batch(NamedTuple):
    """Records of one interface that sit in one buffer. The buffer is overwritten once the next batch is asked
    for: copy what you keep."""

    buf: bytearray
    linktype: int
    interface: int
    records: list[Record]


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
    ts_mul: int = 1000  # ns = ticks * ts_mul // ts_div, in integers: a float loses nanoseconds past 2**53
    ts_div: int = 1
    name: str | None = None


class _Window:
    """A reused read buffer over a file: buf[start:end] is unread data that begins at file offset base + start."""

    def __init__(self, fh: io.RawIOBase, base: int) -> None:
        self.fh = fh
        self.buf = bytearray(_BUFFER)
        self.start = self.end = 0
        self.base = base
        self.eof = False

    def fill(self, want: int) -> bool:
        """Read until at least `want` bytes are unread (growing the buffer up to MAX_BLOCK if one block needs it);
        False at the end of the file."""
        if self.start:
            left = self.end - self.start
            self.buf[:left] = self.buf[self.start:self.end]
            self.base += self.start
            self.start, self.end = 0, left
        if want > len(self.buf):
            grown = bytearray(max(want, 2 * len(self.buf)))
            grown[:self.end] = self.buf[:self.end]
            self.buf = grown
        while self.end < want and not self.eof:
            got = self.fh.readinto(memoryview(self.buf)[self.end:])
            if not got:
                self.eof = True
            else:
                self.end += got
        return self.end >= want


@dataclass
class CaptureReader:
    """Iterate to get packets (or call batches()); afterwards `problems`, `packets`, `linktypes` and
    `end_offset` say how reading went."""

    path: Path
    format: str = "unknown"
    interfaces: list[Interface] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    packets: int = 0
    linktypes: Counter[int] = field(default_factory=Counter)
    end_offset: int = 0

    def __iter__(self) -> Iterator[Packet]:
        for buf, linktype, iface, records in self.batches():
            for ts, off, caplen, origlen in records:
                yield Packet(ts, linktype, caplen, origlen, bytes(buf[off:off + caplen]), iface)

    def batches(self) -> Iterator[Batch]:
        """The file's packets, a Batch at a time (one per buffer fill, and per change of interface)."""
        try:
            fh = open(self.path, "rb", buffering=0)
        except OSError as exc:
            self.problems.append(Problem(0, f"cannot open: {exc.strerror}"))
            return
        with fh:
            w = _Window(fh, 0)
            w.fill(4)
            head = bytes(w.buf[:4])
            if head in _PCAP_MAGICS:
                self.format = "pcap"
                yield from self._pcap(w, head)
            elif head == _PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(w)
            else:
                self.problems.append(Problem(0, "not a pcap or pcapng file"))

    def _pcap(self, w: _Window, magic: bytes) -> Iterator[Batch]:
        order, unit = _PCAP_MAGICS[magic]
        if not w.fill(24):
            self.problems.append(Problem(4, "file ends inside the pcap header"))
            return
        _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(order + "HHiIII", w.buf, 4)
        linktype = network & 0x0FFFFFFF
        self.interfaces.append(Interface(linktype=linktype, snaplen=snaplen, ts_mul=unit))
        w.start = 24
        unpack = struct.Struct(order + "IIII").unpack_from
        while True:
            buf, pos, end = w.buf, w.start, w.end
            records: list[Record] = []
            add = records.append
            corrupt = False
            while end - pos >= 16:
                sec, frac, caplen, origlen = unpack(buf, pos)
                if caplen > MAX_RECORD:
                    corrupt = True
                    break
                nxt = pos + 16 + caplen
                if nxt > end:
                    break
                add((sec * 1_000_000_000 + frac * unit, pos + 16, caplen, origlen))
                pos = nxt
            w.start = pos
            self.end_offset = w.base + pos
            if records:
                self.packets += len(records)
                self.linktypes[linktype] += len(records)
                yield Batch(buf, linktype, 0, records)
            if corrupt:
                self.problems.append(Problem(self.end_offset, f"record claims {caplen} bytes (corrupt header)"))
                return
            left = w.end - w.start
            want = 16 + unpack(w.buf, w.start)[2] if left >= 16 else 16
            if not w.fill(want):
                left = w.end - w.start
                if left >= 16:
                    self.problems.append(Problem(self.end_offset, f"file ends inside a packet ({left - 16} of {want - 16} bytes)"))
                elif left:
                    self.problems.append(Problem(self.end_offset, "file ends inside a record header (truncated capture)"))
                return

    def _pcapng(self, w: _Window) -> Iterator[Batch]:
        order = "<"
        current = -1  # the interface of the records being gathered
        while True:
            buf, pos, end = w.buf, w.start, w.end
            records: list[Record] = []
            want = 8
            stop = False
            while end - pos >= 8:
                offset = w.base + pos
                if buf[pos:pos + 4] == _PCAPNG_SHB:
                    # A section header fixes the byte order of everything after it.
                    if end - pos < 12:
                        want = 12
                        break
                    order = "<" if struct.unpack_from("<I", buf, pos + 8)[0] == _BYTE_ORDER_MAGIC else ">"
                    if struct.unpack_from(order + "I", buf, pos + 8)[0] != _BYTE_ORDER_MAGIC:
                        self.problems.append(Problem(offset, "bad byte-order magic in a section header"))
                        stop = True
                        break
                    btype, length = _SHB_TYPE, struct.unpack_from(order + "I", buf, pos + 4)[0]
                    if length < 28 or length % 4 or length > MAX_BLOCK:
                        self.problems.append(Problem(offset, f"bad section header length {length}"))
                        stop = True
                        break
                else:
                    btype, length = struct.unpack_from(order + "II", buf, pos)
                    if length < 12 or length % 4 or length > MAX_BLOCK:
                        self.problems.append(Problem(offset, f"bad block length {length} (block type {btype:#x})"))
                        stop = True
                        break
                if end - pos < length:
                    want = length
                    break
                if struct.unpack_from(order + "I", buf, pos + length - 4)[0] != length:
                    kind = "section header" if btype == _SHB_TYPE else f"type {btype:#x}"
                    self.problems.append(Problem(offset, f"block length trailer differs ({kind})"))
                    stop = True
                    break
                if btype == _SHB_TYPE:
                    if records:
                        self.packets += len(records)
                        yield Batch(buf, self.interfaces[current].linktype, current, records)
                        records = []
                    self.interfaces, current = [], -1  # interface ids restart with each section
                elif btype in (6, 2, 3):
                    got = self._packet(btype, buf, pos, length, order, offset)
                    if got is None:
                        stop = True
                        break
                    iface_id, record = got
                    if iface_id != current:
                        if records:
                            self.packets += len(records)
                            yield Batch(buf, self.interfaces[current].linktype, current, records)
                            records = []
                        current = iface_id
                    records.append(record)
                elif btype == 1:
                    if not self._interface(bytes(buf[pos + 8:pos + length - 4]), order, offset):
                        stop = True
                        break
                # name resolution, statistics, custom and unknown blocks are skipped
                pos += length
            w.start = pos
            self.end_offset = w.base + pos
            if records:
                self.packets += len(records)
                yield Batch(buf, self.interfaces[current].linktype, current, records)
            if stop:
                return
            if not w.fill(want):
                if w.end > w.start:
                    what = "block header" if w.end - w.start < 8 else "block"
                    self.problems.append(Problem(self.end_offset, f"file ends inside a {what} (truncated capture)"))
                return

    def _interface(self, body: bytes, order: str, offset: int) -> bool:
        if len(body) < 8:
            self.problems.append(Problem(offset, "short interface description block"))
            return False
        linktype, _res, snaplen = struct.unpack(order + "HHI", body[:8])
        iface = Interface(linktype=linktype, snaplen=snaplen)
        for code, value in _options(body[8:], order):
            if code == 9 and value:  # if_tsresol: a power of ten, or of two when the top bit is set
                v = value[0] & 0x7F
                if value[0] & 0x80:
                    iface.ts_mul, iface.ts_div = 1_000_000_000, 1 << v
                elif v <= 9:
                    iface.ts_mul, iface.ts_div = 10 ** (9 - v), 1
                else:
                    iface.ts_mul, iface.ts_div = 1, 10 ** (v - 9)
            elif code == 2:
                iface.name = value.decode("utf-8", "replace")
        self.interfaces.append(iface)
        return True

    def _packet(self, btype: int, buf: bytearray, pos: int, length: int, order: str,
                offset: int) -> tuple[int, Record] | None:
        """(interface id, record) of a packet block, or None when the block is unusable (a problem is noted)."""
        body = length - 12
        if btype == 3:  # simple packet: interface 0, no timestamp
            if not self.interfaces or body < 4:
                self.problems.append(Problem(offset, "simple packet block without an interface"))
                return None
            origlen = struct.unpack_from(order + "I", buf, pos + 8)[0]
            iface = self.interfaces[0]
            caplen = min(origlen, iface.snaplen or origlen, body - 4)
            self.linktypes[iface.linktype] += 1
            return 0, (0, pos + 12, caplen, origlen)
        if body < 20:
            self.problems.append(Problem(offset, "short packet block"))
            return None
        if btype == 6:  # enhanced packet
            iface_id, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(order + "IIIII", buf, pos + 8)
        else:  # obsolete packet block
            iface_id, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(order + "HHIIII", buf, pos + 8)
        if iface_id >= len(self.interfaces):
            self.problems.append(Problem(offset, f"packet for undeclared interface {iface_id}"))
            return None
        if caplen > body - 20 or caplen > MAX_RECORD:
            self.problems.append(Problem(offset, f"packet block claims {caplen} bytes (corrupt)"))
            return None
        iface = self.interfaces[iface_id]
        self.linktypes[iface.linktype] += 1
        return iface_id, (((ts_hi << 32) | ts_lo) * iface.ts_mul // iface.ts_div, pos + 28, caplen, origlen)


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
