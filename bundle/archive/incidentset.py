"""Incident sets on disk: `set.json` first, each node's bundle file unchanged under `nodes/`, zstd checksums,
and the SHA-256 trailer of the whole file (as a bundle has). Read back bounded and verified: every node
member's SHA-256 against the set manifest, and each node bundle read as any bundle is."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pydantic
import pyzstd

from bundle.archive.reader import Bundle, ReadLimits, read_bundle
from bundle.archive.writer import TRAILER_SIZE, ZSTD_OPTIONS, place, temp_beside, trailer
from bundle.errors import BundleWriteError, InvalidBundle
from bundle.models.incidentset import SET_FORMAT, SetManifest

SET_MANIFEST = "set.json"
MAX_NODES = 256


def write_set(manifest: SetManifest, files: dict[str, Path], out: Path, overwrite: bool = False) -> Path:
    """set.json, then each node bundle (member path -> file), sealed with the trailer; into place only whole."""
    listed = {n.member for n in manifest.nodes if n.member}
    if listed != set(files):
        raise BundleWriteError("set manifest members differ from the node bundles given")
    out = out.resolve()
    fd, tmp = temp_beside(out)
    try:
        with os.fdopen(fd, "w+b") as raw:
            with pyzstd.ZstdFile(raw, "w", level_or_option=ZSTD_OPTIONS) as zf:
                with tarfile.open(fileobj=zf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    mtime = int(manifest.created.timestamp())
                    doc = manifest.model_dump_json(indent=2).encode()
                    _add(tar, SET_MANIFEST, io.BytesIO(doc), len(doc), mtime)
                    for path in sorted(files):
                        with open(files[path], "rb") as fh:
                            _add(tar, path, fh, files[path].stat().st_size, mtime)
            raw.flush()
            raw.seek(0)
            digest = hashlib.file_digest(raw, "sha256").digest()
            raw.seek(0, os.SEEK_END)
            raw.write(trailer(digest))
        os.chmod(tmp, 0o600)
        place(tmp, out, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _add(tar: tarfile.TarFile, name: str, fh: io.BufferedIOBase | io.BytesIO | io.BufferedReader, size: int,
         mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = size, 0o600, mtime, 0, 0
    tar.addfile(info, fh)


@dataclass
class IncidentSet:
    manifest: SetManifest
    bundles: dict[str, Bundle] = field(default_factory=dict)  # node -> its verified bundle


def is_set(path: Path) -> bool:
    """Whether the file's first member is set.json (read no further)."""
    try:
        with pyzstd.ZstdFile(path) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
            first = tar.next()
            return first is not None and first.name == SET_MANIFEST
    except (OSError, tarfile.TarError, pyzstd.ZstdError, EOFError):
        return False


def read_set(path: Path, limits: ReadLimits | None = None) -> IncidentSet:
    """Verify and read an incident set; InvalidBundle names the first thing wrong."""
    limits = limits or ReadLimits()
    data = path.read_bytes() if path.stat().st_size <= limits.max_total_bytes else None
    if data is None:
        raise InvalidBundle(f"larger than the {limits.max_total_bytes}-byte limit", str(path))
    body, seal = data[:-TRAILER_SIZE], data[-TRAILER_SIZE:]
    if len(data) < TRAILER_SIZE or seal != trailer(hashlib.sha256(body).digest()):
        raise InvalidBundle("the SHA-256 trailer is missing or differs: the file was cut or changed", str(path))
    manifest: SetManifest | None = None
    out: IncidentSet | None = None
    with tempfile.TemporaryDirectory(prefix="netbundle-set-") as tmp:
        try:
            with pyzstd.ZstdFile(io.BytesIO(body)) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
                seen = 0
                for info in tar:
                    seen += 1
                    if seen > MAX_NODES + 1:
                        raise InvalidBundle(f"more than {MAX_NODES} nodes", info.name)
                    if not info.isfile():
                        raise InvalidBundle("not a regular file", info.name)
                    if manifest is None:
                        if info.name != SET_MANIFEST or info.size > limits.max_manifest_bytes:
                            raise InvalidBundle("the first member is not set.json", info.name)
                        raw = tar.extractfile(info).read()  # type: ignore[union-attr]
                        manifest = SetManifest.model_validate_json(raw)
                        if manifest.format != SET_FORMAT:
                            raise InvalidBundle(f"format {manifest.format!r} is not {SET_FORMAT}", SET_MANIFEST)
                        out = IncidentSet(manifest=manifest)
                        continue
                    node = next((n for n in manifest.nodes if n.member == info.name), None)
                    if node is None:
                        raise InvalidBundle("member not listed in set.json", info.name)
                    if info.size > limits.max_total_bytes:
                        raise InvalidBundle("member larger than the limit", info.name)
                    local = Path(tmp) / f"{len(out.bundles) if out else 0}.tar.zst"
                    local.write_bytes(tar.extractfile(info).read())  # type: ignore[union-attr]
                    got = hashlib.sha256(local.read_bytes()).hexdigest()
                    if got != node.sha256:
                        raise InvalidBundle(f"SHA-256 {got} differs from set.json's {node.sha256}", info.name)
                    assert out is not None
                    out.bundles[node.node] = read_bundle(local, limits)
                    local.unlink()
        except (tarfile.TarError, pyzstd.ZstdError, EOFError) as exc:
            raise InvalidBundle(f"not a readable tar.zst: {exc}", str(path)) from None
        except pydantic.ValidationError as exc:
            raise InvalidBundle(f"set.json does not match its schema: {exc.errors()[0]['msg']}", SET_MANIFEST) from None
    if out is None:
        raise InvalidBundle("empty archive: no set.json", str(path))
    missing = [n.node for n in out.manifest.nodes if n.member and n.node not in out.bundles]
    if missing:
        raise InvalidBundle(f"node bundles listed but absent: {', '.join(missing)}", SET_MANIFEST)
    return out
