"""Every hostile bundle in tests/data/hostile is refused with one clear line and its exit code."""

import json

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
    proc = netbundle("validate", str(tmp_path / "nope.tar.zst"))
    assert proc.returncode == 3 and "cannot open" in proc.stderr


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
    with pytest.raises(bundle.InvalidBundle, match="socket-table.json.*schema violation|schema violation"):
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
