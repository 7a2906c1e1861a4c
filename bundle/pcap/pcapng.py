"""A small pcapng writer: section header with OS and application, one interface description per interface
(name, vantage, filter, snaplen, nanosecond resolution), enhanced packet blocks, interface statistics.

Written with `struct` rather than dpkt's writer because we need per-interface options (if_filter, if_tsresol=9,
if_description) and an interface statistics block; `tshark -r` and `tcpdump -r` read the result (tested).
"""

from __future__ import annotations

import platform
import struct

from bundle import __version__

SHB, IDB, EPB, ISB = 0x0A0D0D0A, 1, 6, 5


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _opts(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_opt(c, v) for c, v in items if v is not None) + struct.pack("<HH", 0, 0) if items else b""


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def section_header() -> bytes:
    uname = platform.uname()
    return _block(SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opts([
        (2, uname.machine.encode()),
        (3, f"{uname.system} {uname.release}".encode()),
        (4, f"netbundle {__version__}".encode()),
    ]))


def interface(linktype: int, snaplen: int, name: str, description: str, bpf_filter: str) -> bytes:
    return _block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + _opts([
        (2, name.encode()),
        (3, description.encode()),
        (9, b"\x09"),  # if_tsresol: nanoseconds
        (11, b"\x00" + bpf_filter.encode()),  # if_filter, as a libpcap expression
        (12, f"{platform.system()} {platform.release()}".encode()),
    ]))


def packet(iface: int, ts_ns: int, data: bytes, origlen: int) -> bytes:
    return _block(EPB, struct.pack("<IIIII", iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), origlen) + _pad(data))


def statistics(iface: int, ts_ns: int, start_ns: int, received: int, dropped: int) -> bytes:
    return _block(ISB, struct.pack("<III", iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF) + _opts([
        (2, struct.pack("<II", start_ns >> 32, start_ns & 0xFFFFFFFF)),
        (3, struct.pack("<II", ts_ns >> 32, ts_ns & 0xFFFFFFFF)),
        (4, struct.pack("<Q", received)),
        (5, struct.pack("<Q", dropped)),
    ]))
