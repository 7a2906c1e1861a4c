"""Read a bundle as a stream, trusting nothing: every member is checked before use.

Rejections (each an InvalidBundle naming the member): not zstd or not tar,
manifest not first, path traversal or absolute names, links/devices/dirs,
duplicates, members absent from the manifest or missing from the archive,
size or SHA-256 mismatch, limits exceeded, documents that fail their schema.
A format major version this reader does not know is UnsupportedFormatVersion.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyzstd
from pydantic import ValidationError

from bundle.archive.writer import MANIFEST_DIGEST, TRAILER_MAGIC, TRAILER_SIZE, TRAILER_TAG, StagedBundle
from bundle.errors import InvalidBundle, UnsupportedFormatVersion
from bundle.models import (
    DOCUMENT_MODELS,
    FORMAT_NAME,
    FORMAT_VERSION,
    FindingsReport,
    WatchRecord,
    KubeSlice,
    CaptureAnalysis,
    CaptureRun,
    CountersSlice,
    DnsSlice,
    Manifest,
    Member,
    Model,
    NatSlice,
    RouteSlice,
    SocketsSlice,
    SocketTable,
    TABLE_MEDIA_TYPES,
    parse_version,
)

_CHUNK = 1 << 16
DIGEST_SINCE = (1, 2)  # bundles of this format on end with the manifest's digest and carry zstd checksums
M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class ReadLimits:
    max_members: int = 20_000
    max_manifest_bytes: int = 16 << 20
    max_document_bytes: int = 64 << 20
    max_member_bytes: int = 512 << 20
    max_total_bytes: int = 2 << 30


@dataclass
class Bundle:
    """A verified bundle: its manifest and its JSON documents, already validated."""

    manifest: Manifest
    documents: dict[str, Model] = field(default_factory=dict)
    texts: dict[str, bytes] = field(default_factory=dict)

    def member(self, path: str) -> Member | None:
        return next((m for m in self.manifest.members if m.path == path), None)

    def document(self, path: str, model: type[M]) -> M | None:
        doc = self.documents.get(path)
        return doc if isinstance(doc, model) else None

    def route(self, vantage_id: str) -> RouteSlice | None:
        return self.document(f"vantages/{vantage_id}/route.json", RouteSlice)

    def sockets(self, vantage_id: str) -> SocketsSlice | None:
        return self.document(f"vantages/{vantage_id}/sockets.json", SocketsSlice)

    def socket_table(self, vantage_id: str) -> SocketTable | None:
        """Every kept socket row; None also when the bundle was read with tables=False."""
        return self.document(f"vantages/{vantage_id}/socket-table.json", SocketTable)

    def capture(self, vantage_id: str) -> CaptureRun | None:
        return self.document(f"vantages/{vantage_id}/capture.json", CaptureRun)

    def operator_captures(self) -> list[tuple[str, CaptureAnalysis]]:
        """(member path, analysis) of each capture the operator added with --pcap."""
        return [(p, d) for p, d in sorted(self.documents.items())
                if p.startswith("captures/") and isinstance(d, CaptureAnalysis)]

    def dns(self, vantage_id: str) -> DnsSlice | None:
        return self.document(f"vantages/{vantage_id}/dns.json", DnsSlice)

    def nat(self, vantage_id: str) -> NatSlice | None:
        return self.document(f"vantages/{vantage_id}/nat.json", NatSlice)

    def counters(self, vantage_id: str) -> CountersSlice | None:
        return self.document(f"vantages/{vantage_id}/counters.json", CountersSlice)

    def kube(self) -> KubeSlice | None:
        return self.document("vantages/kubernetes-api/kube.json", KubeSlice)

    def watch(self) -> WatchRecord | None:
        """watch.json: the flight recorder's probe history and trigger (1.4, `netbundle watch`)."""
        return self.document("watch.json", WatchRecord)

    def findings(self) -> FindingsReport | None:
        """findings.json as written at collect time (recompute with `netbundle analyze`)."""
        return self.document("findings.json", FindingsReport)


def staged_bundle(manifest: Manifest, staged: StagedBundle) -> Bundle:
    """The documents staged so far (row tables aside) as a Bundle, validated as the reader validates them."""
    bundle = Bundle(manifest=manifest)
    for path, member in staged.members.items():
        model = DOCUMENT_MODELS.get(member.media_type)
        if model is not None and member.media_type not in TABLE_MEDIA_TYPES:
            bundle.documents[path] = _validate_doc(path, staged.read(path), model)
    return bundle


def check_version(raw: dict[str, object]) -> None:
    """Refuse bundles from a format this reader cannot read, before trusting any field."""
    if raw.get("format") != FORMAT_NAME:
        raise InvalidBundle("not a netbundle manifest (format field)", "manifest.json")
    ours = parse_version(FORMAT_VERSION)
    try:
        theirs = parse_version(str(raw.get("format_version")))
        needs = parse_version(str(raw.get("read_compatible_version", raw.get("format_version"))))
    except ValueError as exc:
        raise InvalidBundle(str(exc), "manifest.json") from None
    if theirs[0] != ours[0] or needs > ours:
        raise UnsupportedFormatVersion(
            f"bundle format {raw.get('format_version')} needs a reader for "
            f"{raw.get('read_compatible_version')}; this netbundle reads {FORMAT_VERSION}"
        )


def read_bundle(
    path: Path, limits: ReadLimits = ReadLimits(), extract_to: Path | None = None, tables: bool = True
) -> Bundle:
    """Verify and load a bundle. With extract_to, verified non-JSON members are written there.

    tables=False leaves the full row tables (socket-table.json) unparsed: their size and SHA-256 are still
    checked, but the report and the analysis read only the summaries, so 50,000 rows cost a hash, not a parse.
    """
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InvalidBundle(f"cannot open: {exc.strerror}") from None
    with fh:
        head = fh.read(5)
        if head[:4] != b"\x28\xb5\x2f\xfd":
            raise InvalidBundle("not a zstd stream (expected a .tar.zst bundle)")
        sealed = _check_trailer(fh)
        checksummed = len(head) == 5 and bool(head[4] & 0x04)  # Frame_Header_Descriptor: Content_Checksum_flag
        fh.seek(0)
        try:
            with pyzstd.ZstdFile(fh, "r") as zf:
                return _read_tar(zf, limits, extract_to, tables, checksummed and sealed)
        except pyzstd.ZstdError as exc:
            raise InvalidBundle(f"corrupt zstd stream: {exc}") from None
        except tarfile.TarError as exc:
            raise InvalidBundle(f"corrupt tar stream: {exc}") from None
        except EOFError:
            raise InvalidBundle("archive ends early (truncated)") from None
        except MemoryError:
            raise InvalidBundle("reading it ran out of memory (a hostile header or member?)") from None


MAX_EXTENDED_HEADER = 64 << 10  # a PAX record set or GNU long name: ours are a few hundred bytes


class _BoundedInfo(tarfile.TarInfo):
    """tarfile reads a PAX extended header or a GNU long name whole, before any limit of ours can look: a few-KB
    bundle could ask for gigabytes there. These headers are refused past MAX_EXTENDED_HEADER, before the read."""

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        _bound_header(self, "PAX extended header")
        return super()._proc_pax(tarfile)  # type: ignore[misc,no-any-return]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        _bound_header(self, "GNU long name")
        return super()._proc_gnulong(tarfile)  # type: ignore[misc,no-any-return]


def _bound_header(info: tarfile.TarInfo, what: str) -> None:
    if info.size > MAX_EXTENDED_HEADER:
        raise InvalidBundle(f"a {what} of {info.size} bytes (the limit is {MAX_EXTENDED_HEADER}): a header bomb")


def _check_trailer(fh: Any) -> bool:
    """Whether the file ends with our SHA-256 trailer over every byte before it; InvalidBundle when it does and
    the bytes differ. False (no trailer) is refused later for a format that always has one."""
    end = fh.seek(0, 2)
    if end < TRAILER_SIZE + 5:
        fh.seek(0)
        return False
    fh.seek(end - TRAILER_SIZE)
    tail = fh.read(TRAILER_SIZE)
    magic, size = struct.unpack_from("<II", tail)
    if magic != TRAILER_MAGIC or size != TRAILER_SIZE - 8 or tail[8:8 + len(TRAILER_TAG)] != TRAILER_TAG:
        fh.seek(0)
        return False
    h = hashlib.sha256()
    fh.seek(0)
    left = end - TRAILER_SIZE
    while left > 0:
        chunk = fh.read(min(_CHUNK * 16, left))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    fh.seek(0)
    if h.digest() != tail[-32:]:
        raise InvalidBundle("the file's SHA-256 does not match its trailer: the bundle was altered or damaged")
    return True


def _read_tar(zf: Any, limits: ReadLimits, extract_to: Path | None, tables: bool, checksummed: bool) -> Bundle:
    bundle: Bundle | None = None
    expected: dict[str, Member] = {}
    seen: set[str] = set()
    total = 0
    count = 0
    top = ""
    raw = b""
    digest_seen: str | None = None
    folders: set[str] = set()
    with tarfile.open(fileobj=zf, mode="r|", tarinfo=_BoundedInfo) as tar:
        for info in tar:
            count += 1
            if count > limits.max_members + 1:
                raise InvalidBundle(f"more than {limits.max_members} members")
            name = info.name
            if bundle is None:
                top = _check_first(info)
                raw = _read_member(tar, info, limits.max_manifest_bytes, "manifest.json")
                bundle = _load_manifest(raw)
                if not checksummed and parse_version(bundle.manifest.format_version) >= DIGEST_SINCE:
                    raise InvalidBundle("the file's SHA-256 trailer or the zstd content checksum is missing (a "
                                        f"format {bundle.manifest.format_version} bundle always has both)")
                if bundle.manifest.bundle_id != top:
                    raise InvalidBundle(f"top folder {top!r} is not the bundle id", "manifest.json")
                expected = {m.path: m for m in bundle.manifest.members}
                continue
            rel = _relative(name, top)
            if rel == MANIFEST_DIGEST and rel not in expected:
                if digest_seen is not None:
                    raise InvalidBundle("duplicate member", rel)
                digest_seen = _read_member(tar, info, 128, rel).strip().decode("ascii", "replace")
                if digest_seen != hashlib.sha256(raw).hexdigest():
                    raise InvalidBundle("the manifest's SHA-256 does not match (manifest.json altered)", rel)
                continue
            if digest_seen is not None:
                raise InvalidBundle(f"a member after {MANIFEST_DIGEST}, which must be the last", rel)
            if not info.isreg():
                raise InvalidBundle("not a regular file (links, devices and folders are refused)", rel)
            if rel in seen:
                raise InvalidBundle("duplicate member", rel)
            parents = {"/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)}
            if rel in folders or parents & seen:
                raise InvalidBundle("a member is both a file and a folder of another member", rel)
            seen.add(rel)
            folders |= parents
            member = expected.get(rel)
            if member is None:
                raise InvalidBundle("member not listed in the manifest", rel)
            if info.size != member.size:
                raise InvalidBundle(f"size {info.size} differs from the manifest's {member.size}", rel)
            total += info.size
            if total > limits.max_total_bytes:
                raise InvalidBundle(f"bundle unpacks to more than {limits.max_total_bytes} bytes", rel)
            is_doc = member.media_type in DOCUMENT_MODELS and (tables or member.media_type not in TABLE_MEDIA_TYPES)
            if info.size > limits.max_member_bytes:
                raise InvalidBundle(f"member larger than the {limits.max_member_bytes}-byte limit", rel)
            if is_doc and info.size > limits.max_document_bytes:
                raise InvalidBundle(f"document larger than the {limits.max_document_bytes}-byte limit", rel)
            keep = is_doc or (str(member.media_type).startswith("text/") and info.size <= limits.max_document_bytes)
            data = _hash_member(tar, info, member, rel, keep, extract_to)
            if data is not None:
                if is_doc:
                    bundle.documents[rel] = _validate_doc(rel, data, DOCUMENT_MODELS[member.media_type])
                else:
                    bundle.texts[rel] = data
    if bundle is None:
        raise InvalidBundle("empty archive: no manifest.json")
    if digest_seen is None and parse_version(bundle.manifest.format_version) >= DIGEST_SINCE:
        raise InvalidBundle(f"{MANIFEST_DIGEST} is missing (a format {bundle.manifest.format_version} bundle ends "
                            f"with it): the archive was cut or rewritten", MANIFEST_DIGEST)
    missing = sorted(set(expected) - seen)
    if missing:
        raise InvalidBundle("listed in the manifest but absent from the archive", missing[0])
    return bundle


def _check_first(info: tarfile.TarInfo) -> str:
    parts = info.name.split("/")
    if len(parts) != 2 or parts[1] != "manifest.json" or parts[0] in ("", ".", ".."):
        raise InvalidBundle(f"first member must be <bundle-id>/manifest.json, found {info.name!r}")
    if not info.isreg():
        raise InvalidBundle("not a regular file", "manifest.json")
    return parts[0]


def _relative(name: str, top: str) -> str:
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise InvalidBundle("absolute or malformed member name", name)
    parts = name.split("/")
    if parts[0] != top or len(parts) < 2 or any(p in ("", ".", "..") for p in parts[1:]):
        raise InvalidBundle("member outside the bundle folder (path traversal)", name)
    return "/".join(parts[1:])


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, cap: int, label: str) -> bytes:
    if info.size > cap:
        raise InvalidBundle(f"larger than the {cap}-byte limit", label)
    fh = tar.extractfile(info)
    if fh is None:
        raise InvalidBundle("unreadable member", label)
    data = fh.read(cap + 1)
    if len(data) != info.size:
        raise InvalidBundle("archive ends inside this member (truncated)", label)
    return data


def _hash_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member, rel: str, keep: bool, extract_to: Path | None
) -> bytes | None:
    fh = tar.extractfile(info)
    if fh is None:
        raise InvalidBundle("unreadable member", rel)
    digest = hashlib.sha256()
    kept = bytearray() if keep else None
    out = None
    if extract_to is not None and not keep:
        dest = extract_to / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            out = open(dest, "wb")
        except OSError as exc:
            raise InvalidBundle(f"cannot be extracted: {exc.strerror}", rel) from None
    n = 0
    try:
        while chunk := fh.read(_CHUNK):
            n += len(chunk)
            digest.update(chunk)
            if kept is not None:
                kept += chunk
            if out is not None:
                out.write(chunk)
    finally:
        if out is not None:
            out.close()
    if n != info.size:
        raise InvalidBundle("archive ends inside this member (truncated)", rel)
    if digest.hexdigest() != member.sha256:
        raise InvalidBundle("SHA-256 does not match the manifest", rel)
    return bytes(kept) if kept is not None else None


def _load_manifest(raw: bytes) -> Bundle:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidBundle(f"not JSON: {exc}", "manifest.json") from None
    if not isinstance(data, dict):
        raise InvalidBundle("not a JSON object", "manifest.json")
    check_version(data)
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidBundle(f"schema violation: {_first_error(exc)}", "manifest.json") from None
    paths = [m.path for m in manifest.members]
    if len(paths) != len(set(paths)):
        raise InvalidBundle("the manifest lists a member twice", "manifest.json")
    return Bundle(manifest=manifest)


def _validate_doc(rel: str, data: bytes, model: type[Model]) -> Model:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidBundle(f"schema violation: {_first_error(exc)}", rel) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    return f"{loc}: {err.get('msg', 'invalid')} ({exc.error_count()} error(s))"
