"""Format 1.2's integrity, end to end: every zstd frame carries a content checksum, the last member holds the
manifest's SHA-256, and a skippable frame after the stream holds the SHA-256 of every byte before it. A flipped
bit anywhere is refused (sampled here; exhaustively in bench/bitflip.py), an edited manifest too; an existing
output is never replaced unless asked."""

from __future__ import annotations

import hashlib
import json
import io
import os
import stat
import random
import subprocess
import tarfile
from pathlib import Path

import pyzstd
import pytest

from bundle.archive import StagedBundle, read_bundle
from bundle.archive.writer import MANIFEST_DIGEST, ZSTD_OPTIONS, trailer
from bundle.errors import BundleWriteError, InvalidBundle, NetbundleError
from bundle.models import Manifest, MediaType, Provenance
from bundle.models.manifest import FORMAT_VERSION
from tests.archive import hostile
from tests.conftest import netbundle


def _write(tmp_path: Path, name: str = "b.tar.zst", overwrite: bool = False) -> Path:
    staged = StagedBundle(tmp_path)
    try:
        route = staged.add_bytes("vantages/host/route.json", hostile.ROUTE_DOC, MediaType.ROUTE,
                                 Provenance(source="test", slice="route", vantage="host"))
        data = hostile.manifest([route], format_version="1.2", read_compatible_version="1.1")
        return staged.write(Manifest.model_validate_json(json.dumps(data)), tmp_path / name,
                            overwrite=overwrite)
    finally:
        staged.cleanup()


def _members(path: Path) -> list[tuple[str, bytes]]:
    data = pyzstd.decompress(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _repack(members: list[tuple[str, bytes]], checksum: bool = True, seal: bool = True) -> bytes:
    raw = io.BytesIO()
    with pyzstd.ZstdFile(raw, "w", level_or_option=ZSTD_OPTIONS if checksum else 3) as zf:
        with tarfile.open(fileobj=zf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    body = raw.getvalue()
    return body + (trailer(hashlib.sha256(body).digest()) if seal else b"")


def test_a_written_bundle_is_checksummed_three_ways(tmp_path):
    out = _write(tmp_path)
    assert read_bundle(out).manifest.format_version == "1.2"  # as _write declares it
    assert "Check: XXH64" in subprocess.run(["zstd", "-lv", str(out)], capture_output=True, text=True).stdout
    names = subprocess.run(["tar", "--zstd", "-tf", str(out)], capture_output=True, text=True, check=True).stdout
    assert names.splitlines()[-1].endswith("/" + MANIFEST_DIGEST)  # plain tar still opens it, trailer and all
    manifest = dict(_members(out))[f"{hostile.BUNDLE_ID}/manifest.json"]
    digest = dict(_members(out))[f"{hostile.BUNDLE_ID}/{MANIFEST_DIGEST}"]
    assert digest.decode().strip() == hashlib.sha256(manifest).hexdigest()


def test_sampled_bit_flips_are_all_refused(tmp_path):
    out = _write(tmp_path)
    good = out.read_bytes()
    flipped = tmp_path / "f.tar.zst"
    rng = random.Random(20261201)
    bits = rng.sample(range(len(good) * 8), 3000)
    accepted = []
    for bit in bits:
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        flipped.write_bytes(data)
        try:
            read_bundle(flipped)
            accepted.append(bit)
        except NetbundleError:
            pass
    assert accepted == []
    for bit in bits[:3]:  # and through the CLI: one line, exit 3
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        flipped.write_bytes(data)
        proc = netbundle("validate", str(flipped))
        assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr


def test_an_edited_manifest_is_caught_even_in_a_resealed_archive(tmp_path):
    """Someone decompresses, edits the manifest (same length), recompresses with checksums and a fresh trailer:
    the manifest's digest member still disagrees."""
    members = _members(_write(tmp_path))
    edited = [(n, d.replace(b'"corpus"', b'"corpuz"') if n.endswith("/manifest.json") else d) for n, d in members]
    assert edited != members
    out = tmp_path / "edited.tar.zst"
    out.write_bytes(_repack(edited))
    with pytest.raises(InvalidBundle, match="manifest's SHA-256 does not match"):
        read_bundle(out)


@pytest.mark.parametrize("checksum, seal, dropped, message", [
    (True, False, None, "trailer or the zstd content checksum is missing"),
    (False, True, None, "trailer or the zstd content checksum is missing"),
    (True, True, MANIFEST_DIGEST, f"{MANIFEST_DIGEST} is missing"),
])
def test_a_1_2_bundle_without_its_seals_is_refused(tmp_path, checksum, seal, dropped, message):
    members = [(n, d) for n, d in _members(_write(tmp_path)) if not (dropped and n.endswith("/" + dropped))]
    out = tmp_path / "unsealed.tar.zst"
    out.write_bytes(_repack(members, checksum=checksum, seal=seal))
    with pytest.raises(InvalidBundle, match=message):
        read_bundle(out)


def test_the_writer_never_replaces_a_file_unless_asked(tmp_path):
    first = _write(tmp_path)
    before, inode = first.read_bytes(), first.stat().st_ino
    with pytest.raises(BundleWriteError, match="exists: not overwritten"):
        _write(tmp_path)
    assert first.read_bytes() == before and first.stat().st_ino == inode and not list(tmp_path.glob(".*.part"))
    _write(tmp_path, overwrite=True)
    assert first.stat().st_ino != inode  # written anew, in its place


def test_collect_and_redact_refuse_an_existing_output(tmp_path):
    earlier = _write(tmp_path, "earlier.tar.zst")
    before = earlier.read_bytes()
    for argv in (["collect", "--passive", "--slice", "route", "-o", str(earlier)],
                 ["redact", str(_write(tmp_path, "src.tar.zst")), "-o", str(earlier)]):
        proc = netbundle(*argv)
        assert proc.returncode == 6 and proc.stderr.count("\n") == 1, proc.stderr
        assert "exists: not overwritten (--force replaces it)" in proc.stderr
        assert earlier.read_bytes() == before
    proc = netbundle("collect", "--passive", "--slice", "route", "-o", str(earlier), "--force")
    assert proc.returncode == 0, proc.stderr
    assert earlier.read_bytes() != before and read_bundle(earlier).manifest.format_version == FORMAT_VERSION


def test_every_output_with_unredacted_evidence_is_private(tmp_path):
    """The bundle, its appendix and a redaction map are 0600 (the appendix was 0644 beside a 0600 bundle), even
    under a permissive umask and over an existing file."""
    old = os.umask(0o022)
    try:
        out = _write(tmp_path)
        page = tmp_path / "b.html"
        page.write_text("earlier")
        page.chmod(0o644)
        netbundle("render", str(out), "-o", str(page), check=True)
        shared = tmp_path / "shared.tar.zst"
        netbundle("redact", str(out), "-o", str(shared), check=True)
    finally:
        os.umask(old)
    for path in (out, page, tmp_path / "shared.tar.zst.map.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
