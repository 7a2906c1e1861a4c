"""Our small DNS question reader against dpkt's full decoder, on every DNS query in the corpus and on
messages built to break it."""

from __future__ import annotations

import struct

import dpkt
import pytest

from bundle.pcap import open_capture
from bundle.pcap.headers import Malformed, decode, dns_question, udp_ports
from tests.pcap.test_reader import ROWS
from tests.conftest import corpus_file


def _queries(path):
    for p in open_capture(path):
        try:
            d = decode(p.linktype, p.data)
            if d is None or d.proto != 17 or d.fragment or 53 not in udp_ports(d.l4):
                continue
        except (Malformed, struct.error):
            continue
        body = d.l4[8:]
        if len(body) >= 12 and not body[2] & 0x80:
            yield body


def test_every_corpus_query_reads_as_dpkt_reads_it():
    seen = 0
    for row in ROWS:
        for body in _queries(corpus_file(row["path"])):
            try:
                q = dpkt.dns.DNS(body).qd[0]
                expected = (q.name, q.type)
            except (dpkt.UnpackError, struct.error, IndexError, ValueError):
                expected = None
            try:
                got = dns_question(body)
            except Malformed:
                got = None
            if expected is not None:  # dpkt is stricter about the rest of the message; the question must agree
                assert got == expected, (row["path"], body[:40])
                seen += 1
    assert seen >= 40  # 42 queries in the corpus today


def test_compression_pointer_and_hostile_names():
    q = dpkt.dns.DNS(id=1, qd=[dpkt.dns.DNS.Q(name="a.svc.cluster.local", type=28)])
    body = bytes(q)
    assert dns_question(body) == ("a.svc.cluster.local", 28)
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    # a name that points at a label sequence later in the message (legal, if odd)
    pointed = header + b"\xc0\x12" + struct.pack("!HH", 1, 1) + b"\x03abc\x00"
    assert dns_question(pointed) == ("abc", 1)
    for bad in (header[:11], header + b"\x05ab", header + b"\xc0\x0c\x00\x01\x00\x01",  # pointer loop
                header + b"\x7fab\x00\x00\x01\x00\x01", header + b"\x03abc\x00\x00",
                header + (b"\x3f" + b"x" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # longer than 255
                struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0)):
        with pytest.raises(Malformed):
            dns_question(bad)
