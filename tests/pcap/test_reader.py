"""The capture reader against the corpus: the same packet counts as tcpdump, and no exception on anything."""

from __future__ import annotations

import csv
import os
import random
import struct
import subprocess

import pytest

from bundle.pcap import open_capture
from tests.conftest import CORPUS, corpus_file


def _rows():
    path = CORPUS / "captures.tsv"
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


ROWS = _rows()


def test_corpus_index_present():
    corpus_file("captures.tsv")
    assert len(ROWS) > 100


@pytest.mark.parametrize("row", [r for r in ROWS if r["packets_by_tcpdump"]], ids=lambda r: r["path"])
def test_packet_count_equals_tcpdump(row):
    reader = open_capture(corpus_file(row["path"]))
    packets = list(reader)
    assert len(packets) == int(row["packets_by_tcpdump"]) == reader.packets
    assert reader.format == row["format"]
    if row["linktype"]:
        assert reader.interfaces and reader.interfaces[0].linktype == int(row["linktype"])
        assert all(p.linktype == int(row["linktype"]) for p in packets[:1])
    for p in packets:
        assert p.caplen == len(p.data) and p.caplen <= max(p.origlen, p.caplen)


@pytest.mark.parametrize("row", [r for r in ROWS if not r["packets_by_tcpdump"]], ids=lambda r: r["path"])
def test_captures_without_a_recorded_count_match_live_tcpdump(row):
    """No count in the index for these: count what tcpdump reads from them now (one line each with -q), and
    report a problem exactly when tcpdump complains about the file."""
    path = corpus_file(row["path"])
    reader = open_capture(path)
    packets = list(reader)
    tcpdump = subprocess.run(["tcpdump", "-nn", "-q", "-r", str(path)], capture_output=True, text=True)
    complaint = [line for line in tcpdump.stderr.splitlines()
                 if not line.startswith(("reading from file", "Warning: interface names"))]
    assert len(packets) == reader.packets == len(tcpdump.stdout.splitlines())
    assert bool(reader.problems) == bool(complaint), (reader.problems, complaint)


def test_truncation_reports_where(tmp_path):
    src = corpus_file("tcpdump/print-flags.pcap").read_bytes()
    for cut in (10, 30, len(src) - 5):
        path = tmp_path / f"cut{cut}.pcap"
        path.write_bytes(src[:cut])
        reader = open_capture(path)
        got = list(reader)
        assert reader.problems and "end" in reader.problems[-1].message
        assert len(got) < 10


def test_garbage_and_bombs(tmp_path):
    cases = {
        "empty": b"",
        "text": b"hello world, not a capture",
        "huge-record": bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000") + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30),
        "pcapng-bad-len": struct.pack("<IIIHHq", 0x0A0D0D0A, 7, 0x1A2B3C4D, 1, 0, -1),
        "random": os.urandom(4096),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        reader = open_capture(path)
        assert list(reader) == [] and reader.packets == 0, name
        assert reader.problems, name


def test_records_across_buffer_refills_and_exact_timestamps(tmp_path):
    """Files several times the read buffer, records of every size straddling its refills: every packet comes
    back byte for byte, and nanosecond pcapng timestamps stay exact (a float would round them to 256 ns)."""
    from bundle.pcap import pcapng
    from bundle.pcap.reader import _BUFFER

    rng = random.Random(5)
    sent = [(1_700_000_000_123_456_789 + i * 1_001, rng.randbytes(rng.randrange(1, 9000))) for i in range(1500)]
    assert sum(len(d) for _, d in sent) > 3 * _BUFFER
    ng = tmp_path / "big.pcapng"
    with open(ng, "wb") as fh:
        fh.write(pcapng.section_header() + pcapng.interface(1, 65535, "nbt0", "test", ""))
        for ts, data in sent:
            fh.write(pcapng.packet(0, ts, data, len(data) + 7))
    classic = tmp_path / "big.pcap"
    with open(classic, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))  # nanosecond pcap
        for ts, data in sent:
            fh.write(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(data), len(data) + 7) + data)
    for path in (ng, classic):
        reader = open_capture(path)
        got = [(p.ts_ns, p.data, p.origlen) for p in reader]
        assert got == [(ts, data, len(data) + 7) for ts, data in sent], path.name
        assert not reader.problems and reader.packets == len(sent) and reader.linktypes == {1: len(sent)}
