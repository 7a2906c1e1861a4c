"""Compile a tcpdump-syntax filter to classic BPF with libpcap (through ctypes) and attach it to a socket.

libpcap0.8 (Debian) ships libpcap.so.0.8; no tcpdump binary is needed. The compiled program runs in the
kernel (SO_ATTACH_FILTER), so packets we do not want are never copied to us.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct

SO_ATTACH_FILTER = 26
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET|BPF_K 0


class BpfError(Exception):
    """The filter does not compile (the message is libpcap's), or libpcap is missing."""


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


def _libpcap() -> ctypes.CDLL:
    for name in (ctypes.util.find_library("pcap"), "libpcap.so.0.8", "libpcap.so.1", "libpcap.so"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise BpfError("libpcap is not installed (Debian: libpcap0.8)")


def compile_filter(expression: str, linktype: int = 1, snaplen: int = 262144) -> bytes:
    """The classic BPF program for `expression`, as packed struct sock_filter instructions."""
    lib = _libpcap()
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    handle = lib.pcap_open_dead(linktype, snaplen)
    if not handle:
        raise BpfError("libpcap could not open a dead handle")
    prog = _Program()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, 0xFFFFFFFF) != 0:
            raise BpfError((lib.pcap_geterr(handle) or b"invalid filter").decode(errors="replace"))
        out = b"".join(struct.pack("HBBI", i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[: prog.bf_len])
        lib.pcap_freecode(ctypes.byref(prog))
        return out
    finally:
        lib.pcap_close(handle)


def attach(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER with struct sock_fprog {unsigned short len; struct sock_filter *filter}."""
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def attach_drop_all(sock: socket.socket) -> None:
    attach(sock, _DROP_ALL)
