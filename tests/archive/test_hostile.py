"""Every hostile bundle in tests/data/hostile is refused with one clear line and its exit code."""

import json
import subprocess

import pytest

import bundle
from bundle.archive import ReadLimits, read_bundle
from tests.archive import hostile
from tests.conftest import REPO, netbundle

CORPUS = REPO / "tests" / "data" / "hostile"
INDEX = json.loads((CORPUS / "INDEX.json").read_text())


def test_corpus_is_complete():
    assert set(INDEX) == {f"{name}.tar.zst" for name in hostile.cases()}
    assert all((CORPUS / name).is_file() for name in INDEX)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_reader_rejects(name):
    case = INDEX[name]
    if case["error"] is None:
        assert read_bundle(CORPUS / name).manifest.bundle_id == hostile.BUNDLE_ID
        return
    with pytest.raises(getattr(bundle, case["error"])) as err:
        read_bundle(CORPUS / name)
    assert case["message"] in str(err.value)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_cli_gives_one_line_and_exit_code(name):
    case = INDEX[name]
    proc = netbundle("validate", str(CORPUS / name))
    assert proc.returncode == case["exit_code"], proc.stderr
    if case["error"]:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("netbundle: error: "), proc.stderr
        assert "Traceback" not in proc.stderr
        assert case["message"] in proc.stderr


def test_member_count_limit():
    with pytest.raises(bundle.InvalidBundle, match="more than 1 members"):
        read_bundle(CORPUS / "control-valid.tar.zst", ReadLimits(max_members=1))


def test_total_size_limit():
    with pytest.raises(bundle.InvalidBundle, match="unpacks to more than"):
        read_bundle(CORPUS / "control-valid.tar.zst", ReadLimits(max_total_bytes=100))


def test_missing_file_is_clear(tmp_path):
    """A missing file is a bad argument, said with its path (it was exit 3, "invalid bundle", without it)."""
    proc = netbundle("validate", str(tmp_path / "nope.tar.zst"))
    assert proc.returncode == 2 and f"no such file: {tmp_path / 'nope.tar.zst'}" in proc.stderr


def _with_table(tmp_path, listed: bytes, stored: bytes):
    """A valid bundle plus a socket table: `listed` is what the manifest hashes, `stored` what the tar holds."""
    from bundle.models import MediaType

    path = "vantages/host/socket-table.json"
    members = [hostile.member("vantages/host/route.json", hostile.ROUTE_DOC, MediaType.ROUTE),
               hostile.member(path, listed, MediaType.SOCKET_TABLE)]
    out = tmp_path / "t.tar.zst"
    out.write_bytes(hostile._with_manifest(members, [
        hostile.reg(f"{hostile.BUNDLE_ID}/vantages/host/route.json", hostile.ROUTE_DOC),
        hostile.reg(f"{hostile.BUNDLE_ID}/{path}", stored)]))
    return out


def test_row_table_is_hashed_always_and_parsed_when_asked(tmp_path):
    """render/summary skip parsing the row table, never its checksum; validate parses every row."""
    bad_rows = b'{"sockets": [{"protocol": "tcp", "state": "<script>"}]}'
    out = _with_table(tmp_path, bad_rows, bad_rows)
    b = read_bundle(out, tables=False)
    assert b.socket_table("host") is None and b.member("vantages/host/socket-table.json") is not None
    with pytest.raises(bundle.InvalidBundle, match=r"socket-table\.json: schema violation"):
        read_bundle(out)
    proc = netbundle("validate", str(out))
    assert proc.returncode == 3 and "socket-table.json" in proc.stderr, proc.stderr
    assert netbundle("summary", str(out)).returncode == 0

    good = b'{"sockets": []}'
    tampered = _with_table(tmp_path, good, b'{"sockets":[] }')
    with pytest.raises(bundle.InvalidBundle, match="SHA-256"):
        read_bundle(tampered, tables=False)
    proc = netbundle("render", str(tampered), "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 3 and "SHA-256" in proc.stderr and not (tmp_path / "x.html").exists()


def test_a_format_1_0_bundle_still_reads_and_analyses(tmp_path):
    """1.0 kept every socket row in sockets.json and had no summary counts: a 1.1 reader reads it, and the
    analysis counts hidden owners from its rows."""
    from bundle.models import MediaType

    row = {"protocol": "tcp", "family": 4, "state": "ESTAB", "local": "10.244.1.2", "lport": 40000,
           "remote": "10.244.1.3", "rport": 8080, "recv_q": 0, "send_q": 0, "timer": "off", "timer_expires_ms": 0,
           "retransmits": 0, "uid": 0, "inode": 7, "cookie": 1, "interface": None, "owners": [],
           "owner_unknown": {"unavailable": "not_permitted", "detail": "owner unknown: not permitted"}, "tcp": None}
    doc = json.dumps({
        "sockets": [row], "total": 1, "kept": 1, "dropped": 0, "row_limit": 20000, "counts": {"tcp ESTAB": 1},
        "listeners": [], "samples": [{"at_s": 0.0, "tcp": {"ESTAB": 1}, "udp": {}, "retransmits": 0}],
        "probes": [], "owner_scan": {"processes": 9, "denied": 2, "uid": 65534, "complete": False},
        "active_probes": False}).encode()
    members = [hostile.member("vantages/host/route.json", hostile.ROUTE_DOC, MediaType.ROUTE),
               hostile.member("vantages/host/sockets.json", doc, MediaType.SOCKETS)]
    out = tmp_path / "old.tar.zst"
    out.write_bytes(hostile._with_manifest(members, [
        hostile.reg(f"{hostile.BUNDLE_ID}/vantages/host/route.json", hostile.ROUTE_DOC),
        hostile.reg(f"{hostile.BUNDLE_ID}/vantages/host/sockets.json", doc)],
        format_version="1.0", read_compatible_version="1.0"))
    b = read_bundle(out)
    assert b.manifest.format_version == "1.0"
    s = b.sockets("host")
    assert s.table is None and s.owners_hidden is None and len(s.sockets) == 1
    assert netbundle("validate", str(out)).returncode == 0
    assert "owners of 1 sockets are hidden" in netbundle("show", str(out)).stdout  # counted over the 1.0 rows


def test_a_format_1_1_findings_json_is_kept_and_recomputed(tmp_path):
    """1.1 wrote findings.json with free-text targets and finding ids in the ladder (media type findings.v1): a
    1.2 reader verifies its checksum but does not read it; analyze, summary and show recompute the findings."""
    from bundle.models import MediaType

    old = json.dumps({"findings": [{"id": "route.no_route", "severity": "critical", "layer": "route",
                                    "vantage": "host", "target": "10.9.9.9:80", "summary": "old words",
                                    "evidence": [], "next_command": None}],
                      "ladders": [{"target": "10.9.9.9:80", "layers": [], "owner": "route"}],
                      "summary": ["old"], "proof": [], "capture": None}).encode()
    members = [hostile.member("vantages/host/route.json", hostile.ROUTE_DOC, MediaType.ROUTE),
               hostile.member("findings.json", old, MediaType.FINDINGS_V1)]
    out = tmp_path / "old11.tar.zst"
    out.write_bytes(hostile._with_manifest(members, [
        hostile.reg(f"{hostile.BUNDLE_ID}/vantages/host/route.json", hostile.ROUTE_DOC),
        hostile.reg(f"{hostile.BUNDLE_ID}/findings.json", old)],
        format_version="1.1", read_compatible_version="1.1"))
    b = read_bundle(out)
    assert b.findings() is None and b.member("findings.json") is not None
    assert netbundle("validate", str(out)).returncode == 0
    analyzed = netbundle("analyze", str(out))
    assert analyzed.returncode == 0 and "recomputed here" in analyzed.stdout and "old words" not in analyzed.stdout
    summary = json.loads(netbundle("summary", str(out), "--format", "json", check=True).stdout)
    assert summary["summary"] != ["old"]


@pytest.mark.parametrize("name", ["pax-header-bomb.tar.zst", "gnu-longname-bomb.tar.zst"])
def test_header_bombs_are_refused_in_bounded_memory(name):
    """A ~13 KB bundle declaring a 400 MB PAX header (or GNU long name) made `validate` hold 1.27 GB for 7.9 s;
    now it is refused before the header is read: peak RSS of the whole `validate` process stays small."""
    import sys

    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.run([sys.executable, '-m', 'bundle', 'validate', sys.argv[1]], capture_output=True, "
             "text=True)\n"
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, repr(p.stderr))")
    out = subprocess.run([sys.executable, "-c", probe, str(CORPUS / name)], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split(" ", 2)
    code, peak_kb, stderr = int(out[0]), int(out[1]), out[2]
    assert code == 3 and "header bomb" in stderr
    assert peak_kb < 150_000, f"peak RSS {peak_kb} KB"


def test_collect_never_writes_what_validate_refuses(tmp_path):
    """An over-limit member written by collect itself: --capture-bytes had no ceiling and --pcap no size check,
    so a bundle could exceed the reader's 512 MiB member limit. Both are refused up front now."""
    proc = netbundle("collect", "--passive", "--capture-bytes", str(600 << 20), "-o", str(tmp_path / "a.tar.zst"))
    assert proc.returncode == 2 and "--capture-bytes" in proc.stderr and not (tmp_path / "a.tar.zst").exists()
    big = tmp_path / "big.pcap"
    with open(big, "wb") as fh:
        fh.truncate(ReadLimits().max_member_bytes + 1)  # sparse: no disk used
    proc = netbundle("collect", "--passive", "--pcap", str(big), "-o", str(tmp_path / "b.tar.zst"))
    assert proc.returncode == 2 and "member limit" in proc.stderr and not (tmp_path / "b.tar.zst").exists()
