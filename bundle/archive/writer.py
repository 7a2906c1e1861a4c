"""Stage members on disk, then write one .tar.zst atomically (temp file + rename)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pyzstd

from bundle.errors import BundleWriteError, StagingError
from bundle.models import Manifest, MediaType, Member, Provenance

ZSTD_LEVEL = 3  # measured: 3.4x at ~280 MB/s; level 19 gains ~9% at 1-2 MB/s


class StagedBundle:
    """Members written so far, each hashed as it is staged.

    A collector's output lands here the moment it arrives, so an interrupted
    collection still has everything it gathered when the archive is written.
    """

    def __init__(self, parent: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix=".netbundle-stage-", dir=parent))
        self.members: dict[str, Member] = {}

    def add_bytes(self, path: str, data: bytes, media_type: MediaType | str, provenance: Provenance) -> Member:
        member = Member(
            path=path,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            media_type=media_type,
            provenance=provenance,
        )
        if path in self.members:
            raise BundleWriteError(f"member staged twice: {path}")
        target = self._dir / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise StagingError(f"{path} ({len(data)} bytes) not kept: {exc.strerror or exc}", exc.errno) from None
        self.members[path] = member
        return member

    def drop(self, path: str) -> None:
        """Forget a staged member and free its space (the bundle did not fit)."""
        self.members.pop(path, None)
        (self._dir / path).unlink(missing_ok=True)

    def read(self, path: str) -> bytes:
        """A staged member's bytes (to analyse what was collected before the archive is written)."""
        if path not in self.members:
            raise KeyError(path)
        return (self._dir / path).read_bytes()

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def write(self, manifest: Manifest, out: Path) -> Path:
        """Write manifest.json first, then every member; rename into place only when whole."""
        listed = {m.path for m in manifest.members}
        if listed != set(self.members):
            raise BundleWriteError("manifest members differ from staged members")
        out = out.resolve()
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
        except OSError as exc:
            raise BundleWriteError(f"cannot write in {out.parent}: {exc.strerror}") from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as raw:
                with pyzstd.ZstdFile(raw, "w", level_or_option=ZSTD_LEVEL) as zf:
                    with tarfile.open(fileobj=zf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                        mtime = int(manifest.created.timestamp())
                        top = manifest.bundle_id
                        doc = manifest.model_dump_json(indent=2).encode()
                        _add(tar, f"{top}/manifest.json", io.BytesIO(doc), len(doc), mtime)
                        for path in sorted(self.members):
                            member = self.members[path]
                            with open(self._dir / path, "rb") as fh:
                                _add(tar, f"{top}/{path}", fh, member.size, mtime)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, out)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise BundleWriteError(f"writing {out}: {exc.strerror or exc}") from exc
            raise
        return out


def _add(tar: tarfile.TarFile, name: str, fh: io.BufferedIOBase | io.BytesIO | io.BufferedReader, size: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, fh)
