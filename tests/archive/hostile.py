"""Generate the corpus of hostile and broken bundles in tests/data/hostile/.

    python -m tests.archive.hostile [DIR]

Each case is a .tar.zst and a line in INDEX.json: the error class the reader
must raise, the CLI exit code, and a fragment of the one-line message.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyzstd

from bundle.models import (
    FORMAT_NAME,
    HostFacts,
    Invocation,
    Manifest,
    MediaType,
    Member,
    Provenance,
    SliceRun,
    SliceStatus,
    Target,
    Vantage,
    VantageKind,
)

BUNDLE_ID = "netbundle-20261126T000000Z-hostile"
CREATED = datetime(2026, 11, 26, tzinfo=UTC)
ROUTE_DOC = json.dumps({
    "links": [], "addresses": [], "rules": [], "routes": [], "neighbors": [], "lookups": [],
    "sysctls": {"ip_forward": 0, "rp_filter_all": 0, "rp_filter_default": 0, "interfaces": []},
    "active_probes": False,
}).encode()
NOTE = b"operator note\n"
# The corpus is written at format 1.1 (committed bytes stay the same): its cases are about the tar stream and
# the manifest; 1.2's integrity (zstd checksums, the manifest's digest) is tested in test_integrity.py.
CORPUS_FORMAT = "1.1"

DROP = object()  # a manifest field to leave out
Entry = tuple[tarfile.TarInfo, bytes | None]


def member(path: str, data: bytes, media: str) -> Member:
    return Member(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), media_type=media,
                  provenance=Provenance(source="hostile corpus", slice="route", vantage="host"))


def manifest(members: list[Member], **changes: object) -> dict[str, object]:
    m = Manifest(
        format=FORMAT_NAME, format_version=CORPUS_FORMAT, read_compatible_version=CORPUS_FORMAT,
        bundle_id=BUNDLE_ID, created=CREATED, finished=CREATED, tool_version="0.1.0",
        host=HostFacts(hostname="corpus", kernel="6.1"),
        invocation=Invocation(argv=["netbundle", "collect"], user="root", uid=0, exit_code=0, timeout_s=60),
        targets=[Target(spec="10.244.0.2", address="10.244.0.2")],
        vantages=[Vantage(id="host", kind=VantageKind.HOST, entered=False)],
        slices=[SliceRun(slice="route", vantage="host", status=SliceStatus.COMPLETE)],
        members=members,
    )
    data = m.model_dump(mode="json")
    data.update(changes)
    return {k: v for k, v in data.items() if v is not DROP}


def reg(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(CREATED.timestamp())
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def pack(entries: list[Entry]) -> bytes:
    raw = io.BytesIO()
    with pyzstd.ZstdFile(raw, "w", level_or_option=3) as zf:
        with tarfile.open(fileobj=zf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info, data in entries:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def valid_entries(**changes: object) -> list[Entry]:
    members = [member("vantages/host/route.json", ROUTE_DOC, MediaType.ROUTE), member("notes.txt", NOTE, MediaType.TEXT)]
    doc = json.dumps(manifest(members, **changes)).encode()
    return [reg(f"{BUNDLE_ID}/manifest.json", doc), reg(f"{BUNDLE_ID}/notes.txt", NOTE),
            reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC)]


def _with_manifest(members: list[Member], entries: list[Entry], **changes: object) -> bytes:
    doc = json.dumps(manifest(members, **changes)).encode()
    return pack([reg(f"{BUNDLE_ID}/manifest.json", doc), *entries])


class _Filler(io.RawIOBase):
    """`size` bytes of one value, made as they are read: a member or header of hundreds of MB, never in memory."""

    def __init__(self, size: int, fill: bytes = b"\0") -> None:
        self.left = size
        self.fill = fill

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = self.fill * n
        self.left -= n
        return n


def _bomb() -> bytes:
    """600 MiB of zeros listed honestly: a few KiB on disk, over the 512 MiB member limit."""
    size = 600 << 20
    digest = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        digest.update(block)
    m = Member(path="capture.pcapng", size=size, sha256=digest.hexdigest(), media_type="application/octet-stream",
               provenance=Provenance(source="hostile corpus"))
    doc = json.dumps(manifest([m])).encode()
    raw = io.BytesIO()

    with pyzstd.ZstdFile(raw, "w", level_or_option=3) as zf:
        with tarfile.open(fileobj=zf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(reg(f"{BUNDLE_ID}/manifest.json", doc)[0], io.BytesIO(doc))
            info = tarfile.TarInfo(f"{BUNDLE_ID}/capture.pcapng")
            info.size = size
            tar.addfile(info, io.BufferedReader(_Filler(size)))
    return raw.getvalue()


def _header_bomb(kind: bytes) -> bytes:
    """A PAX extended header ('x') or GNU long name ('L') declaring 400 MB, after a valid manifest: a ~13 KB file
    that made tarfile allocate the whole header before any limit could look."""
    size = 400 << 20
    doc = json.dumps(manifest([member("vantages/host/route.json", ROUTE_DOC, MediaType.ROUTE)])).encode()

    raw = io.BytesIO()
    with pyzstd.ZstdFile(raw, "w", level_or_option=3) as zf:
        with tarfile.open(fileobj=zf, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            tar.addfile(reg(f"{BUNDLE_ID}/manifest.json", doc)[0], io.BytesIO(doc))
            info = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "././@PaxHeader")
            info.type = kind
            info.size = size
            tar.addfile(info, io.BufferedReader(_Filler(size, b"a" if kind == tarfile.GNUTYPE_LONGNAME else b"\0")))
    return raw.getvalue()


def cases() -> dict[str, tuple[Callable[[], bytes], str, int, str]]:
    route = member("vantages/host/route.json", ROUTE_DOC, MediaType.ROUTE)
    good = pack(valid_entries())
    return {
        "control-valid": (lambda: good, "", 0, ""),
        "traversal-dotdot": (lambda: _with_manifest([route], [reg(f"{BUNDLE_ID}/../evil.txt", b"x"), reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC)]), "InvalidBundle", 3, "path traversal"),
        "traversal-other-top": (lambda: _with_manifest([route], [reg("elsewhere/route.json", b"x")]), "InvalidBundle", 3, "path traversal"),
        "absolute-path": (lambda: _with_manifest([route], [reg("/etc/cron.d/evil", b"x")]), "InvalidBundle", 3, "absolute"),
        "symlink": (lambda: _with_manifest([route], [special(f"{BUNDLE_ID}/vantages/host/route.json", tarfile.SYMTYPE, "/etc/shadow")]), "InvalidBundle", 3, "not a regular file"),
        "hardlink": (lambda: _with_manifest([route], [special(f"{BUNDLE_ID}/vantages/host/route.json", tarfile.LNKTYPE, "/etc/shadow")]), "InvalidBundle", 3, "not a regular file"),
        "device": (lambda: _with_manifest([route], [special(f"{BUNDLE_ID}/vantages/host/route.json", tarfile.CHRTYPE)]), "InvalidBundle", 3, "not a regular file"),
        "directory": (lambda: _with_manifest([route], [special(f"{BUNDLE_ID}/vantages", tarfile.DIRTYPE)]), "InvalidBundle", 3, "not a regular file"),
        "duplicate-member": (lambda: _with_manifest([route], [reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC)] * 2), "InvalidBundle", 3, "duplicate member"),
        "unlisted-member": (lambda: _with_manifest([route], [reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC), reg(f"{BUNDLE_ID}/extra.sh", b"#!/bin/sh\n")]), "InvalidBundle", 3, "not listed in the manifest"),
        "missing-member": (lambda: _with_manifest([route, member("notes.txt", NOTE, MediaType.TEXT)], [reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC)]), "InvalidBundle", 3, "absent from the archive"),
        "checksum-mismatch": (lambda: _with_manifest([route], [reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC.replace(b"false", b"true "))]), "InvalidBundle", 3, "SHA-256 does not match"),
        "size-mismatch": (lambda: _with_manifest([route], [reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC + b" ")]), "InvalidBundle", 3, "differs from the manifest"),
        "bomb-600MiB-member": (_bomb, "InvalidBundle", 3, "limit"),
        "schema-manifest-missing-field": (lambda: _with_manifest([route], [reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC)], host=DROP), "InvalidBundle", 3, "host: Field required"),
        "schema-manifest-unknown-field": (lambda: _with_manifest([route], [reg(f"{BUNDLE_ID}/vantages/host/route.json", ROUTE_DOC)], surprise=1), "InvalidBundle", 3, "schema violation"),
        "schema-route-wrong-type": (lambda: (lambda bad: _with_manifest([member("vantages/host/route.json", bad, MediaType.ROUTE)], [reg(f"{BUNDLE_ID}/vantages/host/route.json", bad)]))(ROUTE_DOC.replace(b'"links": []', b'"links": "eth0"')), "InvalidBundle", 3, "schema violation"),
        "manifest-not-json": (lambda: pack([reg(f"{BUNDLE_ID}/manifest.json", b"{not json")]), "InvalidBundle", 3, "not JSON"),
        "manifest-not-first": (lambda: pack(list(reversed(valid_entries()))), "InvalidBundle", 3, "first member must be"),
        "manifest-member-path-traversal": (lambda: _with_manifest([Member.model_construct(path="../../etc/passwd", size=1, sha256=hashlib.sha256(b"x").hexdigest(), media_type="text/plain", provenance=Provenance(source="x"))], [reg(f"{BUNDLE_ID}/../../etc/passwd", b"x")]), "InvalidBundle", 3, "schema violation"),
        "top-folder-not-bundle-id": (lambda: pack([(lambda e: (setattr(e[0], "name", "other/manifest.json"), e)[1])(valid_entries()[0])]), "InvalidBundle", 3, "not the bundle id"),
        "format-major-2": (lambda: pack(valid_entries(format_version="2.0", read_compatible_version="2.0")), "UnsupportedFormatVersion", 4, "format 2.0"),
        "format-needs-newer-reader": (lambda: pack(valid_entries(format_version="1.99", read_compatible_version="1.99")), "UnsupportedFormatVersion", 4, "needs a reader for 1.99"),
        "format-not-netbundle": (lambda: pack(valid_entries(format="sosreport")), "InvalidBundle", 3, "not a netbundle manifest"),
        "not-zstd-plain-tar": (lambda: (lambda buf: (tarfile.open(fileobj=buf, mode="w").close(), buf.getvalue())[1])(io.BytesIO()), "InvalidBundle", 3, "not a zstd stream"),
        "truncated": (lambda: good[: len(good) // 2], "InvalidBundle", 3, "truncated"),
        "corrupt-zstd": (lambda: good[:40] + bytes(b ^ 0xFF for b in good[40:80]) + good[80:], "InvalidBundle", 3, "corrupt"),
        "empty-archive": (lambda: pack([]), "InvalidBundle", 3, "empty archive"),
        "pax-header-bomb": (lambda: _header_bomb(tarfile.XHDTYPE), "InvalidBundle", 3, "header bomb"),
        "gnu-longname-bomb": (lambda: _header_bomb(tarfile.GNUTYPE_LONGNAME), "InvalidBundle", 3, "header bomb"),
        "file-and-folder": (lambda: _with_manifest([member("a", b"x", MediaType.TEXT), member("a/b", b"y", MediaType.TEXT)],
                                                   [reg(f"{BUNDLE_ID}/a", b"x"), reg(f"{BUNDLE_ID}/a/b", b"y")]),
                            "InvalidBundle", 3, "both a file and a folder"),
    }


def build(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, (make, error, code, fragment) in cases().items():
        (folder / f"{name}.tar.zst").write_bytes(make())
        index[f"{name}.tar.zst"] = {"error": error or None, "exit_code": code, "message": fragment}
    (folder / "INDEX.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "data" / "hostile")
